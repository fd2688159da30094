"""Finding, downloading and checking a registered dataset's file.

A dataset file is looked for, in this order, in

1. the ``data_dir`` argument,
2. the directory named by the environment variable ``GRAPHSAM_DATA_DIR``,
3. the user cache directory (``cache_dir``, by default
   ``$XDG_CACHE_HOME/graphsam-optax`` or ``~/.cache/graphsam-optax``), under
   the dataset's collection (``moleculenet/`` or ``moleculeace/``),

where each directory ``D`` is searched as ``D/<file>``,
``D/<collection>/<file>`` and ``D/../<collection>/<file>``: a data directory
laid out as ``data/moleculenet/`` beside ``data/moleculeace/`` serves both
collections whichever of the three it names. A missing MoleculeNet file is
otherwise downloaded from its canonical URL into the cache (gzip handled),
after its SHA-256 is checked. ``nci5k-tpsa`` needs no file: it is
read from the data directory of the installed RDKit. Your own CSV
(:func:`models.tables.csv_spec`) is read where it is, never searched for,
downloaded or checked against a checksum.

Only the standard library is imported with this module (RDKit when a file
is read from its data directory).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import logging
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path

from models.dataset_registry import DatasetSpec
from models.dataset_registry import get_spec

DATA_DIR_ENV = "GRAPHSAM_DATA_DIR"
_log = logging.getLogger(__name__)


class DatasetNotFoundError(FileNotFoundError):
  """No copy of a dataset could be found or downloaded."""


class ChecksumError(ValueError):
  """A dataset file's SHA-256 is not the registered one."""


def default_cache_dir() -> Path:
  """The user cache directory of this project (not created)."""
  if sys.platform == "win32":
    base = os.environ.get("LOCALAPPDATA") or Path.home() / "AppData/Local"
  elif sys.platform == "darwin":
    base = Path.home() / "Library" / "Caches"
  else:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
  return Path(base) / "graphsam-optax"


def file_sha256(path: str | os.PathLike) -> str:
  """Hex SHA-256 of a file."""
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      h.update(chunk)
  return h.hexdigest()


def _rdkit_data_dir() -> Path:
  from rdkit import RDConfig

  return Path(RDConfig.RDDataDir)


def _how_to_supply(spec: DatasetSpec) -> str:
  return (
    f"Put {spec.filename} (SHA-256 {spec.sha256}) in a directory (or its "
    f"{spec.collection}/ folder) and pass data_dir=<that directory> or set "
    f"{DATA_DIR_ENV}; "
    + (f"it can be downloaded from {spec.url}" if spec.url else "")
  )


def _places(directory: Path, spec: DatasetSpec) -> list[Path]:
  """Where a data directory may hold the file (see the module docstring)."""
  return [
    directory / spec.filename,
    directory / spec.collection / spec.filename,
    directory.parent / spec.collection / spec.filename,
  ]


def _check(spec: DatasetSpec, path: Path, verify: bool) -> Path:
  if verify and spec.sha256 is not None:
    actual = file_sha256(path)
    if actual != spec.sha256:
      raise ChecksumError(
        f"{path} has SHA-256 {actual}, expected {spec.sha256} for "
        f"{spec.name} (a different version of the file?). "
        + _how_to_supply(spec)
        + " Pass verify=False to use this file anyway."
      )
  return path


def resolve_csv(
  dataset: str | DatasetSpec,
  data_dir: str | os.PathLike | None = None,
  *,
  cache_dir: str | os.PathLike | None = None,
  download: bool = True,
  verify: bool = True,
  timeout: float = 60.0,
) -> Path:
  """Path of a dataset's CSV: data_dir, $GRAPHSAM_DATA_DIR, cache, download.

  Directories hold the decompressed CSV under ``spec.filename``. A file found
  there is checked against the registered SHA-256 when ``verify``; a
  downloaded file is always checked before it is kept.

  Args:
    dataset: registry name or a DatasetSpec.
    data_dir: directory tried first.
    cache_dir: cache root (default ``default_cache_dir()``); downloads go to
      ``cache_dir/<collection>/``.
    download: allow downloading when no local copy exists.
    verify: check the SHA-256 of files found locally.
    timeout: seconds for the download connection.

  Returns:
    Path of a CSV whose contents are the registered ones.

  Raises:
    DatasetNotFoundError: no copy found and none downloaded; the message lists
      every place tried and how to supply the file.
    ChecksumError: a found or downloaded file has the wrong SHA-256.
  """
  spec = get_spec(dataset)
  if spec.path is not None:
    if not Path(spec.path).is_file():
      raise DatasetNotFoundError(f"{spec.path}: no such file")
    return Path(spec.path)
  if spec.builtin:
    path = _rdkit_data_dir() / spec.filename
    if not path.exists():
      raise DatasetNotFoundError(
        f"{spec.name} is read from RDKit's data directory, but {path} does "
        "not exist (is RDKit installed with its data files?)"
      )
    return path

  cache_root = Path(cache_dir) if cache_dir else default_cache_dir()
  candidates = []
  if data_dir is not None:
    candidates.append(("data_dir argument", Path(data_dir)))
  if os.environ.get(DATA_DIR_ENV):
    candidates.append((f"${DATA_DIR_ENV}", Path(os.environ[DATA_DIR_ENV])))
  tried = []
  for label, directory in candidates:
    for path in _places(directory, spec):
      if path.is_file():
        return _check(spec, path, verify)
    tried.append(f"{directory} ({label}): no {spec.filename}")
  cached = cache_root / spec.collection / spec.filename
  if cached.is_file():
    return _check(spec, cached, verify)
  tried.append(f"{cached} (cache): not found")

  if not download or spec.url is None:
    tried.append("download: disabled" if spec.url else "download: no URL")
    raise DatasetNotFoundError(_not_found(spec, tried))
  target = cache_root / spec.collection / spec.filename
  try:
    _download(spec, target, timeout)
  except (urllib.error.URLError, OSError) as e:
    tried.append(f"download from {spec.url}: {e}")
    raise DatasetNotFoundError(_not_found(spec, tried)) from e
  return target


def _not_found(spec: DatasetSpec, tried: list[str]) -> str:
  return (
    f"no copy of dataset {spec.name!r} found. Tried:\n  "
    + "\n  ".join(tried)
    + "\n"
    + _how_to_supply(spec)
  )


def _download(spec: DatasetSpec, target: Path, timeout: float) -> None:
  """Downloads spec.url to target (decompressed), verifying the checksum."""
  from models import files

  target.parent.mkdir(parents=True, exist_ok=True)
  _log.info("downloading %s from %s", spec.name, spec.url)
  with (
    urllib.request.urlopen(spec.url, timeout=timeout) as response,
    files.atomic_write(target, "wb") as out,
  ):
    stream = io.BufferedReader(response)
    if stream.peek(2)[:2] == b"\x1f\x8b":  # gzip: kept decompressed
      stream = gzip.GzipFile(fileobj=stream)
    digest = hashlib.sha256()
    while chunk := stream.read(1 << 20):
      digest.update(chunk)
      out.write(chunk)
    actual = digest.hexdigest()
    if spec.sha256 is not None and actual != spec.sha256:
      raise ChecksumError(
        f"download of {spec.name} from {spec.url} has SHA-256 {actual}, "
        f"expected {spec.sha256}; the file was discarded. "
        + _how_to_supply(spec)
      )
