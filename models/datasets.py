"""Benchmark datasets: registry, file resolution, download, loading.

The registry holds the MoleculeNet sets and the 30 MoleculeACE activity-cliff
sets (``moleculeace/<set>``: a fixed train/test split and a per-molecule
cliff flag, see :data:`MOLECULEACE_SETS`). A dataset file is looked for, in
this order, in

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
read from the data directory of the installed RDKit.

Your own CSV is a spec too: :func:`csv_spec` names its SMILES and target
columns (and infers the task from the labels when not given); it is read
where it is, never searched for, downloaded or checked against a checksum.

:func:`load_dataset` reads a CSV with pandas (CRLF, blank lines and padded
SMILES handled), keeps only the SMILES and target columns (columns that leak
the label, such as HIV's ``activity``, are never used), drops and reports the
rows whose SMILES RDKit cannot parse or whose label is infinite (by file line,
header = line 1), reports duplicate SMILES (kept), and featurizes the rest,
through an on-disk cache keyed by the file's checksum and the featurizer
version. Every failure to read a file (missing, empty, header only, not UTF-8,
a label that is not a number) raises :class:`DataFileError` naming the file,
and the line and column where one is at fault.

Only numpy is imported with this module (pandas and RDKit when loading), so
that a command line can list the registry quickly.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import logging
import os
import sys
import urllib.error
import urllib.request
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
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
    path: a user's CSV (:func:`csv_spec`), read from this path: never
      searched for, downloaded or checked against a checksum.
    collection: the folder of the data directory it is kept in
      (``"moleculenet"`` or ``"moleculeace"``).
    split_column: a column naming each row's part, ``train`` or ``test``:
      a benchmark's fixed test part (the ``"fixed"`` split method); None
      when the dataset has none.
    subset_columns: 0/1 columns marking subsets of molecules on which the
      test metric is reported too (MoleculeACE's ``cliff_mol``).
    delimiter: the character between cells: ``","``, ``";"``, a tab, or
      ``" "`` for runs of spaces (:func:`sniff_delimiter` finds a user
      file's).
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
  path: str | None = None
  collection: str = "moleculenet"
  split_column: str | None = None
  subset_columns: tuple[str, ...] = ()
  delimiter: str = ","

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

# MoleculeACE (van Tilborg, Alenicheva and Grisoni, J. Chem. Inf. Model. 2022,
# 62, 5938-5951; MIT licence): the files of the MoleculeACE 3.0.0 wheel, by
# set name with their SHA-256.
MOLECULEACE_SETS: dict[str, str] = {
  "CHEMBL1862_Ki": (
    "72a750426976bf5c17ca9129e86dff20962332f92a8ce16028d9fbcf152ca412"
  ),
  "CHEMBL1871_Ki": (
    "62d05aa76d096fd5bd3575dcfd30dcab24873dc010de47b478b6617fbd95985e"
  ),
  "CHEMBL2034_Ki": (
    "476668f39aae0e29a1ab8fa83a7087b179dc705b68cdc060c9958a0eed2048d4"
  ),
  "CHEMBL2047_EC50": (
    "ea1bacf43377aac288840f2d2e37df7705a0d2d1f93bb52b0ce85e499e311f6e"
  ),
  "CHEMBL204_Ki": (
    "6ccf17a5f1aa6322f2d68f24b923f2efb5779ff73d33035bb889bb922b18dba5"
  ),
  "CHEMBL2147_Ki": (
    "5cbf4deba3e6312aff3a77ac3c70eb39a3cd58c9d8686a19a8b56c4a73377d02"
  ),
  "CHEMBL214_Ki": (
    "68bffa3069340c51204ba23395626622559a10c3d39b1111cb9c47f9d9960962"
  ),
  "CHEMBL218_EC50": (
    "9133aefc69efa92403107f78f747d4acbd370255ac0a2949cc5f86a30b5ebd11"
  ),
  "CHEMBL219_Ki": (
    "f0d13b1bd8086e3fed746215b0ff8c4399518547bbba2146a0f235f1a9a59fa8"
  ),
  "CHEMBL228_Ki": (
    "17158facfdc5788e22e020e398acd3bbf99edc9d66f7b323da778cd551d9796f"
  ),
  "CHEMBL231_Ki": (
    "9e1c0a22c37e446d37d63e7b39d92cb022774333b4fa430e9f948b748215afb0"
  ),
  "CHEMBL233_Ki": (
    "4d8aff053b3d1c12e8cc13102958bb4f3dce4ac7715452265231e5b68d1c9362"
  ),
  "CHEMBL234_Ki": (
    "7a86fc3552953bb1ea727f4119b844ff3eadb33d7a79413b1f417cf236f5615a"
  ),
  "CHEMBL235_EC50": (
    "a99b1d18870cc4d83da5fbedfee4504f8c46bb96e71ea7964b84ae7682d4963f"
  ),
  "CHEMBL236_Ki": (
    "28227a570694a24325a3206bee2a1623e14949d54abe13e490402fb2f5a8c74e"
  ),
  "CHEMBL237_EC50": (
    "37dce21b9ef158ac7d3075997e58896bb0083162c9c820d1996d898dfb0701f5"
  ),
  "CHEMBL237_Ki": (
    "8bc5f0f4e512923d7878390f9c6336682dfd638e90d8110f44bfd3af77d605c3"
  ),
  "CHEMBL238_Ki": (
    "5ca1bb99ea9123dc0369f19c1269fec3f9fc3eae3bf9a2b781419b268913761a"
  ),
  "CHEMBL239_EC50": (
    "1985b2137bd64396ec980e8c6e1f234f6f9aa989c49a20aef71dd22bda68ed9c"
  ),
  "CHEMBL244_Ki": (
    "aafc2e81810767397c8b5b3161b9eed3b33b6e9a827ed176336f388bef274a36"
  ),
  "CHEMBL262_Ki": (
    "c438e8e18bc444890246607be107d9afb8c64012608a8a73838acad3eacfce21"
  ),
  "CHEMBL264_Ki": (
    "6b380b5cf61b6985179779a9b9d0d1d3b197773fc3df5079d8932108f75e2bbf"
  ),
  "CHEMBL2835_Ki": (
    "a6ff0b8c3df2c452a9210af5c3d57495846ed16978c339b463c7a4b90c73c66c"
  ),
  "CHEMBL287_Ki": (
    "7f448c29138242dd64ec2a07742e33a1e186129ca4e794e287b67e5ffaea171e"
  ),
  "CHEMBL2971_Ki": (
    "2fe0c20bab93c58f824fdb7f35b1c327e987b76e8403ededb0075cb7649651d3"
  ),
  "CHEMBL3979_EC50": (
    "7e455ec476c0683414404b527d0bb98bf76671f7bd3748507aad505c21a6b44b"
  ),
  "CHEMBL4005_Ki": (
    "183b163b6820d2c0db3190500e3a58cdda1f72d148f36605d7c2e2071d69c03e"
  ),
  "CHEMBL4203_Ki": (
    "28d7139fdba99657584430ef793bf2850aaf806651930fc062d50f3f847f032d"
  ),
  "CHEMBL4616_EC50": (
    "7b79538464cf4a811a9bd593d867d985b3f19d65302f241a7fba409b16230b0a"
  ),
  "CHEMBL4792_Ki": (
    "088219b5b08fa90962f00e80d7ed66fe7a71e223b18b874fb000d0babc343659"
  ),
}
MOLECULEACE_PREFIX = "moleculeace/"
for _set, _sha in MOLECULEACE_SETS.items():
  DATASETS[MOLECULEACE_PREFIX + _set] = DatasetSpec(
    name=MOLECULEACE_PREFIX + _set,
    filename=f"{_set}.csv",
    url=None,
    sha256=_sha,
    smiles_column="smiles",
    target_columns=("y",),
    task_type="regression",
    metric="rmse",
    leaky_columns=("exp_mean [nM]",),
    collection="moleculeace",
    split_column="split",
    subset_columns=("cliff_mol",),
  )
"""The registry: 8 MoleculeNet datasets, the offline ``nci5k-tpsa`` and the
30 MoleculeACE sets (``moleculeace/<set>``, looked up case-insensitively).

``nci5k-tpsa`` is RDKit's ``Data/NCI/first_5k.tpsa.csv``: 4,999 NCI molecules
(the same as ``first_5K.smi``) with their topological polar surface area
computed by Daylight tools, a regression target for demos and tests.

A MoleculeACE set's label ``y`` is ``-log10`` of the measured Ki or EC50 in
nM (``exp_mean [nM]``, which is never used); its column ``split`` fixes the
test part and ``cliff_mol`` marks the molecules that form an activity cliff
(the test RMSE over them is the benchmark's "cliff RMSE").
"""


def get_spec(name: str | DatasetSpec) -> DatasetSpec:
  """The DatasetSpec of a registered name (a spec is returned unchanged)."""
  if isinstance(name, DatasetSpec):
    return name
  by_lower_name = {key.lower(): spec for key, spec in DATASETS.items()}
  try:
    return by_lower_name[name.lower()]
  except KeyError:
    raise ValueError(
      f"unknown dataset {name!r}; known: {', '.join(dataset_names())}"
    ) from None


def dataset_names() -> list[str]:
  """The registry's names, the MoleculeACE sets as one
  ``moleculeace/<set>`` entry (their names are in :data:`MOLECULEACE_SETS`).
  """
  names = [n for n in DATASETS if not n.startswith(MOLECULEACE_PREFIX)]
  return [*names, MOLECULEACE_PREFIX + "<set>"]


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


class DataFileError(ValueError):
  """A CSV cannot be read as SMILES and labels.

  The message names the file, and the line (header = line 1) and column
  where one is at fault.
  """


class MissingColumnError(DataFileError):
  """A column named for the SMILES or a target is not in the file.

  Attributes:
    column: the missing column.
    role: ``"smiles"`` or ``"target"``.
  """

  def __init__(self, message: str, column: str, role: str):
    super().__init__(message)
    self.column = column
    self.role = role


MISSING_VALUES = frozenset(
  {
    *("", "na", "n/a", "nan", "-nan", "none", "null", "<na>"),
    *("#n/a", "#na", "#n/a n/a", "1.#ind", "-1.#ind", "1.#qnan", "-1.#qnan"),
    *("?", "-", "--"),
  }
)
"""Cells that mean "no value", in any case (``NA``, ``n/a``, ``N/A``...).

pandas' default markers (``read_csv``'s ``na_values``, which chemprop reads
with) plus ``?``, ``-`` and ``--``, which spreadsheets and assay exports use.
A missing label counts for no loss; a missing SMILES drops its row in
training and is reported as such in prediction.
"""


def is_missing(cell: str) -> bool:
  """Whether a cell is empty or one of :data:`MISSING_VALUES`.

  Examples:
    >>> [is_missing(c) for c in ("", " N/A ", "?", "-", "0", "-1")]
    [True, True, True, True, False, False]
  """
  return cell.strip().lower() in MISSING_VALUES


DELIMITER_NAMES = {",": "comma", ";": "semicolon", "\t": "tab", " ": "space"}
# Files whose suffix says "one SMILES per line, maybe a name after it".
SMILES_SUFFIXES = (".smi", ".smiles", ".txt")


def shown_path(path: str | os.PathLike) -> str:
  """``path`` for a message: relative to the working directory if inside it
  (as a user names it), else as it is."""
  path = Path(path)
  if path.is_absolute():
    try:
      return str(path.relative_to(Path.cwd()))
    except ValueError:
      return str(path)
  return str(path)


def _first_lines(path, skiprows: int = 0, limit: int = 20) -> list[str]:
  """Up to ``limit`` non-blank lines of a text file after ``skiprows``."""
  lines = []
  try:
    with open(path, encoding="utf-8", errors="replace", newline="") as f:
      for k, line in enumerate(f):
        if k >= skiprows and line.strip():
          lines.append(line.rstrip("\r\n"))
          if len(lines) == limit:
            break
  except OSError:
    pass  # read_rows reports it
  return lines


def _cells(line: str, delimiter: str) -> list[str]:
  import csv

  if delimiter == " ":
    return line.split()
  return next(csv.reader([line], delimiter=delimiter), [])


def sniff_delimiter(path: str | os.PathLike, skiprows: int = 0) -> str:
  """The delimiter of a CSV: ``","``, ``";"`` or a tab (``" "``, runs of
  spaces, too for ``.smi``/``.txt`` files).

  The one that splits the first line into the most cells, the same number
  on the next lines; a comma on a tie or when none splits it.
  """
  lines = _first_lines(path, skiprows)
  if not lines:
    return ","
  candidates = [",", ";", "\t"]
  if Path(path).suffix.lower() in SMILES_SUFFIXES:
    candidates.append(" ")
  best, most = ",", 1
  for delimiter in candidates:
    counts = {len(_cells(line, delimiter)) for line in lines}
    width = len(_cells(lines[0], delimiter))
    if width > most and counts == {width}:
      best, most = delimiter, width
  return best


def _looks_like_molecule(cell: str) -> bool:
  """Whether a header cell parses as a SMILES with an atom (not a name)."""
  from models import featurization

  if not cell or cell.lower() in ("smiles", "smi", "name", "id"):
    return False
  return featurization.parse_smiles(cell)[0] is not None


def has_header(
  path: str | os.PathLike,
  delimiter: str | None = None,
  known: Sequence[str] = (),
) -> bool:
  """Whether a file's first line names its columns.

  It does not when its first cell parses as a SMILES (as in most ``.smi``
  files) and none of its cells is one of the ``known`` column names.
  """
  lines = _first_lines(path, limit=1)
  if not lines:
    return True
  cells = [
    c.strip() for c in _cells(lines[0], delimiter or sniff_delimiter(path))
  ]
  if set(cells) & set(known):
    return True
  return not (cells and _looks_like_molecule(cells[0]))


def _check_header(path, delimiter: str, skiprows: int) -> None:
  """Refuses a header that names a column twice (pandas renames one)."""
  lines = _first_lines(path, skiprows, limit=1)
  if not lines:
    return
  cells = [c.strip() for c in _cells(lines[0], delimiter)]
  for name in dict.fromkeys(cells):
    where = [i + 1 for i, c in enumerate(cells) if c == name]
    if len(where) > 1 and name:
      raise DataFileError(
        f"{shown_path(path)}, line {skiprows + 1}: column {name!r} appears "
        f"{len(where)} times (columns {', '.join(map(str, where))}); give "
        "each column its own name"
      )


def read_rows(
  path: str | os.PathLike,
  *,
  header: bool = True,
  names: Sequence[str] | None = None,
  skiprows: int = 0,
  nrows: int | None = None,
  strip: bool = True,
  delimiter: str | None = ",",
):
  """A CSV's data rows as text, indexed by their line in the file.

  Every cell is a string (stripped when ``strip``; an empty cell is ""), so
  nothing is lost or converted; blank lines are skipped. The index is the
  row's line number (header = line 1; a row spanning several lines through
  quoted line breaks shifts the later ones).

  Args:
    path: the file.
    header: whether its first line (after ``skiprows``) names the columns.
    names: the column names of a file without a header.
    skiprows: lines to skip first.
    nrows: rows to read (None: all).
    strip: strip the cells.
    delimiter: see ``DatasetSpec.delimiter``; None sniffs it
      (:func:`sniff_delimiter`).

  Raises:
    DataFileError: the file is missing, unreadable, empty, not UTF-8, not
      a CSV, or names a column twice (the message names it).
  """
  import pandas as pd

  if delimiter is None:
    delimiter = sniff_delimiter(path, skiprows)
  if header:
    _check_header(path, delimiter, skiprows)
  shown = shown_path(path)
  try:
    table = pd.read_csv(
      path,
      header=0 if header else None,
      names=list(names) if names else None,
      skiprows=skiprows,
      nrows=nrows,
      dtype=str,
      keep_default_na=False,
      skip_blank_lines=False,
      encoding="utf-8",
      **(
        {"sep": r"\s+", "engine": "python"}
        if delimiter == " "
        else {"sep": delimiter}
      ),
    )
  except UnicodeDecodeError as e:
    raise DataFileError(
      f"{shown} is not UTF-8 text (byte {e.object[e.start]:#04x} at offset "
      f'{e.start}); save it as UTF-8 (a spreadsheet\'s "CSV UTF-8")'
    ) from None
  except pd.errors.EmptyDataError:
    raise DataFileError(f"{shown} is empty") from None
  except pd.errors.ParserError as e:
    reason = str(e).strip().rstrip(".")
    raise DataFileError(
      f"{shown} is not a readable CSV ({reason}; read as "
      f"{DELIMITER_NAMES[delimiter]}-separated): check that line's quotes "
      "and delimiters"
    ) from None
  except OSError as e:
    raise DataFileError(f"cannot read {shown}: {e.strerror or e}") from None
  table.index = np.arange(len(table)) + skiprows + int(header) + 1
  stripped = table.apply(lambda column: column.str.strip())
  return (stripped if strip else table)[(stripped != "").any(axis=1)]


def _numbers(text):
  """Float64 values of text cells (NaN where missing) and a mask of the
  cells that are neither a number nor missing."""
  import pandas as pd

  missing = text.str.strip().str.lower().isin(MISSING_VALUES)
  values = pd.to_numeric(text.where(~missing), errors="coerce")
  return values, values.isna() & ~missing


def read_table(dataset: str | DatasetSpec, path: str | os.PathLike):
  """The dataset's CSV as a DataFrame: SMILES, float32 targets, file lines.

  Columns: ``smiles`` (stripped), the target columns (cells of
  :data:`MISSING_VALUES` become NaN; ``inf`` stays, for the loader to
  report), the spec's ``split_column`` and ``subset_columns`` as text, and
  ``line``, the row's line in the file (see :func:`read_rows`).
  Blank lines are skipped; the index counts the other data rows from 0, as
  ``pandas.read_csv`` does. Every other column, leaky or not, is dropped.

  Raises:
    DataFileError: the file is missing, empty, not UTF-8, has a header but
      no data row, or a label that is not a number (file, line and column
      named).
    MissingColumnError: the SMILES or a target column is absent.
  """
  import pandas as pd

  spec = get_spec(dataset)
  raw = read_rows(
    path,
    header=spec.header,
    names=spec.column_names,
    skiprows=spec.skiprows,
    delimiter=spec.delimiter,
  )
  shown = shown_path(path)
  annotations = _annotation_columns(spec)
  for column, role in [(spec.smiles_column, "smiles")] + [
    (c, "target") for c in (*spec.target_columns, *annotations)
  ]:
    if column not in raw:
      raise MissingColumnError(
        f"{shown} has no column {column!r} (its columns: "
        f"{', '.join(map(repr, raw.columns))})",
        column,
        role,
      )
  if raw.empty:
    raise DataFileError(f"{shown} has a header but no data rows")
  out = pd.DataFrame({"smiles": raw[spec.smiles_column]})
  for c in spec.target_columns:
    values, bad = _numbers(raw[c])
    if bad.any():
      line = bad.idxmax()
      more = int(bad.sum()) - 1
      raise DataFileError(
        f"{shown}, line {line}, column {c!r}: {raw[c][line]!r} is not a "
        "number"
        + (f" (nor are {more} more cells)" if more else "")
        + "; leave a cell empty (or NA) for a missing label"
      )
    out[c] = values.astype(np.float32)
  for c in annotations:
    out[c] = raw[c]
  out["line"] = raw.index
  return out.reset_index(drop=True)


def _annotation_columns(spec: DatasetSpec) -> tuple[str, ...]:
  """The columns kept beside SMILES and targets: split and subset flags."""
  split = (spec.split_column,) if spec.split_column else ()
  return split + spec.subset_columns


def column_task_types(labels: np.ndarray) -> tuple[str, ...]:
  """Each column's task from every finite label it holds: classification
  if they are all 0 or 1, regression otherwise (or when it has none).

  Examples:
    >>> column_task_types(np.array([[0.0, np.nan], [1.0, 2.5]]))
    ('classification', 'regression')
  """
  out = []
  for column in np.asarray(labels, np.float64).T:
    present = column[np.isfinite(column)]
    binary = present.size and np.isin(present, (0.0, 1.0)).all()
    out.append("classification" if binary else "regression")
  return tuple(out)


def infer_task_type(labels: np.ndarray) -> str:
  """``"classification"`` if every present label is 0 or 1, else regression.

  Examples:
    >>> infer_task_type(np.array([[0.0, np.nan], [1.0, 1.0]]))
    'classification'
    >>> infer_task_type(np.array([[0.0], [2.5]]))
    'regression'
  """
  tasks = set(column_task_types(labels))
  return "classification" if tasks == {"classification"} else "regression"


TASK_TYPES = ("classification", "regression")


def _listed(names: Sequence[str]) -> str:
  return ", ".join(map(repr, names))


def _default_targets(path, raw, smiles_column: str) -> list[str]:
  """Every column but the SMILES, refusing text ones by name."""
  columns = [c for c in raw.columns if c != smiles_column]
  if not columns:
    raise DataFileError(
      f"{shown_path(path)} has no column besides the SMILES to learn"
    )
  text = {}
  for c in columns:
    _, bad = _numbers(raw[c])
    if bad.any():
      text[c] = bad.idxmax()
  if not text:
    return columns
  c, line = next(iter(text.items()))
  numeric = [c for c in columns if c not in text]
  hint = (
    f"name the label columns: target_columns={numeric!r}"
    if numeric
    else "no column holds only numbers; name the label columns with "
    "target_columns=[...]"
  )
  raise DataFileError(
    f"{shown_path(path)}, line {line}, column {c!r}: {raw[c][line]!r} is "
    f"not a number, so {c!r} cannot be a label (by default every column "
    f"but the SMILES is one"
    + (f"; {_listed(list(text)[1:])} neither" if len(text) > 1 else "")
    + f"); {hint}"
  )


def csv_spec(
  path: str | os.PathLike,
  smiles_column: str = "smiles",
  target_columns: Sequence[str] | None = None,
  task_type: str | None = None,
) -> DatasetSpec:
  """The DatasetSpec of your own CSV (a header row, one molecule per row).

  The delimiter (comma, semicolon or tab) is sniffed
  (:func:`sniff_delimiter`). Cells of :data:`MISSING_VALUES` are missing
  labels.

  Args:
    path: the CSV; its stem names the dataset.
    smiles_column: the column of SMILES.
    target_columns: the label columns, in task order; None takes every
      column but the SMILES (all must hold numbers).
    task_type: ``"classification"`` (labels 0/1, metric ROC-AUC) or
      ``"regression"`` (RMSE); None infers it from every present label of
      each column (:func:`column_task_types`): classification if every
      column holds only 0 and 1, regression if none does.

  Returns:
    A spec whose ``path`` is the file's absolute path.

  Raises:
    DatasetNotFoundError: no such file.
    MissingColumnError: a named column is absent.
    DataFileError: the file cannot be read, has no header row, names a
      column twice, has no target column or no label, a default target
      that is text, or (inferring the task) both 0/1 columns and others.
  """
  path = Path(path)
  shown = shown_path(path)
  if not path.is_file():
    raise DatasetNotFoundError(
      f"{shown}: " + ("a directory" if path.is_dir() else "no such file")
    )
  if task_type is not None and task_type not in TASK_TYPES:
    raise ValueError(f"task_type must be one of {TASK_TYPES}: {task_type!r}")
  delimiter = sniff_delimiter(path)
  if not has_header(path, delimiter, [smiles_column]):
    first = _cells(_first_lines(path, limit=1)[0], delimiter)[0].strip()
    raise DataFileError(
      f"{shown}, line 1: {first!r} is a molecule, not a column name: the "
      "file has no header row; add one that names its columns (e.g. "
      f"{smiles_column},<label>)"
    )
  raw = read_rows(path, delimiter=delimiter)
  if target_columns is None and smiles_column in raw:
    target_columns = _default_targets(path, raw, smiles_column)
  target_columns = list(target_columns or ())
  if smiles_column in target_columns:
    raise DataFileError(f"{smiles_column!r} is both the SMILES and a target")
  spec = DatasetSpec(
    name=path.stem,
    filename=path.name,
    url=None,
    sha256=None,
    smiles_column=smiles_column,
    target_columns=tuple(target_columns),
    task_type=task_type or "regression",
    metric="rmse",
    path=str(path.absolute()),
    delimiter=delimiter,
  )
  if task_type is None:
    labels = read_table(spec, path)[list(spec.target_columns)].to_numpy()
    if not np.isfinite(labels).any():
      raise DataFileError(f"{shown}: the target columns hold no label")
    task_type = _infer_task(shown, spec.target_columns, labels)
  metric = "roc_auc" if task_type == "classification" else "rmse"
  return dataclasses.replace(spec, task_type=task_type, metric=metric)


def _infer_task(shown: str, targets: Sequence[str], labels) -> str:
  """The task of every target column; mixed tasks are refused by name."""
  tasks = column_task_types(labels)
  if len(set(tasks)) == 1:
    return tasks[0]
  binary = [c for c, t in zip(targets, tasks, strict=True) if t != "regression"]
  other = [c for c in targets if c not in binary]
  verb = "holds" if len(binary) == 1 else "hold"
  raise DataFileError(
    f"{shown}: {_listed(binary)} {verb} only 0/1 labels "
    f"(classification), {_listed(other)} other numbers (regression), and "
    "a run learns one kind; train them separately (target_columns="
    f"{binary!r}, then target_columns={other!r}), or set "
    "task_type='regression' to fit "
    "the 0/1 labels as numbers"
  )


class InvalidSmilesWarning(UserWarning):
  """Rows of a dataset were dropped: SMILES RDKit cannot parse, or labels
  that are infinite."""


class DuplicateSmilesWarning(UserWarning):
  """A dataset lists the same SMILES more than once (all rows are kept)."""


@dataclasses.dataclass(frozen=True)
class DroppedRow:
  """A CSV row that was not loaded.

  Attributes:
    row: 0-based data row (header and blank lines not counted).
    line: its line in the file (header = line 1).
    smiles: the SMILES cell.
    reason: why (RDKit's parse error, or which label is infinite).
  """

  row: int
  line: int
  smiles: str
  reason: str


def _clip(text: str, width: int) -> str:
  return text if len(text) <= width else text[: width - 3] + "..."


def describe_rows(items: Sequence[tuple[int, str, str]], limit: int = 3) -> str:
  """Indented lines ``line N: 'SMILES' (why)`` for the first ``limit``."""
  lines = [
    f"  line {line}: {_clip(smiles, 48)!r} ({_clip(why, 80)})"
    for line, smiles, why in items[:limit]
  ]
  if len(items) > limit:
    lines.append(f"  ... and {len(items) - limit} more")
  return "\n".join(lines)


@dataclasses.dataclass(frozen=True, eq=False)
class MoleculeDataset:
  """A loaded dataset: parseable molecules, their labels and features.

  Attributes:
    spec: the DatasetSpec.
    smiles: SMILES of the kept molecules (stripped), in file order.
    labels: f32[M, T] targets, NaN where missing.
    row_index: i64[M] 0-based CSV data row of each kept molecule.
    lines: i64[M] the line of each kept molecule in the file (header =
      line 1).
    dropped: the rows not loaded (bad SMILES, infinite labels), in order.
    num_rows: data rows in the CSV.
    path: the CSV read.
    sha256: its SHA-256.
    graphs: the featurized molecules (None when loaded with
      ``featurize=False``).
    annotations: the spec's ``split_column`` and ``subset_columns``, each
      str[M] of the kept molecules' cells.
  """

  spec: DatasetSpec
  smiles: tuple[str, ...]
  labels: np.ndarray
  row_index: np.ndarray
  lines: np.ndarray
  dropped: tuple[DroppedRow, ...]
  num_rows: int
  path: Path
  sha256: str
  graphs: featurization.MolecularGraphs | None
  annotations: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)

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

  def duplicates(self) -> list[tuple[str, list[int]]]:
    """Each SMILES kept more than once, with its file lines."""
    lines: dict[str, list[int]] = {}
    for smiles, line in zip(self.smiles, self.lines.tolist(), strict=True):
      lines.setdefault(smiles, []).append(line)
    return [(s, found) for s, found in lines.items() if len(found) > 1]


def _check_labels(spec: DatasetSpec, path, labels, lines) -> None:
  """Classification labels must be 0 or 1 (infinite ones are dropped)."""
  if spec.task_type != "classification":
    return
  bad = np.isfinite(labels) & ~np.isin(labels, (0.0, 1.0))
  if bad.any():
    row, task = np.argwhere(bad)[0]
    raise DataFileError(
      f"{shown_path(path)}, line {lines[row]}, column "
      f"{spec.target_columns[task]!r}: "
      f"{labels[row, task]:g} is not 0 or 1, as a classification label "
      "must be (a regression task?)"
    )


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

  Rows whose SMILES RDKit cannot parse, or with an infinite label, are
  dropped and reported: an InvalidSmilesWarning counts them and names the
  first few (file line, SMILES, reason), and the dataset's ``dropped`` field
  lists them all. ``strict=True`` raises ``featurization.InvalidSmilesError``
  instead. SMILES that occur more than once are kept and reported by a
  DuplicateSmilesWarning (``MoleculeDataset.duplicates`` lists them).

  Args:
    dataset: registry name or DatasetSpec (see also :func:`csv_spec`).
    data_dir: directory holding the CSV (see ``resolve_csv``).
    cache_dir: cache root for downloads and featurized molecules (default
      ``default_cache_dir()``).
    download: allow downloading a missing file.
    verify: check the SHA-256 of local files.
    strict: raise on unparseable SMILES and infinite labels instead of
      dropping them.
    featurize: featurize the molecules (False: only parse them, for counts).
    use_cache: read and write featurized molecules under
      ``cache_dir/features/``.
    progress: tqdm progress bar; None shows one for large sets on a terminal.

  Returns:
    A MoleculeDataset.

  Raises:
    DataFileError: the file cannot be read (see :func:`read_table`), or a
      classification label is neither 0 nor 1.
  """
  from models import featurization

  spec = get_spec(dataset)
  path = resolve_csv(
    spec, data_dir, cache_dir=cache_dir, download=download, verify=verify
  )
  sha = file_sha256(path)
  table = read_table(spec, path)
  smiles = table["smiles"].tolist()
  labels = table[list(spec.target_columns)].to_numpy(np.float32)
  lines = table["line"].to_numpy(np.int64)
  _check_labels(spec, path, labels, lines)
  infinite = np.isinf(labels)
  candidates = np.flatnonzero(~infinite.any(1))
  dropped = [
    (
      int(i),
      "label "
      + ", ".join(
        f"{spec.target_columns[t]!r} is {labels[i, t]:g}"
        for t in np.flatnonzero(infinite[i])
      ),
    )
    for i in np.flatnonzero(infinite.any(1))
  ]

  graphs = None
  subset = [smiles[i] for i in candidates]
  if featurize:
    cache_root = Path(cache_dir) if cache_dir else default_cache_dir()
    result = featurization.featurize_cached(
      subset,
      cache_root / "features" if use_cache else None,
      f"{spec.name}-{sha[:16]}",
      progress=progress,
    )
    graphs, kept, invalid = result.graphs, result.kept, result.dropped
  else:
    invalid = featurization.find_invalid_smiles(subset, progress=progress)
    keep = np.ones(len(subset), bool)
    keep[[d.index for d in invalid]] = False
    kept = np.flatnonzero(keep)
  kept = candidates[np.asarray(kept, np.int64)]
  dropped += [(int(candidates[d.index]), d.reason) for d in invalid]
  dropped = tuple(
    DroppedRow(row, int(lines[row]), smiles[row], reason)
    for row, reason in sorted(dropped)
  )
  if dropped:
    message = (
      f"{spec.name}: dropped {len(dropped)} of {len(smiles)} rows (SMILES "
      "that RDKit cannot parse, infinite labels):\n"
      + describe_rows([(d.line, d.smiles, d.reason) for d in dropped])
    )
    if strict:
      raise featurization.InvalidSmilesError(f"{path}: {message}")
    warnings.warn(message, InvalidSmilesWarning, stacklevel=2)
  out = MoleculeDataset(
    spec=spec,
    smiles=tuple(smiles[i] for i in kept),
    labels=labels[kept],
    row_index=kept,
    lines=lines[kept],
    dropped=dropped,
    num_rows=len(smiles),
    path=Path(path),
    sha256=sha,
    graphs=graphs,
    annotations={
      c: table[c].to_numpy(str)[kept] for c in _annotation_columns(spec)
    },
  )
  duplicates = out.duplicates()
  if duplicates:
    warnings.warn(
      f"{spec.name}: {len(duplicates)} SMILES occur more than once "
      f"({sum(len(lines) for _, lines in duplicates)} rows); all are kept, "
      "and a split keeps each one's rows on one side:\n"
      + describe_rows(
        [
          (lines[0], s, "also on line " + ", ".join(map(str, lines[1:])))
          for s, lines in duplicates
        ]
      ),
      DuplicateSmilesWarning,
      stacklevel=2,
    )
  return out
