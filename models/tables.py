"""Reading a CSV or SMILES file into a table of SMILES and labels.

A registered dataset's CSV and your own are read alike: :func:`read_table`
keeps the SMILES, the target columns (as numbers; cells of
:data:`MISSING_VALUES` are missing labels) and the spec's split and subset
columns, by file line (header = line 1); :func:`read_rows` reads any such
file as text, its delimiter sniffed (:func:`sniff_delimiter`) and its header
row detected (:func:`has_header`). Your own CSV is a spec too:
:func:`csv_spec` names its SMILES and target columns, and infers the task
from the labels when not given (:func:`column_task_types`). Every failure to
read a file (missing, empty, header only, not UTF-8, a label that is not a
number) raises :class:`DataFileError` naming the file, and the line and
column where one is at fault.

Only numpy is imported with this module (pandas and RDKit when reading).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from models.dataset_files import DatasetNotFoundError
from models.dataset_registry import DatasetSpec
from models.dataset_registry import get_spec


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
  annotations = annotation_columns(spec)
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


def annotation_columns(spec: DatasetSpec) -> tuple[str, ...]:
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
