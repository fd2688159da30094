"""Predictions of trained runs on new molecules: ``graphsam-predict``.

A finished ``graphsam-train`` run holds everything needed
(:mod:`models.run_dir`): the configuration, the task and target names, the
regression target scaler, the featurizer version and the best epoch's clean
weights. Several runs (the seeds of ``graphsam-train --seeds``) predict as an
ensemble: their mean, with their standard deviation across runs (ddof 0).

From Python::

  ensemble = models.predict.load(["runs/a", "runs/b"])  # or "runs/ensemble"
  mean, std = ensemble.predict(["CCO", "c1ccccc1O"], return_std=True)

From a shell::

  graphsam-predict --run runs/a runs/b --smiles new.csv --out preds.csv

``preds.csv`` has one row per input row, in input order: the input columns,
then one column per target (probabilities for classification, original units
for regression) holding the ensemble mean, and with several runs
``<target>_std`` and ``<target>_model_<i>`` for run ``i`` (chemprop's names),
then ``in_domain``: ``yes``, ``no`` or ``unknown``, whether the molecule is
inside the runs' applicability domain (:mod:`models.domain`), and
``domain_reason``: why not (more atoms than any training molecule, an
element or bond never seen in training, too far from every training
molecule), then ``prediction_error``: empty, or why the row's SMILES could
not be used (its prediction cells are then empty). A prediction column whose
name an input column already has gets the suffix ``_pred``.

The SMILES column is the runs' (or ``--smiles-column``), matched exactly,
else in any case if only one column matches. A file without a header row
(a ``.smi`` file, or one whose first cell is a molecule; ``--no-header``
says so) has its SMILES first. Commas, semicolons and tabs (spaces too in
``.smi`` and ``.txt`` files) separate cells. A cell of
``models.tables.MISSING_VALUES`` (empty, ``NA``, ``n/a``, ``?``, ``-``...) is no
SMILES. When no row can be predicted the command fails (status 1).
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from models import allocator
from models import cli
from models import run_dir

ERROR_COLUMN = "prediction_error"
DOMAIN_COLUMNS = ("in_domain", "domain_reason")
FLOAT_FORMAT = "%.7g"  # the model computes in float32
# Molecules from which a progress bar is shown (on a terminal).
PROGRESS_FROM = 1000


def logits(
  run: run_dir.SavedModel,
  graphs,
  *,
  batch_size: int | None = None,
  progress: bool | None = None,
) -> np.ndarray:
  """f32[M, T] logits of featurized molecules under a run's weights.

  The one place that knows how the training engine batches and calls the
  model: padded batches of the run's batch size in at most two shapes fitted
  to these molecules (``input_pipeline.padding_budgets``).

  Args:
    run: a loaded run (:func:`models.run_dir.load_model`).
    graphs: ``featurization.MolecularGraphs`` of the molecules.
    batch_size: molecules per batch (default: the run's).
    progress: a progress bar; None shows one for large sets on a terminal.
  """
  import jax
  import tqdm

  from models import engine
  from models import input_pipeline

  num_tasks = len(run.targets)
  if len(graphs) == 0:
    return np.zeros((0, num_tasks), np.float32)
  batch_size = batch_size or run.config.batch_size
  model = engine.create_model(run.config, num_tasks)
  predict = engine.predict_steps(model, run.config.fast_compile).jitted
  params = jax.device_put(run.params)
  labels = np.zeros((len(graphs), num_tasks), np.float32)
  budgets = input_pipeline.padding_budgets(graphs.n_atoms, batch_size)
  out = []
  for idx in tqdm.tqdm(
    input_pipeline.batch_indices(np.arange(len(graphs)), batch_size),
    desc=f"predicting ({run.directory.name})",
    disable=(not progress)
    if progress is not None
    else (len(graphs) < PROGRESS_FROM or None),
    leave=False,
  ):
    batch = input_pipeline.make_batch(graphs, labels, idx, budgets)
    blocks = input_pipeline.shape_of(batch, budgets).blocks
    result = predict(params, batch.graphs, blocks)
    out.append(np.asarray(result)[batch.graph_mask])
  return np.concatenate(out)


class UnusedSmilesWarning(UserWarning):
  """Some SMILES could not be used (none, or RDKit cannot parse them); their
  predictions are NaN."""


def _missing_reason(smiles: str) -> str:
  return "no SMILES (" + (
    f"missing value {smiles.strip()!r})" if smiles.strip() else "empty cell)"
  )


@dataclasses.dataclass(frozen=True, eq=False, repr=False)
class Ensemble:
  """Loaded runs that predict together (one run is an ensemble of one).

  Attributes:
    runs: the loaded runs, all with the same targets and task.
  """

  runs: tuple[run_dir.SavedModel, ...]

  def __repr__(self) -> str:
    directories = [str(r.directory) for r in self.runs]
    where = (
      directories[0]
      if len(directories) == 1
      else os.path.commonpath(directories)
    )
    count = f"{len(self.runs)} run{'s' * (len(self.runs) > 1)}"
    return (
      f"Ensemble({count} of {where or '.'}: {self.task_type}, targets "
      f"{self.targets})"
    )

  @property
  def targets(self) -> tuple[str, ...]:
    return self.runs[0].targets

  @property
  def task_type(self) -> str:
    return self.runs[0].task_type

  def _featurize(self, smiles: list[str], progress):
    """Featurized SMILES, their positions, and the unused ones (missing
    values and SMILES RDKit cannot parse), in input order."""
    from models import featurization
    from models import tables

    usable = [i for i, s in enumerate(smiles) if not tables.is_missing(s)]
    featurized = featurization.featurize_smiles(
      [smiles[i] for i in usable], progress=progress
    )
    kept = np.asarray(usable, np.int64)[featurized.kept]
    unused = [
      featurization.DroppedMolecule(i, s, _missing_reason(s))
      for i, s in enumerate(smiles)
      if tables.is_missing(s)
    ] + [
      dataclasses.replace(d, index=usable[d.index]) for d in featurized.dropped
    ]
    return featurized.graphs, kept, tuple(sorted(unused, key=lambda d: d.index))

  def _predict(self, smiles, batch_size, progress, with_domain: bool):
    from models import domain

    smiles = list(smiles)
    graphs, kept, dropped = self._featurize(smiles, progress)
    out = np.full((len(self.runs), len(smiles), len(self.targets)), np.nan)
    for k, run in enumerate(self.runs):
      raw = logits(run, graphs, batch_size=batch_size, progress=progress)
      if run.task_type == "classification":
        values = 1.0 / (1.0 + np.exp(-raw.astype(np.float64)))
      else:
        scaler = run.scaler_arrays()
        values = raw if scaler is None else raw * scaler[1] + scaler[0]
      out[k, kept] = values
    if not with_domain:
      return out, dropped, None
    used = [smiles[i] for i in kept]
    found = domain.combine(
      [domain.check(run.domain, used, graphs) for run in self.runs]
    )
    n = len(smiles)
    applicability = domain.Applicability(
      np.full(n, "", object), np.full(n, "", object), np.full(n, np.nan)
    )
    for full, part in zip(applicability, found, strict=True):
      full[kept] = part
    return out, dropped, applicability

  def predict_runs(
    self,
    smiles: Sequence[str],
    *,
    batch_size: int | None = None,
    progress: bool | None = None,
  ) -> tuple[np.ndarray, tuple]:
    """Every run's predictions, and the SMILES that could not be used.

    ``batch_size`` defaults to each run's; ``progress`` shows bars (None:
    for large sets on a terminal).

    Returns:
      f64[R, N, T] per-run predictions (probabilities, or original units),
      NaN for the SMILES that cannot be used (a missing value, or one RDKit
      cannot parse); and those, as ``featurization.DroppedMolecule`` (index
      into ``smiles``, reason).
    """
    out, dropped, _ = self._predict(smiles, batch_size, progress, False)
    return out, dropped

  def predict(
    self,
    smiles: Sequence[str],
    *,
    return_std: bool = False,
    return_domain: bool = False,
    progress: bool | None = None,
  ):
    """f64[N, T] ensemble mean (NaN rows for SMILES that cannot be used).

    An :class:`UnusedSmilesWarning` names the SMILES that cannot be used
    (their index, the SMILES and why).

    Args:
      smiles: the molecules.
      return_std: also return the standard deviation across runs (ddof 0;
        zeros for a single run).
      return_domain: also return a ``models.domain.Applicability``: whether
        each molecule is inside the runs' applicability domain, and why not.
      progress: progress bars (None: for large sets on a terminal).

    Returns:
      ``mean``, or ``(mean, std)``, ``(mean, applicability)`` or
      ``(mean, std, applicability)``.
    """
    per_run, dropped, applicability = self._predict(
      smiles, None, progress, return_domain
    )
    if dropped:
      warnings.warn(
        f"{len(dropped)} of {per_run.shape[1]} SMILES cannot be used; their "
        "rows are NaN:\n"
        + "\n".join(
          f"  index {d.index}: {d.smiles!r} ({d.reason})" for d in dropped[:3]
        )
        + (f"\n  ... and {len(dropped) - 3} more" if len(dropped) > 3 else ""),
        UnusedSmilesWarning,
        stacklevel=2,
      )
    out = [per_run.mean(0)]
    if return_std:
      out.append(per_run.std(0))
    if return_domain:
      out.append(applicability)
    return out[0] if len(out) == 1 else tuple(out)


def load(runs: str | os.PathLike | Sequence[str | os.PathLike]) -> Ensemble:
  """Loads finished runs: run directories, or directories of runs.

  Raises:
    RunDirError: a path is not a finished run of this featurizer version,
      or the runs disagree on their targets or task.
  """
  if isinstance(runs, (str, os.PathLike)):
    runs = [runs]
  loaded = tuple(map(run_dir.load_model, run_dir.find_runs(runs)))
  first = loaded[0]
  for other in loaded[1:]:
    if (other.targets, other.task_type) != (first.targets, first.task_type):
      raise run_dir.RunDirError(
        f"{other.directory} predicts {other.task_type} {list(other.targets)}"
        f", {first.directory} {first.task_type} {list(first.targets)}: an "
        "ensemble needs runs of the same targets and task"
      )
  return Ensemble(loaded)


def evaluate(run: str | os.PathLike, part: str = "test") -> dict[str, float]:
  """A run's metric on a part of its split, from what the run saved alone.

  Reads the run's data file (checked against the recorded SHA-256), the
  rows of ``split.json``'s ``part`` and their labels, predicts them with
  :func:`load` and scores them as training does: it reproduces the test
  metric in ``summary.json`` up to float rounding.

  Returns:
    ``{metric: value}`` (``roc_auc`` or ``rmse``, original units).

  Raises:
    RunDirError: the data file is missing or has changed.
  """
  import json

  from models import dataset_files
  from models import dataset_registry
  from models import metrics
  from models import tables

  ensemble = load(run)
  run = ensemble.runs[0].directory
  info = json.loads((run / run_dir.DATA).read_text())
  if dataset_files.file_sha256(info["file"]) != info["sha256"]:
    raise run_dir.RunDirError(
      f"{info['file']} has changed since {run} was trained"
    )
  if info["registry"]:
    spec = dataset_registry.get_spec(info["name"])
  else:
    spec = tables.csv_spec(
      info["file"],
      info["smiles_column"],
      info["target_columns"],
      info["task_type"],
    )
  table = tables.read_table(spec, info["file"])
  rows = json.loads((run / run_dir.SPLIT).read_text())[part]
  labels = table[list(spec.target_columns)].to_numpy(np.float32)[rows]
  predictions = ensemble.predict(table.smiles.iloc[rows].tolist())
  mask = ~np.isnan(labels)
  score = metrics.roc_auc if spec.metric == "roc_auc" else metrics.rmse
  return {spec.metric: score(np.nan_to_num(labels), mask, predictions)}


def make_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
    prog="graphsam-predict",
    description=__doc__.split("\n\n")[0],
    formatter_class=argparse.RawDescriptionHelpFormatter,
    epilog=__doc__[__doc__.index("``preds.csv``") :],
  )
  parser.add_argument(
    "--run",
    nargs="+",
    required=True,
    type=Path,
    metavar="RUN",
    help="graphsam-train output directories, or directories of them",
  )
  parser.add_argument(
    "--smiles", required=True, type=Path, help="CSV of molecules to predict"
  )
  parser.add_argument(
    "--smiles-column",
    help="default: the runs' SMILES column (in any case, if only one "
    "column matches), or the only column",
  )
  parser.add_argument(
    "--no-header",
    action="store_true",
    help="the file has no header row: its first column is the SMILES "
    "(default: so when its first cell is a molecule)",
  )
  parser.add_argument("--out", required=True, type=Path, help="output CSV")
  parser.add_argument(
    "--batch-size", type=cli.positive_int, help="default: the runs'"
  )
  parser.add_argument("--no-progress", action="store_true")
  parser.add_argument(
    "--debug", action="store_true", help="show tracebacks of failures"
  )
  return parser


def _output_columns(
  targets: Sequence[str], runs: int, taken: Sequence[str]
) -> list[list[str]]:
  """Column names: means, and with several runs stds and per-run sets."""
  groups = [list(targets)]
  if runs > 1:
    groups.append([f"{t}_std" for t in targets])
    groups += [[f"{t}_model_{i}" for t in targets] for i in range(runs)]
  return [[c + "_pred" if c in taken else c for c in g] for g in groups]


def _smiles_column(
  columns: Sequence[str], wanted: str, *, given: bool
) -> tuple[str | None, str]:
  """The column of SMILES among ``columns``: ``wanted`` exactly, else in
  any case if only one column matches, else (not ``given``) the only
  column. Returns it, or None and why."""
  if wanted in columns:
    return wanted, ""
  close = [c for c in columns if c.lower() == wanted.lower()]
  if len(close) == 1:
    return close[0], ""
  if close:
    return None, (
      f"columns {' and '.join(map(repr, close))} both match {wanted!r} but "
      "for case; name one with --smiles-column"
    )
  if len(columns) == 1 and not given:
    return columns[0], ""
  return None, (
    f"has no column {wanted!r} (its columns: {', '.join(map(repr, columns))})"
    "; name the SMILES column with --smiles-column"
  )


def _read_molecules(parser, args, trained: str):
  """The input table, its SMILES column and how it was read."""
  from models import tables

  delimiter = tables.sniff_delimiter(args.smiles)
  header = not args.no_header and tables.has_header(
    args.smiles, delimiter, [trained, args.smiles_column or trained]
  )
  table = tables.read_rows(
    args.smiles, header=header, strip=False, delimiter=delimiter
  )
  how = []
  if not header:
    names = ["smiles"] + [f"column_{i + 1}" for i in range(1, table.shape[1])]
    table.columns = names
    how.append("no header row, SMILES first")
  if delimiter != ",":
    how.append(f"{tables.DELIMITER_NAMES[delimiter]}-separated")
  if table.empty:
    raise tables.DataFileError(
      f"{tables.shown_path(args.smiles)} has no data rows"
    )
  if not header:
    return table, "smiles", how
  column, why = _smiles_column(
    list(table.columns),
    args.smiles_column or trained,
    given=args.smiles_column is not None,
  )
  if column is None:
    parser.error(f"argument --smiles-column: {args.smiles} {why}")
  return table, column, how


def _predict(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
  from models import datasets
  from models import tables

  if not args.smiles.is_file():
    parser.error(f"argument --smiles: {args.smiles}: no such file")
  if args.out.is_dir():
    parser.error(f"argument --out: {args.out} is a directory; name a file")
  ensemble = load(args.run)
  trained = ensemble.runs[0].meta["smiles_column"]
  table, column, how = _read_molecules(parser, args, trained)
  smiles = table[column].str.strip().tolist()
  progress = False if args.no_progress else None
  per_run, dropped, domain = ensemble._predict(
    smiles, args.batch_size, progress, with_domain=True
  )
  lines = table.index.to_numpy()
  if len(dropped) == len(smiles):
    first = dropped[0]
    raise tables.DataFileError(
      f"none of the {len(smiles)} rows of {args.smiles} has a SMILES that "
      f"can be used (column {column!r}; line {lines[first.index]}: "
      f"{first.smiles!r}, {first.reason}); name the SMILES column with "
      "--smiles-column"
    )
  groups = _output_columns(ensemble.targets, len(per_run), list(table))
  values = [per_run.mean(0)]
  if len(per_run) > 1:
    values += [per_run.std(0), *per_run]
  out = table.reset_index(drop=True)
  for names, block in zip(groups, values, strict=True):
    for name, column_values in zip(names, block.T, strict=True):
      out[name] = column_values
  extra = [c + "_pred" if c in table else c for c in DOMAIN_COLUMNS]
  out[extra[0]], out[extra[1]] = domain.in_domain, domain.reason
  out[ERROR_COLUMN] = ""
  for d in dropped:
    out.loc[d.index, ERROR_COLUMN] = (
      d.reason
      if d.reason.startswith("no SMILES")
      else f"SMILES not parsed: {d.reason}"
    )
  text = io.StringIO()
  out.to_csv(text, index=False, float_format=FLOAT_FORMAT)
  args.out.parent.mkdir(parents=True, exist_ok=True)
  run_dir.write_text(args.out, text.getvalue())
  if dropped:
    print(
      f"{parser.prog}: {len(dropped)} of {len(smiles)} rows of {args.smiles} "
      f"have no SMILES or one RDKit cannot parse; their predictions are "
      f"empty (why: column {ERROR_COLUMN}):\n"
      + datasets.describe_rows(
        [(int(lines[d.index]), d.smiles, d.reason) for d in dropped]
      ),
      file=sys.stderr,
    )
  renamed = [c for g in groups for c in g if c.endswith("_pred")]
  renamed += [c for c in extra if c.endswith("_pred")]
  outside = int((domain.in_domain == "no").sum())
  unknown = int((domain.in_domain == "unknown").sum())
  print(
    f"{len(smiles) - len(dropped)} of {len(smiles)} molecules predicted by "
    f"{len(per_run)} run{'s' if len(per_run) > 1 else ''}"
    + f" ({args.smiles}: {', '.join(how)})" * bool(how)
    + f", {outside} outside the training domain (column in_domain)"
    + (
      f", {unknown} of unknown domain (runs trained before domain records; "
      "retrain them to know)"
    )
    * bool(unknown)
    + f" -> {args.out}"
    + (
      f" (renamed, as the input has them: {', '.join(renamed)})" * bool(renamed)
    ),
    flush=True,
  )
  return 0


def main(argv: Sequence[str] | None = None) -> int:
  allocator.retain_freed_memory()  # before JAX runs anything
  parser = make_parser()
  args = parser.parse_args(argv)
  return cli.run(parser.prog, lambda: _predict(parser, args), debug=args.debug)


if __name__ == "__main__":
  sys.exit(main())
