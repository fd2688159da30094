"""The run directory of ``graphsam-train``: checks, records and the model.

A run directory holds

====================  =========================================================
``config.json``       the Config (``dataclasses.asdict``)
``data.json``         the data file (path, SHA-256, registry or your own), its
                      columns, task and load counts
``split.json``        the split as CSV data rows (``models.splits``), usable as
                      a split file
``dropped_rows.csv``  every row not loaded: line, data row, SMILES, reason
``metrics.json/csv``  one row per finished epoch
``checkpoints/``      orbax: the training state after the last finished epoch
``model.json``        what prediction needs besides the weights: task, targets,
                      target scaler, featurizer and RDKit versions
``params.msgpack``    the best epoch's clean weights (``eval_params``), in
                      ``flax.serialization`` msgpack, loadable without a model
``summary.json``      the test metric and run statistics
``domain.json``       the applicability domain of the training molecules
                      (:mod:`models.domain`): most atoms, seen atom and bond
                      values, the similarity threshold; with
                      ``domain_fingerprints.npz``, their Morgan fingerprints
====================  =========================================================

``model.json``, ``params.msgpack`` and the domain are written when the run
finishes; with ``config.json`` they are all :mod:`models.predict` reads (a
run without the domain, from before it existed, still predicts). Every check
here raises :class:`RunDirError` with a message that names the file and says
what to do, before any training starts where it can.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import io
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from models import files
from models import splits
from models import tables
from models.configs import default

FORMAT_VERSION = 1
CONFIG = "config.json"
DATA = "data.json"
SPLIT = "split.json"
DROPPED = "dropped_rows.csv"
METRICS = "metrics.json"
METRICS_CSV = "metrics.csv"
MODEL = "model.json"
PARAMS = "params.msgpack"
SUMMARY = "summary.json"
PREDICTIONS = "test_predictions.csv"
# Config fields that only say when to stop: a run may be resumed with others.
_STOPPING = ("epochs", "patience")


class RunDirError(ValueError):
  """An output or run directory cannot be used as asked; says what to do."""


class CheckpointError(RunDirError):
  """A checkpoint cannot be read."""


def write_text(path: Path, text: str) -> None:
  """Writes ``text`` atomically (a killed process leaves the old file)."""
  with files.atomic_write(path) as f:
    f.write(text)


def write_csv(path: Path, rows: Sequence[dict], fields: Sequence[str]) -> None:
  text = io.StringIO()
  writer = csv.DictWriter(text, fieldnames=list(fields))
  writer.writeheader()
  writer.writerows(rows)
  write_text(path, text.getvalue())


def _normalized(record: dict) -> dict:
  """``record`` as it reads back from JSON (tuples become lists)."""
  return json.loads(json.dumps(record))


def _read_json(path: Path, what: str, remedy: str) -> Any:
  try:
    return json.loads(path.read_text(encoding="utf-8"))
  except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
    reason = e.strerror if isinstance(e, OSError) else "not valid JSON"
    raise RunDirError(f"cannot read {what} {path} ({reason}); {remedy}") from e


def _fresh(workdir: Path) -> str:
  return f"delete {workdir} to start again, or choose another output directory"


def _show(value: Any) -> str:
  text = json.dumps(value)
  return text if len(text) <= 40 else text[:37] + "..."


def check(
  workdir: Path, record: dict, *, fixed_epochs: bool
) -> tuple[dict, list[str]]:
  """Checks an output directory before any work; changes nothing.

  The directory may be new, or hold a run of the same configuration (it is
  resumed), or of the same configuration but ``epochs`` or ``patience``
  (it is extended, if it has not trained more epochs already).

  Args:
    workdir: the output directory.
    record: the run's Config as a JSON-able dict.
    fixed_epochs: the optimizer schedules itself over ``epochs``
      (``total_steps``), so a run of it cannot be extended.

  Returns:
    The record to write to ``config.json``, and lines to tell the user.

  Raises:
    RunDirError: ``workdir`` is a file, lies under one, cannot be written,
      or holds a run of another configuration or an unreadable record.
  """
  record = _normalized(record)
  for parent in (workdir, *workdir.absolute().parents):
    if parent.exists():
      if not parent.is_dir():
        raise RunDirError(
          f"{tables.shown_path(parent)} is a file, not a directory; choose "
          "another output directory"
        )
      if not os.access(parent, os.W_OK | os.X_OK):
        raise RunDirError(
          f"cannot write to {tables.shown_path(parent)} (permission "
          "denied); choose another output directory"
        )
      break
  config_file = workdir / CONFIG
  if not config_file.exists():
    return record, []
  stored = _read_json(config_file, "the run configuration", _fresh(workdir))
  defaults = _normalized(dataclasses.asdict(default.Config()))
  changed = {
    key: (stored.get(key, defaults.get(key)), record.get(key))
    for key in sorted(set(stored) | set(record))
    if stored.get(key, defaults.get(key)) != record.get(key)
  }
  if not changed:
    return record, []
  if not set(changed) <= set(_STOPPING):
    what = "; ".join(
      f"{key} {_show(old)} there, {_show(new)} here"
      for key, (old, new) in changed.items()
    )
    raise RunDirError(
      f"{workdir} holds a run of another configuration ({what}); rerun with "
      "its settings to resume or extend it, or choose another output "
      "directory"
    )
  history = []
  if (workdir / METRICS).exists():
    history = _read_json(workdir / METRICS, "the metrics", _fresh(workdir))
  done = len(history)
  if "epochs" in changed and fixed_epochs:
    raise RunDirError(
      f"the optimizer of {workdir} ({record['optimizer']}) schedules itself "
      f"over its {changed['epochs'][0]} epochs, so the run cannot be "
      f"extended to {record['epochs']}; choose another output directory"
    )
  if record["epochs"] < done:
    raise RunDirError(
      f"{workdir} has trained {done} epochs already; pass --epochs {done} "
      "or more to resume it, or choose another output directory"
    )
  notes = [
    f"continuing {workdir} with {key} {old} -> {new}"
    for key, (old, new) in changed.items()
  ]
  if history and (workdir / SUMMARY).exists():
    last = history[-1]
    if last["epoch"] - last["best_epoch"] >= record["patience"]:
      notes.append(
        f"{workdir} stopped early at epoch {last['epoch']} (no better "
        f"validation since epoch {last['best_epoch']}); pass a --patience "
        f"above {last['epoch'] - last['best_epoch']} to train further"
      )
  return record, notes


def _data_record(data) -> dict:
  dataset = data.dataset
  spec = dataset.spec
  return {
    "name": spec.name,
    "file": str(Path(dataset.path).absolute()),
    "sha256": dataset.sha256,
    "registry": spec.path is None,
    "smiles_column": spec.smiles_column,
    "target_columns": list(spec.target_columns),
    "task_type": spec.task_type,
    "metric": spec.metric,
    "rows": dataset.num_rows,
    "molecules": len(dataset),
    "dropped": len(dataset.dropped),
    "duplicate_smiles": len(dataset.duplicates()),
  }


def start(workdir: Path, record: dict, data) -> list[str]:
  """Creates or reopens the run directory and records the run's data.

  Writes ``config.json``, ``data.json``, ``split.json`` and, when rows were
  dropped, ``dropped_rows.csv``.

  Args:
    workdir: the output directory (checked by :func:`check`).
    record: the record :func:`check` returned.
    data: the run's ``input_pipeline.PreparedData``.

  Returns:
    Lines to tell the user (on a fresh start).

  Raises:
    RunDirError: the directory cannot be written, or the data file has
      changed since the run started.
  """
  info = _data_record(data)
  old = workdir / DATA
  resumed = old.exists()
  if resumed:
    before = _read_json(old, "the data record", _fresh(workdir))
    if before.get("sha256") != info["sha256"]:
      raise RunDirError(
        f"{info['file']} has changed since {workdir} started (SHA-256 "
        f"{before.get('sha256', '?')[:12]}... then, {info['sha256'][:12]}... "
        "now); restore it to resume the run, or "
        + _fresh(workdir).replace("delete", "train on it afresh: delete")
      )
  dataset = data.dataset
  try:
    workdir.mkdir(parents=True, exist_ok=True)
    write_text(workdir / CONFIG, json.dumps(record, indent=1))
    write_text(workdir / DATA, json.dumps(info, indent=1))
    write_text(
      workdir / SPLIT,
      json.dumps(splits.split_rows(data.split, dataset.row_index)),
    )
    if dataset.dropped:
      write_csv(
        workdir / DROPPED,
        [dataclasses.asdict(d) for d in dataset.dropped],
        ["line", "row", "smiles", "reason"],
      )
  except OSError as e:
    raise RunDirError(
      f"cannot write to {workdir} ({e.strerror or e}); choose another output "
      "directory"
    ) from e
  if dataset.dropped and not resumed:
    return [f"the dropped rows are listed in {workdir / DROPPED}"]
  return []


def read_history(workdir: Path, done: int) -> list[dict]:
  """The first ``done`` rows of ``metrics.json`` (checkpoints hold ``done``).

  Raises:
    RunDirError: the file is missing, unreadable or has fewer rows.
  """
  remedy = (
    f"restore it, or delete {workdir / 'checkpoints'} to restart the run "
    "from its first epoch"
  )
  path = workdir / METRICS
  if not path.exists():
    raise RunDirError(
      f"{path} is missing, but {workdir} has a checkpoint after epoch "
      f"{done}; {remedy}"
    )
  history = _read_json(path, "the metrics", remedy)
  if not isinstance(history, list) or len(history) < done:
    raise RunDirError(
      f"{path} has fewer than the checkpoint's {done} epochs; {remedy}"
    )
  return history[:done]


def checkpoint_error(directory: Path, error: BaseException) -> CheckpointError:
  """The error for an unreadable checkpoint under ``directory``."""
  reason = str(error).strip().splitlines()[0] if str(error).strip() else ""
  if len(reason) > 120:
    reason = reason[:117] + "..."
  return CheckpointError(
    f"cannot read the checkpoint in {directory} ({type(error).__name__}"
    + (f": {reason}" if reason else "")
    + f"); delete {directory} to restart the run from its first epoch, or "
    "choose another output directory"
  )


def save_model(workdir: Path, data, params, best_epoch: int) -> None:
  """Writes ``model.json``, ``params.msgpack`` and the applicability domain
  (:mod:`models.domain`): all prediction needs.

  Args:
    workdir: the run directory.
    data: the run's ``input_pipeline.PreparedData`` (task, targets, scaler;
      the training and validation molecules for the domain).
    params: the clean weights to predict with (the best epoch's).
    best_epoch: the epoch they are from.
  """
  import jax
  import rdkit
  from flax import serialization

  from models import domain
  from models import featurization

  spec = data.dataset.spec
  scaler = data.scaler
  meta = {
    "format": FORMAT_VERSION,
    "task_type": spec.task_type,
    "metric": spec.metric,
    "targets": list(spec.target_columns),
    "smiles_column": spec.smiles_column,
    "scaler": None
    if scaler is None
    else {"mean": scaler.mean.tolist(), "std": scaler.std.tolist()},
    "featurizer_version": featurization.FEATURIZER_VERSION,
    "rdkit_version": rdkit.__version__,
    "best_epoch": int(best_epoch),
    "params": PARAMS,
  }
  dataset = data.dataset
  domain.save(
    workdir,
    domain.fit(
      dataset.smiles, dataset.graphs, data.split.train, data.split.valid
    ),
    write_text,
  )
  weights = serialization.msgpack_serialize(jax.device_get(params))
  with files.atomic_write(workdir / PARAMS, "wb") as f:
    f.write(weights)
  write_text(workdir / MODEL, json.dumps(meta, indent=1))


def save_predictions(
  workdir: Path,
  *,
  smiles: Sequence[str],
  rows: np.ndarray,
  targets: Sequence[str],
  labels: np.ndarray,
  predictions: np.ndarray,
  flags: dict[str, np.ndarray],
) -> None:
  """Writes ``test_predictions.csv``: one row per test molecule.

  Columns: ``smiles``, ``row`` (the CSV data row), then per target its label
  (empty where missing) and prediction, named ``label`` and ``prediction``
  for one target, ``label:<target>`` and ``prediction:<target>`` for
  several, then the subset flags by their dataset column names.
  """
  names = (
    [("label", "prediction")]
    if len(targets) == 1
    else [(f"label:{t}", f"prediction:{t}") for t in targets]
  )
  records = []
  for i, molecule in enumerate(smiles):
    record = {"smiles": molecule, "row": int(rows[i])}
    for t, (label, prediction) in enumerate(names):
      value = float(labels[i, t])
      record[label] = "" if math.isnan(value) else repr(value)
      record[prediction] = repr(float(predictions[i, t]))
    record.update({c: str(flag[i]) for c, flag in flags.items()})
    records.append(record)
  fields = ["smiles", "row", *(n for pair in names for n in pair), *flags]
  write_csv(workdir / PREDICTIONS, records, fields)


def config_from_record(record: dict) -> default.Config:
  """The Config of a ``config.json`` (unknown keys ignored)."""
  fields = {f.name: f for f in dataclasses.fields(default.Config)}
  values = {}
  for key, value in record.items():
    if key in fields:
      values[key] = tuple(value) if isinstance(value, list) else value
  return default.Config(**values)


@dataclasses.dataclass(frozen=True)
class SavedModel:
  """A finished run as :func:`load_model` reads it.

  Attributes:
    directory: the run directory.
    config: its Config.
    meta: ``model.json``.
    params: the clean weights, NumPy arrays in flax's nested dicts.
  """

  directory: Path
  config: default.Config
  meta: dict = dataclasses.field(repr=False)
  params: Any = dataclasses.field(repr=False)

  @functools.cached_property
  def domain(self):
    """The run's ``models.domain.Domain``, None if it predates them."""
    from models import domain

    return domain.load(self.directory)

  @property
  def targets(self) -> tuple[str, ...]:
    return tuple(self.meta["targets"])

  @property
  def task_type(self) -> str:
    return self.meta["task_type"]

  def scaler_arrays(self) -> tuple[np.ndarray, np.ndarray] | None:
    scaler = self.meta["scaler"]
    if scaler is None:
      return None
    return (
      np.asarray(scaler["mean"], np.float32),
      np.asarray(scaler["std"], np.float32),
    )


def find_runs(paths: Sequence[str | os.PathLike]) -> list[Path]:
  """Run directories: each path, or the runs directly inside it.

  A directory without ``config.json`` stands for the run directories in it
  (``graphsam-train --seeds ... --out DIR`` makes one per seed).

  Raises:
    RunDirError: a path is missing, or neither a run nor holds runs.
  """
  runs = []
  for path in map(Path, paths):
    if not path.is_dir():
      raise RunDirError(
        f"{path}: no such run directory (pass the --out of a graphsam-train "
        "run, or a directory of runs)"
      )
    if (path / CONFIG).exists():
      runs.append(path)
      continue
    inside = sorted(p.parent for p in path.glob(f"*/{CONFIG}"))
    if not inside:
      raise RunDirError(
        f"{path} is not a graphsam-train run directory (no {CONFIG}) and "
        "holds none"
      )
    runs.extend(inside)
  return runs


def walk_runs(
  roots: Sequence[str | os.PathLike],
) -> tuple[list[Path], list[Path]]:
  """The run directories at or below ``roots``: ``(finished, unfinished)``.

  A run directory holds ``config.json``; it is finished when it also holds
  ``summary.json`` and ``metrics.json``. The search does not descend into
  run directories. Missing roots hold no runs (:func:`find_runs` is the
  strict, one-level look-up of a command line).
  """
  finished, unfinished = [], []
  for root in roots:
    for path, dirs, names in os.walk(root):
      if CONFIG in names:
        dirs.clear()
        done = all(name in names for name in (SUMMARY, METRICS))
        (finished if done else unfinished).append(Path(path))
      dirs.sort()
  return finished, unfinished


def load_model(run: str | os.PathLike) -> SavedModel:
  """Reads a finished run's configuration, model record and weights.

  Raises:
    RunDirError: not a run directory, an unfinished run, a run of another
      featurizer version, or unreadable files.
  """
  from flax import serialization

  from models import featurization

  run = Path(run)
  remedy = f"retrain the run with graphsam-train --out {run}"
  record = _read_json(run / CONFIG, "the run configuration", remedy)
  if not (run / MODEL).exists():
    raise RunDirError(
      f"{run} has no {MODEL}: the run has not finished (rerun its "
      "graphsam-train command to finish it) or predates graphsam-predict "
      "(retrain it)"
    )
  meta = _read_json(run / MODEL, "the model record", remedy)
  if meta.get("format") != FORMAT_VERSION:
    raise RunDirError(
      f"{run / MODEL} has format {meta.get('format')}, this version reads "
      f"{FORMAT_VERSION}; {remedy}"
    )
  if meta["featurizer_version"] != featurization.FEATURIZER_VERSION:
    raise RunDirError(
      f"{run} was trained on featurizer version "
      f"{meta['featurizer_version']}, this installation has "
      f"{featurization.FEATURIZER_VERSION}; {remedy}"
    )
  try:
    params = serialization.msgpack_restore((run / meta["params"]).read_bytes())
  except (OSError, ValueError, TypeError) as e:
    raise RunDirError(
      f"cannot read the weights {run / meta['params']} "
      f"({type(e).__name__}); {remedy}"
    ) from e
  return SavedModel(run, config_from_record(record), meta, params)


class Checkpoints:
  """The run's orbax checkpoints: the state after each finished epoch."""

  def __init__(self, directory: Path):
    import orbax.checkpoint as ocp  # heavy: only where a run trains

    self.directory = directory
    try:
      self.manager = ocp.CheckpointManager(
        directory.absolute(),
        options=ocp.CheckpointManagerOptions(
          max_to_keep=1, enable_async_checkpointing=False
        ),
      )
    except Exception as e:  # noqa: BLE001 - orbax raises many types
      raise checkpoint_error(directory, e) from e

  def restore(self, target: dict) -> dict | None:
    """The latest state, or None; raises CheckpointError if unreadable."""
    import jax
    import orbax.checkpoint as ocp

    try:
      step = self.manager.latest_step()
      if step is None:
        return None
      abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
      return self.manager.restore(step, args=ocp.args.StandardRestore(abstract))
    except Exception as e:  # noqa: BLE001 - orbax and TensorStore errors
      raise checkpoint_error(self.directory, e) from e

  def save(self, epoch: int, state: dict) -> None:
    import orbax.checkpoint as ocp

    self.manager.save(epoch, args=ocp.args.StandardSave(state))
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.close()


def elapsed_before(history: Sequence[dict]) -> float:
  """Wall seconds from a run's start to the end of its last kept epoch.

  Run directories written before metrics recorded ``elapsed_seconds`` give
  their epochs' training seconds, a lower bound.
  """
  if not history:
    return 0.0
  last = history[-1].get("elapsed_seconds")
  if last is None:
    return float(sum(row["train_seconds"] for row in history))
  return float(last)


def write_history(workdir: Path, history: Sequence[dict]) -> None:
  """``metrics.json``, and its spreadsheet copy ``metrics.csv``."""
  write_text(workdir / METRICS, json.dumps(list(history), indent=1))
  if history:
    write_csv(workdir / METRICS_CSV, history, list(history[0]))


def save_summary(workdir: Path, summary: dict) -> None:
  """``summary.json``: written last, it marks the run finished."""
  write_text(workdir / SUMMARY, json.dumps(summary, indent=1))


def config_record(config: default.Config) -> dict:
  """The config as ``config.json`` holds it (schedules as their repr)."""
  record = dataclasses.asdict(config)
  record["hyperparameters"] = {
    k: v if isinstance(v, (int, float, bool, str)) else repr(v)
    for k, v in config.hyperparameters.items()
  }
  return record
