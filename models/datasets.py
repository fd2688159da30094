"""Loading a dataset: its molecules, labels and features, bad rows reported.

:func:`load_dataset` finds a dataset's CSV (:mod:`models.dataset_files`),
reads it (:func:`models.tables.read_table`: CRLF, blank lines and padded
SMILES handled), keeps only the SMILES and target columns (columns that leak
the label, such as HIV's ``activity``, are never used), drops and reports the
rows whose SMILES RDKit cannot parse or whose label is infinite (by file line,
header = line 1), reports duplicate SMILES (kept), and featurizes the rest,
through an on-disk cache keyed by the file's checksum and the featurizer
version.

Only numpy is imported with this module (pandas and RDKit when loading).
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from models.dataset_files import default_cache_dir
from models.dataset_files import file_sha256
from models.dataset_files import resolve_csv
from models.dataset_registry import DatasetSpec
from models.dataset_registry import get_spec
from models.tables import DataFileError
from models.tables import annotation_columns
from models.tables import read_table
from models.tables import shown_path

if TYPE_CHECKING:
  from models import featurization


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
    dataset: registry name or DatasetSpec (see also
      :func:`~models.tables.csv_spec`).
    data_dir: directory holding the CSV (see
      :func:`~models.dataset_files.resolve_csv`).
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
    DataFileError: the file cannot be read (see
      :func:`~models.tables.read_table`), or a classification label is
      neither 0 nor 1.
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
      c: table[c].to_numpy(str)[kept] for c in annotation_columns(spec)
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
