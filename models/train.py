"""Train and evaluate CoMPT with any optimizer of `graphsam_optax`.

The layout of flax's ``examples/ogbg_molpcba``: :func:`train_and_evaluate`
runs a whole experiment (data, model, optimizer, the epoch loop with early
stopping on the validation metric, orbax checkpoints, the best checkpoint
tested once), reading top to bottom; the pieces live one job per module:
``models.input_pipeline`` (data), ``models.engine`` (model, jitted steps,
epoch loop, prediction), ``models.optim`` (the optimizer), ``models.metrics``
(loss and metrics) and ``models.run_dir`` (what a run writes). A killed run
restarted with the same arguments resumes and ends with the same test metric
as an uninterrupted one. Evaluation and checkpoints of the best model use
``graphsam_optax.eval_params(opt_state, params)``, the clean weights.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

import graphsam_optax
from models import allocator
from models import engine as engine_lib
from models import input_pipeline
from models import metrics
from models import model as model_lib
from models import optim
from models import run_dir
from models.configs import default


class NonFiniteLossError(RuntimeError):
  """The training loss became NaN or infinite; the run stopped.

  The checkpoint of the last finished epoch is kept (the failing epoch's is
  never written).

  Attributes:
    epoch: the epoch (1-based).
    step: the first step with a non-finite loss (1-based within the epoch).
    loss: that loss.
  """

  def __init__(self, epoch: int, step: int, loss: float):
    kept = f"epoch {epoch - 1}" if epoch > 1 else "none: no epoch finished"
    super().__init__(
      f"the training loss is {loss} at epoch {epoch}, step {step}: the run "
      f"stopped and keeps its last good checkpoint ({kept}); retry with a "
      "lower --rho or learning rate, in a new output directory"
    )
    self.epoch, self.step, self.loss = epoch, step, loss


def test_predictions(
  workdir: Path,
  data: input_pipeline.PreparedData,
  logits: np.ndarray,
  labels: np.ndarray,
  masks: np.ndarray,
) -> dict[str, dict[str, float]]:
  """Writes the test part's predictions; the metric on each subset.

  ``test_predictions.csv`` (``run_dir.save_predictions``) holds every test
  molecule's SMILES, labels and predictions in original units (regression)
  or probabilities (classification), and the dataset's subset flags, so
  that every test number can be recomputed from it and the data alone.

  Returns:
    ``{column: {metric: value, "molecules": count}}`` for each of the
    dataset's ``subset_columns`` (MoleculeACE's ``cliff_mol``): the test
    metric over the molecules flagged 1.
  """
  spec = data.dataset.spec
  rows = data.split.test
  if data.scaler is not None:
    labels = data.scaler.inverse_transform(labels)
    logits = data.scaler.inverse_transform(logits)
  predictions = (
    1.0 / (1.0 + np.exp(-logits.astype(np.float64)))
    if spec.task_type == "classification"
    else logits
  )
  flags = {c: data.dataset.annotations[c][rows] for c in spec.subset_columns}
  run_dir.save_predictions(
    workdir,
    smiles=[data.dataset.smiles[i] for i in rows],
    rows=data.dataset.row_index[rows],
    targets=spec.target_columns,
    labels=np.where(masks, labels, np.nan),
    predictions=predictions,
    flags=flags,
  )
  score = metrics.METRICS[spec.metric][0]
  out = {}
  for column, flag in flags.items():
    chosen = flag == "1"
    out[column] = {
      spec.metric: score(labels[chosen], masks[chosen], logits[chosen])
      if chosen.any()
      else math.nan,
      "molecules": int(chosen.sum()),
    }
  return out


@dataclasses.dataclass
class TrainState:
  """A run's state between epochs: what each checkpoint holds.

  Attributes:
    params: the weights the optimizer holds (GraphSAM's may be perturbed).
    opt_state: the optimizer's state.
    best_params: the clean weights of the best validation epoch so far.
    epoch: epochs finished.
    best_epoch: the epoch of ``best_params`` (0: none yet).
    best_metric: its validation metric (NaN: none yet).
  """

  params: Any
  opt_state: Any
  best_params: Any
  epoch: int = 0
  best_epoch: int = 0
  best_metric: float = math.nan

  def checkpoint(self) -> dict:
    """The state as orbax saves it, the layout of every run directory."""
    return {
      "params": self.params,
      "opt_state": self.opt_state,
      "best_params": self.best_params,
      "epoch": np.asarray(self.epoch, np.int32),
      "best_epoch": np.asarray(self.best_epoch, np.int32),
      "best_metric": np.asarray(self.best_metric, np.float64),
    }

  @classmethod
  def from_checkpoint(cls, record: dict) -> TrainState:
    return cls(
      record["params"],
      record["opt_state"],
      record["best_params"],
      int(record["epoch"]),
      int(record["best_epoch"]),
      float(record["best_metric"]),
    )


def start_run(
  config: default.Config, workdir: Path, data_dir, cache_dir, log
) -> input_pipeline.PreparedData:
  """Checks ``workdir`` against ``config``, prepares the data and writes the
  run's records (``run_dir.check`` and ``run_dir.start``)."""
  spec = graphsam_optax.optimizer_spec(config.optimizer)
  record, notes = run_dir.check(
    workdir,
    run_dir.config_record(config),
    fixed_epochs="total_steps" in spec.needs + spec.optional_needs,
  )
  data = input_pipeline.data_for(config, data_dir, cache_dir)
  for line in notes + run_dir.start(workdir, record, data):
    log(line)
  if data.steps_per_epoch(config.drop_last) < 1:
    raise ValueError(
      f"{len(data.split.train)} training molecules make no batch of "
      f"{config.batch_size}"
    )
  optim.create_optimizer(config, data.steps_per_epoch(config.drop_last))
  return data


def initial_state(fns, engine, data, config, values) -> TrainState:
  """Fresh weights and optimizer state; the first compilations started."""
  first = next(data.train_batches(0, config.seed, config.drop_last))
  init_args = (config.seed, first.graphs, values)
  blocks = data.blocks_of(first)
  if engine.num_devices == 1:
    shapes = fns.init.eval_shape(*init_args, blocks=blocks)
    engine_lib.prefetch(engine, data, config, values, shapes)
  params, opt_state = fns.init(*init_args, blocks)
  return TrainState(params, opt_state, params)


def resume(
  checkpoints: run_dir.Checkpoints, state: TrainState, workdir: Path, log
) -> tuple[TrainState, list[dict], float]:
  """The last checkpoint's state, its history and the wall seconds of the
  run's earlier invocations up to it (``state``, [] and 0 if none)."""
  restored = checkpoints.restore(state.checkpoint())
  if restored is None:
    return state, [], 0.0
  state = TrainState.from_checkpoint(restored)
  history = run_dir.read_history(workdir, state.epoch)
  log(f"resuming {workdir} after epoch {state.epoch}")
  return state, history, run_dir.elapsed_before(history)


def evaluate(engine, data, params, part: str) -> dict[str, float]:
  """Loss and metric of ``params`` on ``"valid"`` or ``"test"``."""
  return engine_lib.evaluate(
    engine.predict,
    params,
    data.eval_batches(part),
    data.dataset.task_type,
    data.scaler,
    data.blocks_of,
  )


def epoch_row(epoch, totals, valid, state, metric, seconds, graphs, elapsed):
  """One row of ``metrics.json``."""
  return {
    "epoch": epoch,
    "train_loss": float(totals.loss_sum / max(int(totals.steps), 1)),
    "valid_loss": valid["loss"],
    f"valid_{metric}": valid[metric],
    "best_epoch": state.best_epoch,
    f"best_valid_{metric}": state.best_metric,
    "train_seconds": seconds,
    "graphs_per_s": graphs / seconds,
    "elapsed_seconds": elapsed,
  }


def summarize(config, data, state, history, test, compiled, wall, workdir):
  """The run's ``summary.json``."""
  metric = data.dataset.spec.metric
  rates = [row["graphs_per_s"] for row in history]
  return {
    "dataset": data.dataset.spec.name,
    "optimizer": config.optimizer,
    "metric": metric,
    f"test_{metric}": test[metric],
    "test_loss": test["loss"],
    f"best_valid_{metric}": state.best_metric,
    "best_epoch": state.best_epoch,
    "epochs": state.epoch,
    "wall_seconds": wall,
    # The median epoch: compilation makes the first ones slower.
    "graphs_per_s": float(np.median(rates)) if rates else math.nan,
    # Compiled by this run; steps compiled by an earlier run of the family
    # in this process are reused.
    "compiled_train_steps": compiled.train_steps,
    "compiled_evaluations": compiled.evaluations,
    "compile_seconds": compiled.seconds,
    "steps_per_epoch": data.steps_per_epoch(config.drop_last),
    "train_seconds": float(sum(row["train_seconds"] for row in history)),
    "num_params": model_lib.count_params(state.params),
    "seed": config.seed,
    "workdir": str(workdir),
  }


def train_and_evaluate(
  config: default.Config,
  workdir: str | Path,
  *,
  data_dir=None,
  cache_dir=None,
  progress: bool = True,
  log: Callable[[str], Any] = print,
  on_epoch_end: Callable[[int], Any] | None = None,
  num_devices: int | None = None,
) -> dict[str, Any]:
  """Trains, early-stops on validation, and tests the best checkpoint once.

  ``workdir`` receives ``config.json``, ``metrics.json``/``metrics.csv`` (one
  row per epoch), ``checkpoints/``, ``test_predictions.csv``
  (:func:`test_predictions`) and ``summary.json``. A run restarted on a
  ``workdir`` that holds checkpoints of the same config resumes after the
  last finished epoch.

  Args:
    config: the experiment.
    workdir: output directory.
    data_dir: directory of the MoleculeNet CSVs (else ``GRAPHSAM_DATA_DIR``).
    cache_dir: cache for downloads and featurized molecules.
    progress: show a tqdm bar per epoch (steps, graphs/s).
    log: receives one line per epoch, and one per compiled step.
    on_epoch_end: called with the epoch number after its checkpoint.
    num_devices: devices the training batches are split over (data
      parallelism, :mod:`models.parallel`); None uses all. Every step sees the
      same molecules as on one device, so the run is the same up to float
      rounding. Evaluation runs on the replicated weights.

  Returns:
    The summary (also written to ``summary.json``).

  Raises:
    NonFiniteLossError: when the training loss becomes NaN or infinite; the
      checkpoint of the last finished epoch is kept.
  """
  start = time.perf_counter()
  workdir = Path(workdir)
  data = start_run(config, workdir, data_dir, cache_dir, log)
  spec = data.dataset.spec
  fns = engine_lib.build(
    config,
    spec.num_tasks,
    spec.task_type,
    data.steps_per_epoch(config.drop_last),
  )
  engine = engine_lib.make_engine(
    fns, data, config, spec.task_type, num_devices, log
  )
  values = engine.place(optim.hyperparameter_values(config))
  state = initial_state(fns, engine, data, config, values)
  checkpoints = run_dir.Checkpoints(workdir / "checkpoints")
  state, history, earlier_seconds = resume(checkpoints, state, workdir, log)
  # On the device(s) whether fresh or restored, so that the compiled step
  # sees the same input shardings in every run.
  state = TrainState.from_checkpoint(engine.place(state.checkpoint()))
  compiled_before = engine.compile_count()
  metric = spec.metric
  try:
    while (
      state.epoch < config.epochs
      and state.epoch - state.best_epoch < config.patience
    ):
      epoch = state.epoch + 1
      params, opt_state, totals, graphs, seconds = engine_lib.train_epoch(
        engine, state.params, state.opt_state, values, epoch, config, progress
      )
      if totals.first_nonfinite >= 0:
        raise NonFiniteLossError(
          epoch, int(totals.first_nonfinite) + 1, float(totals.nonfinite_loss)
        )
      clean = fns.eval_params(opt_state, params)
      valid = evaluate(engine, data, clean, "valid")
      if metrics.improves(metric, valid[metric], state.best_metric):
        state.best_params = clean
        state.best_epoch, state.best_metric = epoch, float(valid[metric])
      state.params, state.opt_state, state.epoch = params, opt_state, epoch
      elapsed = earlier_seconds + time.perf_counter() - start
      row = epoch_row(
        epoch, totals, valid, state, metric, seconds, graphs, elapsed
      )
      history.append(row)
      checkpoints.save(epoch, state.checkpoint())
      run_dir.write_history(workdir, history)
      log(
        f"epoch {epoch}: train loss {row['train_loss']:.4f}, valid {metric} "
        f"{valid[metric]:.4f} (best {state.best_metric:.4f} at "
        f"{state.best_epoch}), {row['graphs_per_s']:.0f} graphs/s"
      )
      if on_epoch_end is not None:
        on_epoch_end(epoch)
  finally:
    checkpoints.close()

  outputs = engine_lib.predict_batches(
    engine.predict, state.best_params, data.eval_batches("test"), data.blocks_of
  )
  test = metrics.metrics_of(*outputs, spec.task_type, data.scaler)
  subsets = test_predictions(workdir, data, *outputs)
  wall = earlier_seconds + time.perf_counter() - start
  compiled = engine.compile_count() - compiled_before
  summary = summarize(
    config, data, state, history, test, compiled, wall, workdir
  )
  if subsets:
    summary["test_subsets"] = subsets
  run_dir.save_model(workdir, data, state.best_params, state.best_epoch)
  run_dir.save_summary(workdir, summary)
  allocator.release_free_memory()
  return summary
