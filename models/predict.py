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
then ``prediction_error``: empty, or why the row's SMILES could not be used
(its prediction cells are then empty). A prediction column whose name an
input column already has gets the suffix ``_pred``.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from models import allocator
from models import cli
from models import run_dir

ERROR_COLUMN = "prediction_error"
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


@dataclasses.dataclass(frozen=True, eq=False)
class Ensemble:
  """Loaded runs that predict together (one run is an ensemble of one).

  Attributes:
    runs: the loaded runs, all with the same targets and task.
  """

  runs: tuple[run_dir.SavedModel, ...]

  @property
  def targets(self) -> tuple[str, ...]:
    return self.runs[0].targets

  @property
  def task_type(self) -> str:
    return self.runs[0].task_type

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
      NaN for the SMILES RDKit cannot parse; and those, as
      ``featurization.DroppedMolecule`` (index into ``smiles``, reason).
    """
    from models import featurization

    smiles = list(smiles)
    featurized = featurization.featurize_smiles(smiles, progress=progress)
    out = np.full((len(self.runs), len(smiles), len(self.targets)), np.nan)
    for k, run in enumerate(self.runs):
      raw = logits(
        run, featurized.graphs, batch_size=batch_size, progress=progress
      )
      if run.task_type == "classification":
        values = 1.0 / (1.0 + np.exp(-raw.astype(np.float64)))
      else:
        scaler = run.scaler_arrays()
        values = raw if scaler is None else raw * scaler[1] + scaler[0]
      out[k, featurized.kept] = values
    return out, featurized.dropped

  def predict(
    self,
    smiles: Sequence[str],
    *,
    return_std: bool = False,
    progress: bool | None = None,
  ):
    """f64[N, T] ensemble mean (NaN rows for unparseable SMILES).

    With ``return_std`` also the standard deviation across runs (ddof 0;
    zeros for a single run), as ``(mean, std)``.
    """
    per_run, _ = self.predict_runs(smiles, progress=progress)
    mean = per_run.mean(0)
    return (mean, per_run.std(0)) if return_std else mean


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

  from models import datasets
  from models import metrics

  ensemble = load(run)
  run = ensemble.runs[0].directory
  info = json.loads((run / run_dir.DATA).read_text())
  if datasets.file_sha256(info["file"]) != info["sha256"]:
    raise run_dir.RunDirError(
      f"{info['file']} has changed since {run} was trained"
    )
  if info["registry"]:
    spec = datasets.get_spec(info["name"])
  else:
    spec = datasets.csv_spec(
      info["file"],
      info["smiles_column"],
      info["target_columns"],
      info["task_type"],
    )
  table = datasets.read_table(spec, info["file"])
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
    help="default: the runs' SMILES column if the file has it, else its "
    "first column",
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


def _predict(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
  from models import datasets

  if not args.smiles.is_file():
    parser.error(f"argument --smiles: {args.smiles}: no such file")
  if args.out.is_dir():
    parser.error(f"argument --out: {args.out} is a directory; name a file")
  ensemble = load(args.run)
  table = datasets.read_rows(args.smiles, strip=False)
  if table.empty:
    raise datasets.DataFileError(f"{args.smiles} has no data rows")
  column = args.smiles_column
  if column is None:
    trained = ensemble.runs[0].meta["smiles_column"]
    column = trained if trained in table else table.columns[0]
  elif column not in table:
    parser.error(
      f"argument --smiles-column: {args.smiles} has no column {column!r} "
      f"(its columns: {', '.join(map(repr, table.columns))})"
    )
  smiles = table[column].str.strip().tolist()
  progress = False if args.no_progress else None
  per_run, dropped = ensemble.predict_runs(
    smiles, batch_size=args.batch_size, progress=progress
  )
  groups = _output_columns(ensemble.targets, len(per_run), list(table))
  values = [per_run.mean(0)]
  if len(per_run) > 1:
    values += [per_run.std(0), *per_run]
  out = table.reset_index(drop=True)
  for names, block in zip(groups, values, strict=True):
    for name, column_values in zip(names, block.T, strict=True):
      out[name] = column_values
  out[ERROR_COLUMN] = ""
  for d in dropped:
    out.loc[d.index, ERROR_COLUMN] = f"SMILES not parsed: {d.reason}"
  text = io.StringIO()
  out.to_csv(text, index=False, float_format=FLOAT_FORMAT)
  args.out.parent.mkdir(parents=True, exist_ok=True)
  run_dir.write_text(args.out, text.getvalue())
  if dropped:
    lines = table.index.to_numpy()
    print(
      f"{parser.prog}: {len(dropped)} of {len(smiles)} rows of {args.smiles} "
      f"have a SMILES RDKit cannot parse; their predictions are empty (why: "
      f"column {ERROR_COLUMN}):\n"
      + datasets.describe_rows(
        [(int(lines[d.index]), d.smiles, d.reason) for d in dropped]
      ),
      file=sys.stderr,
    )
  renamed = [c for g in groups for c in g if c.endswith("_pred")]
  print(
    f"{len(smiles) - len(dropped)} of {len(smiles)} molecules predicted by "
    f"{len(per_run)} run{'s' if len(per_run) > 1 else ''} -> {args.out}"
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
