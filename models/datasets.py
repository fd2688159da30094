"""MoleculeNet datasets: registry, file resolution, download, loading.

A dataset file is looked for, in this order, in

1. the ``data_dir`` argument,
2. the directory named by the environment variable ``GRAPHSAM_DATA_DIR``,
3. the user cache directory (``cache_dir``, by default
   ``$XDG_CACHE_HOME/graphsam-optax`` or ``~/.cache/graphsam-optax``), under
   ``moleculenet/``,

and is otherwise downloaded from its canonical URL into that cache (gzip
handled), after its SHA-256 is checked. ``nci5k-tpsa`` needs no file: it is
read from the data directory of the installed RDKit.

:func:`load_dataset` reads a CSV with pandas (CRLF, blank lines and padded
SMILES handled), keeps only the SMILES and target columns (columns that leak
the label, such as HIV's ``activity``, are never used), reports the SMILES that
RDKit cannot parse and featurizes the rest, through an on-disk cache keyed by
the file's checksum and the featurizer version.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import logging
import os
import shutil
import sys
import tempfile
import urllib.error
import urllib.request
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from models import featurization

DATA_DIR_ENV = "GRAPHSAM_DATA_DIR"
_BUCKET = "https://deepchemdata.s3-us-west-1.amazonaws.com/datasets/"
_log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
  """Everything needed to find, check and read one dataset.

  Attributes:
    name: registry key.
    filename: file name looked for in data directories and the cache.
    url: canonical download URL (None: no download); ``.gz`` is decompressed.
    sha256: SHA-256 of the decompressed CSV (None: not checked).
    smiles_column: column holding the SMILES.
    target_columns: label columns, in task order.
    task_type: ``"classification"`` (binary, possibly multi-task) or
      ``"regression"``.
    metric: ``"roc_auc"`` or ``"rmse"``.
    leaky_columns: columns that encode the label or another model's
      prediction of it; never used (documented here so nobody adds them).
    header: whether the CSV has a header row; if not, ``column_names``.
    column_names: column names of a headerless CSV.
    skiprows: lines to skip before the header or data (comments).
    builtin: read from RDKit's installed data directory, never downloaded.
  """

  name: str
  filename: str
  url: str | None
  sha256: str | None
  smiles_column: str
  target_columns: tuple[str, ...]
  task_type: str
  metric: str
  leaky_columns: tuple[str, ...] = ()
  header: bool = True
  column_names: tuple[str, ...] | None = None
  skiprows: int = 0
  builtin: bool = False

  @property
  def num_tasks(self) -> int:
    return len(self.target_columns)


_TOX21_TASKS = (
  "NR-AR",
  "NR-AR-LBD",
  "NR-AhR",
  "NR-Aromatase",
  "NR-ER",
  "NR-ER-LBD",
  "NR-PPAR-gamma",
  "SR-ARE",
  "SR-ATAD5",
  "SR-HSE",
  "SR-MMP",
  "SR-p53",
)
_SIDER_TASKS = (
  "Hepatobiliary disorders",
  "Metabolism and nutrition disorders",
  "Product issues",
  "Eye disorders",
  "Investigations",
  "Musculoskeletal and connective tissue disorders",
  "Gastrointestinal disorders",
  "Social circumstances",
  "Immune system disorders",
  "Reproductive system and breast disorders",
  "Neoplasms benign, malignant and unspecified (incl cysts and polyps)",
  "General disorders and administration site conditions",
  "Endocrine disorders",
  "Surgical and medical procedures",
  "Vascular disorders",
  "Blood and lymphatic system disorders",
  "Skin and subcutaneous tissue disorders",
  "Congenital, familial and genetic disorders",
  "Infections and infestations",
  "Respiratory, thoracic and mediastinal disorders",
  "Psychiatric disorders",
  "Renal and urinary disorders",
  "Pregnancy, puerperium and perinatal conditions",
  "Ear and labyrinth disorders",
  "Cardiac disorders",
  "Nervous system disorders",
  "Injury, poisoning and procedural complications",
)


def _spec(name, filename, url, sha256, targets, task, **kw) -> DatasetSpec:
  metric = "roc_auc" if task == "classification" else "rmse"
  return DatasetSpec(
    name, filename, url, sha256, "smiles", targets, task, metric, **kw
  )


DATASETS: dict[str, DatasetSpec] = {
  s.name: s
  for s in (
    _spec(
      "bbbp",
      "bbbp.csv",
      _BUCKET + "BBBP.csv",
      "d07a38487aeac5cee5508413e468043ef3097451d2a112701c2d60be9ec6b662",
      ("p_np",),
      "classification",
    ),
    _spec(
      "tox21",
      "tox21.csv",
      _BUCKET + "tox21.csv.gz",
      "7d7e7facd853a63e79ddce4e9c3fcb7a0d83a1c300b603031c0f2c64fbe77761",
      _TOX21_TASKS,
      "classification",
    ),
    _spec(
      "sider",
      "sider.csv",
      _BUCKET + "sider.csv.gz",
      "71efc6ac4ca82d6545bc512509863281be0f17234afd7adaf71a71899988302e",
      _SIDER_TASKS,
      "classification",
    ),
    _spec(
      "clintox",
      "clintox.csv",
      _BUCKET + "clintox.csv.gz",
      "9999816e760dd838358b5d88e81cea2fc062be4458ffa412ceecdba4f88a67b6",
      ("FDA_APPROVED", "CT_TOX"),
      "classification",
    ),
    _spec(
      "esol",
      "esol.csv",
      _BUCKET + "delaney-processed.csv",
      "8c06a76f0c6487d29ab0f903e6a7a7139f189ab3c1178f159c8be8964602f189",
      ("measured log solubility in mols per litre",),
      "regression",
      leaky_columns=("ESOL predicted log solubility in mols per litre",),
    ),
    _spec(
      "lipophilicity",
      "lipophilicity.csv",
      _BUCKET + "Lipophilicity.csv",
      "aed41590cb30609d51d8e08ad3ff06495a76e80e211358801f596b10da69bacd",
      ("exp",),
      "regression",
    ),
    _spec(
      "freesolv",
      "freesolv.csv",
      _BUCKET + "SAMPL.csv",
      "ab5895d914ee87cb563bd7b9611e869527bba45bec6b014d34dc495a0f9dcb72",
      ("expt",),
      "regression",
      leaky_columns=("calc",),
    ),
    _spec(
      "hiv",
      "hiv.csv",
      _BUCKET + "HIV.csv",
      "9ffa7fe57dc86c342627ee1d5255e937e2ab812393c73c4d16c697022f6e1d22",
      ("HIV_active",),
      "classification",
      leaky_columns=("activity",),
    ),
    _spec(
      "nci5k-tpsa",
      "NCI/first_5k.tpsa.csv",
      None,
      None,
      ("tpsa",),
      "regression",
      header=False,
      column_names=("smiles", "tpsa"),
      skiprows=1,
      builtin=True,
    ),
  )
}
"""The registry: 8 MoleculeNet datasets and the offline ``nci5k-tpsa``.

``nci5k-tpsa`` is RDKit's ``Data/NCI/first_5k.tpsa.csv``: 4,999 NCI molecules
(the same as ``first_5K.smi``) with their topological polar surface area
computed by Daylight tools, a regression target for demos and tests.
"""


def get_spec(name: str | DatasetSpec) -> DatasetSpec:
  """The DatasetSpec of a registered name (a spec is returned unchanged)."""
  if isinstance(name, DatasetSpec):
    return name
  try:
    return DATASETS[name.lower()]
  except KeyError:
    raise ValueError(
      f"unknown dataset {name!r}; known: {', '.join(DATASETS)}"
    ) from None


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
    f"Put {spec.filename} (SHA-256 {spec.sha256}) in a directory and pass "
    f"data_dir=<that directory> or set {DATA_DIR_ENV}; "
    + (f"it can be downloaded from {spec.url}" if spec.url else "")
  )


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
      ``cache_dir/moleculenet/``.
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
  candidates.append(("cache", cache_root / "moleculenet"))

  tried = []
  for label, directory in candidates:
    path = directory / spec.filename
    if path.is_file():
      return _check(spec, path, verify)
    tried.append(f"{path} ({label}): not found")

  if not download or spec.url is None:
    tried.append("download: disabled" if spec.url else "download: no URL")
    raise DatasetNotFoundError(_not_found(spec, tried))
  target = cache_root / "moleculenet" / spec.filename
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
  target.parent.mkdir(parents=True, exist_ok=True)
  _log.info("downloading %s from %s", spec.name, spec.url)
  fd, tmp_name = tempfile.mkstemp(dir=target.parent, suffix=".part")
  tmp = Path(tmp_name)
  try:
    with os.fdopen(fd, "wb") as out:
      with urllib.request.urlopen(spec.url, timeout=timeout) as response:
        shutil.copyfileobj(response, out)
    with open(tmp, "rb") as f:
      compressed = f.read(2) == b"\x1f\x8b"
    if compressed:
      raw = tmp.with_suffix(".raw")
      with gzip.open(tmp, "rb") as src, open(raw, "wb") as dst:
        shutil.copyfileobj(src, dst)
      os.replace(raw, tmp)
    actual = file_sha256(tmp)
    if spec.sha256 is not None and actual != spec.sha256:
      raise ChecksumError(
        f"download of {spec.name} from {spec.url} has SHA-256 {actual}, "
        f"expected {spec.sha256}; the file was discarded. "
        + _how_to_supply(spec)
      )
    os.replace(tmp, target)
  finally:
    tmp.unlink(missing_ok=True)
    tmp.with_suffix(".raw").unlink(missing_ok=True)


def read_table(
  dataset: str | DatasetSpec, path: str | os.PathLike
) -> pd.DataFrame:
  """The dataset's CSV as a DataFrame: SMILES (stripped) and float targets.

  Only the SMILES column and the target columns are returned; blank label
  cells become NaN. Every other column, leaky or not, is dropped here.
  """
  spec = get_spec(dataset)
  na = {c: ["", "nan", "NaN", "NA"] for c in spec.target_columns}
  table = pd.read_csv(
    path,
    header=0 if spec.header else None,
    names=list(spec.column_names) if spec.column_names else None,
    skiprows=spec.skiprows,
    dtype={spec.smiles_column: str},
    keep_default_na=False,
    na_values=na,
  )
  missing = [
    c for c in (spec.smiles_column, *spec.target_columns) if c not in table
  ]
  if missing:
    raise ValueError(f"{path} lacks the columns {missing} of {spec.name}")
  out = pd.DataFrame({"smiles": table[spec.smiles_column].str.strip()})
  for c in spec.target_columns:
    out[c] = pd.to_numeric(table[c]).astype(np.float32)
  return out


class InvalidSmilesWarning(UserWarning):
  """Some rows of a dataset were dropped because RDKit cannot parse them."""


@dataclasses.dataclass(frozen=True, eq=False)
class MoleculeDataset:
  """A loaded dataset: parseable molecules, their labels and features.

  Attributes:
    spec: the DatasetSpec.
    smiles: SMILES of the kept molecules (stripped), in file order.
    labels: f32[M, T] targets, NaN where missing.
    row_index: i64[M] 0-based CSV data row of each kept molecule.
    dropped: rows RDKit cannot parse (CSV row index, SMILES, reason).
    num_rows: data rows in the CSV.
    path: the CSV read.
    sha256: its SHA-256.
    graphs: the featurized molecules (None when loaded with
      ``featurize=False``).
  """

  spec: DatasetSpec
  smiles: tuple[str, ...]
  labels: np.ndarray
  row_index: np.ndarray
  dropped: tuple[featurization.DroppedMolecule, ...]
  num_rows: int
  path: Path
  sha256: str
  graphs: featurization.MolecularGraphs | None

  def __len__(self) -> int:
    return len(self.smiles)

  @property
  def name(self) -> str:
    return self.spec.name

  @property
  def num_tasks(self) -> int:
    return self.spec.num_tasks

  @property
  def task_type(self) -> str:
    return self.spec.task_type

  @property
  def n_atoms(self) -> np.ndarray:
    """i32[M] atoms per molecule (needs the featurized graphs)."""
    if self.graphs is None:
      raise ValueError("dataset was loaded with featurize=False")
    return self.graphs.n_atoms


def load_dataset(
  dataset: str | DatasetSpec,
  data_dir: str | os.PathLike | None = None,
  *,
  cache_dir: str | os.PathLike | None = None,
  download: bool = True,
  verify: bool = True,
  strict: bool = False,
  featurize: bool = True,
  use_cache: bool = True,
  progress: bool | None = None,
) -> MoleculeDataset:
  """Loads, checks and featurizes a dataset.

  Rows whose SMILES RDKit cannot parse are dropped and reported: an
  InvalidSmilesWarning names each (row index, SMILES, reason), and the
  dataset's ``dropped`` field lists them. ``strict=True`` raises
  ``featurization.InvalidSmilesError`` instead.

  Args:
    dataset: registry name or DatasetSpec.
    data_dir: directory holding the CSV (see ``resolve_csv``).
    cache_dir: cache root for downloads and featurized molecules (default
      ``default_cache_dir()``).
    download: allow downloading a missing file.
    verify: check the SHA-256 of local files.
    strict: raise on unparseable SMILES instead of dropping them.
    featurize: featurize the molecules (False: only parse them, for counts).
    use_cache: read and write featurized molecules under
      ``cache_dir/features/``.
    progress: tqdm progress bar; None shows one for large sets on a terminal.

  Returns:
    A MoleculeDataset.
  """
  spec = get_spec(dataset)
  path = resolve_csv(
    spec, data_dir, cache_dir=cache_dir, download=download, verify=verify
  )
  sha = file_sha256(path)
  table = read_table(spec, path)
  smiles = table["smiles"].tolist()
  labels = table[list(spec.target_columns)].to_numpy(np.float32)

  graphs = None
  if featurize:
    cache_root = Path(cache_dir) if cache_dir else default_cache_dir()
    result = featurization.featurize_cached(
      smiles,
      cache_root / "features" if use_cache else None,
      f"{spec.name}-{sha[:16]}",
      strict=strict,
      progress=progress,
    )
    graphs, kept, dropped = result.graphs, result.kept, result.dropped
  else:
    dropped = featurization.find_invalid_smiles(smiles, progress=progress)
    if strict and dropped:
      raise featurization.InvalidSmilesError(
        f"{spec.name}: {len(dropped)} of {len(smiles)} SMILES cannot be "
        "parsed by RDKit: " + featurization.describe_dropped(dropped)
      )
    keep = np.ones(len(smiles), bool)
    keep[[d.index for d in dropped]] = False
    kept = np.flatnonzero(keep)

  if dropped:
    warnings.warn(
      f"{spec.name}: dropped {len(dropped)} of {len(smiles)} rows that RDKit "
      "cannot parse: " + featurization.describe_dropped(dropped),
      InvalidSmilesWarning,
      stacklevel=2,
    )
  return MoleculeDataset(
    spec=spec,
    smiles=tuple(smiles[i] for i in kept),
    labels=labels[kept],
    row_index=np.asarray(kept, np.int64),
    dropped=tuple(dropped),
    num_rows=len(smiles),
    path=Path(path),
    sha256=sha,
    graphs=graphs,
  )
