"""Training and evaluation of CoMPT with any optimizer of `graphsam_optax`.

The layout of flax's ``examples/ogbg_molpcba``: factories
(:func:`create_model`, :func:`create_optimizer`), the loss, one jitted
:func:`make_train_step` shared by every optimizer of the registry, metrics,
and :func:`train_and_evaluate`, which runs a whole experiment with orbax
checkpoints (a killed run restarted with the same arguments resumes and ends
with the same test metric as an uninterrupted one).

The train step is the plain optax loop of the optimizer contract::

  loss, grads = value_and_grad(loss_fn)(params, batch)
  updates, opt_state = tx.update(grads, opt_state, params,
                                 grad_fn=lambda p: grad(loss_fn)(p, batch))
  params = optax.apply_updates(params, updates)

so Adam costs one pass per step, SAM two, and GraphSAM one plus one per epoch.
Evaluation and checkpoints of the best model use
``graphsam_optax.eval_params(opt_state, params)``, the clean weights.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import time
from collections.abc import Callable
from collections.abc import Iterable
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import tqdm
from sklearn import metrics as sk_metrics

import graphsam_optax
from graphsam_optax import _registry
from models import datasets
from models import featurization
from models import input_pipeline
from models import model as model_lib
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


def _check_losses(epoch: int, losses: Sequence[float], params) -> None:
  """Raises NonFiniteLossError at the epoch's first non-finite loss.

  Also when the weights ``params`` are not finite: masked_loss's RMSE turns
  NaN logits into a loss of 0, so the epoch's last step is then named.
  """
  for step, loss in enumerate(losses, 1):
    if not math.isfinite(loss):
      raise NonFiniteLossError(epoch, step, loss)
  if not all(np.isfinite(leaf).all() for leaf in jax.tree.leaves(params)):
    raise NonFiniteLossError(epoch, len(losses), math.nan)


# Static per-molecule block sizes (see model.CoMPT.max_atoms): a batch uses
# the smallest one that holds its largest molecule. Powers of two: a step
# compiles for a few (budget, block) pairs per dataset (BBBP: block 64 for
# most batches, 128 or 256 for the rest), and a block at most twice the
# batch's largest molecule costs little (the GRU runs only as many steps as
# that molecule has atoms; the n^2 part is a small share of the step).
BLOCK_SIZES = (16, 32, 64, 128, 256, 512)

OPTIMIZERS = ("adam",) + tuple(
  name for name in _registry.optimizer_names() if name != "base"
)


def ladder(atoms: int) -> int:
  """The smallest of ``BLOCK_SIZES`` holding ``atoms`` (then 128 multiples)."""
  for size in BLOCK_SIZES:
    if atoms <= size:
      return size
  return -(-atoms // 128) * 128


def block_size(
  batch: input_pipeline.GraphBatch, fixed: int | None = None
) -> int:
  """The static block size for ``batch``; checks the bonded-pair capacity.

  Args:
    batch: a padded batch.
    fixed: the block size of every batch (``Config.fixed_shapes``); None
      picks the ladder step of the batch's largest molecule.

  Raises:
    ValueError: if the batch has more bonded pairs than the model's static
      capacity (``model.BONDED_PER_ATOM`` per padded atom).
  """
  graphs = batch.graphs
  largest = int(np.max(np.asarray(graphs.n_node)[batch.graph_mask], initial=1))
  bonded = int(np.count_nonzero(np.asarray(graphs.edges["bond"])))
  capacity = model_lib.BONDED_PER_ATOM * graphs.nodes.shape[0]
  if bonded > capacity:
    raise ValueError(
      f"a batch has {bonded} bonded atom pairs, more than the model's "
      f"capacity {capacity} (BONDED_PER_ATOM * padded atoms)"
    )
  if fixed is None:
    return ladder(largest)
  if largest > fixed:
    raise ValueError(f"a batch has a molecule of {largest} atoms > {fixed}")
  return fixed


def fixed_block_size(
  config: default.Config, data: input_pipeline.PreparedData
) -> int | None:
  """The one block size of ``config.fixed_shapes`` runs, else None.

  It is the ladder step of the largest molecule kept in any split part.
  """
  if not config.fixed_shapes:
    return None
  kept = np.concatenate(list(data.split))
  return ladder(int(data.dataset.n_atoms[kept].max()))


def block_function(
  config: default.Config, data: input_pipeline.PreparedData
) -> Callable[[input_pipeline.GraphBatch], int]:
  """Each batch's static block size for ``config`` on ``data``."""
  return functools.partial(block_size, fixed=fixed_block_size(config, data))


def bond_vocabulary() -> tuple:
  """The pipeline's bond vocabulary in the hashable form CoMPT takes."""
  return model_lib.bond_vocabulary_tuple(
    featurization.BOND_FEATURIZER.vocabulary()
  )


def create_model(config: default.Config, num_tasks: int) -> model_lib.CoMPT:
  """The CoMPT model of ``config`` with ``num_tasks`` outputs."""
  return model_lib.CoMPT(
    num_tasks=num_tasks,
    bond_vocabulary=bond_vocabulary(),
    d_model=config.d_model,
    num_layers=config.num_layers,
    num_heads=config.num_heads,
    kernel=config.kernel,
    norm=config.norm,
    head_layers=config.head_layers,
    readout=config.readout,
    attention=config.attention,
  )


# Compiler options of Config.fast_compile: LLVM's cheapest settings roughly
# halve XLA:CPU compile times and slow the steps down (tiny models, tests).
FAST_COMPILE = {
  "xla_backend_optimization_level": 0,
  "xla_llvm_disable_expensive_passes": True,
}


def make_init(model, compiler_options=None):
  """Jitted ``init(seed, graphs, max_atoms)`` -> the ``"params"`` collection."""

  @functools.partial(
    jax.jit, static_argnames="max_atoms", compiler_options=compiler_options
  )
  def init(seed, graphs, max_atoms):
    return model.init(jax.random.key(seed), graphs, max_atoms)["params"]

  return init


def learning_rate_schedule(
  config: default.Config, steps_per_epoch: int
) -> optax.Schedule:
  """The paper's per-step learning rate.

  Linear warm-up from ``init_lr`` to ``max_lr`` over ``warmup_epochs``, then
  exponential decay reaching ``final_lr`` at ``lr_decay_epochs``, constant
  afterwards (the ``NoamLR`` of the authors' code).

  Examples:
    >>> from models.configs import default
    >>> schedule = learning_rate_schedule(default.get_config("bbbp"), 10)
    >>> [f"{float(schedule(s)):.1e}" for s in (0, 10, 20, 300, 1000)]
    ['1.0e-04', '5.5e-04', '1.0e-03', '1.0e-04', '1.0e-04']
  """
  warmup = max(1, round(config.warmup_epochs * steps_per_epoch))
  decay = max(1, round(config.lr_decay_epochs * steps_per_epoch) - warmup)
  return optax.join_schedules(
    [
      optax.linear_schedule(config.init_lr, config.max_lr, warmup),
      optax.exponential_decay(
        config.max_lr,
        transition_steps=decay,
        decay_rate=config.final_lr / config.max_lr,
        end_value=config.final_lr,
      ),
    ],
    [warmup],
  )


def registry_name(optimizer: str) -> str:
  """``"adam"`` is the registry's ``"base"`` (Adam alone)."""
  return "base" if optimizer == "adam" else optimizer


def create_optimizer(
  config: default.Config, steps_per_epoch: int
) -> optax.GradientTransformationExtraArgs:
  """``config.optimizer`` from the registry around the paper's Adam.

  Raises:
    ValueError: on an unknown optimizer or hyperparameter, or an invalid
      value (the registry's message names it).
  """
  if config.optimizer not in OPTIMIZERS:
    raise ValueError(
      f"optimizer={config.optimizer!r} is unknown; choose one of "
      f"{', '.join(OPTIMIZERS)}"
    )
  base = optax.adam(
    learning_rate_schedule(config, steps_per_epoch),
    b1=config.adam_b1,
    b2=config.adam_b2,
    eps=config.adam_eps,
  )
  return _registry.get_optimizer(
    registry_name(config.optimizer),
    base,
    steps_per_epoch=steps_per_epoch,
    total_steps=steps_per_epoch * config.epochs,
    **_optimizer_hyperparameters(config),
  )


def _optimizer_hyperparameters(config: default.Config) -> dict[str, Any]:
  """The config's overrides; a method's ``seed`` defaults to the run's."""
  hyperparameters = dict(config.hyperparameters)
  defaults = _registry.optimizer_spec(registry_name(config.optimizer)).defaults
  if "seed" in defaults:
    hyperparameters.setdefault("seed", config.seed)
  return hyperparameters


def masked_loss(logits, labels, mask, task_type: str):
  """Masked BCE-with-logits (classification) or RMSE (regression).

  Only entries with ``mask`` True count (missing labels and padding graphs
  are False); a batch without any gives 0 with zero gradient.
  """
  mask = mask.astype(logits.dtype)
  count = jnp.maximum(jnp.sum(mask), 1.0)
  if task_type == "classification":
    losses = optax.sigmoid_binary_cross_entropy(logits, labels)
    return jnp.sum(losses * mask) / count
  if task_type == "regression":
    mse = jnp.sum(jnp.square(logits - labels) * mask) / count
    # sqrt has an infinite slope at 0: keep the gradient finite there.
    safe = jnp.where(mse > 0, mse, 1.0)
    return jnp.where(mse > 0, jnp.sqrt(safe), 0.0)
  raise ValueError(
    f"task_type must be classification or regression: {task_type}"
  )


def _numpy_loss(logits, labels, mask, task_type: str) -> float:
  """``masked_loss`` on the host, for evaluation (no compilation per size)."""
  count = max(int(mask.sum()), 1)
  if task_type == "classification":
    bce = (
      np.maximum(logits, 0)
      - logits * labels
      + np.log1p(np.exp(-np.abs(logits)))
    )
    return float((bce * mask).sum() / count)
  return float(np.sqrt((np.square(logits - labels) * mask).sum() / count))


def make_loss_fn(model, task_type: str):
  """``loss_fn(params, batch, max_atoms)`` of one batch."""

  def loss_fn(params, batch, max_atoms):
    logits = model.apply({"params": params}, batch.graphs, max_atoms)
    return masked_loss(logits, batch.labels, batch.label_mask, task_type)

  return loss_fn


def make_train_step(model, tx, task_type: str, compiler_options=None):
  """One jitted step for every optimizer: ``(params, opt_state, batch)``.

  ``max_atoms`` is the static block size of the batch (:func:`block_size`);
  the step compiles once per padding budget and block size. ``grad_fn``
  differentiates the same batch's loss, for the optimizers that take a
  second gradient.
  """
  loss_fn = make_loss_fn(model, task_type)
  value_and_grad = jax.value_and_grad(loss_fn)
  grad = jax.grad(loss_fn)

  @functools.partial(
    jax.jit, static_argnames="max_atoms", compiler_options=compiler_options
  )
  def train_step(params, opt_state, batch, max_atoms):
    loss, grads = value_and_grad(params, batch, max_atoms)
    updates, opt_state = tx.update(
      grads,
      opt_state,
      params,
      grad_fn=lambda p: grad(p, batch, max_atoms),
    )
    return optax.apply_updates(params, updates), opt_state, loss

  return train_step


def make_predict(model, compiler_options=None):
  """Jitted ``predict(params, graphs, max_atoms)`` -> logits ``[G, T]``."""

  @functools.partial(
    jax.jit, static_argnames="max_atoms", compiler_options=compiler_options
  )
  def predict(params, graphs, max_atoms):
    return model.apply({"params": params}, graphs, max_atoms)

  return predict


def roc_auc(labels, mask, scores) -> float:
  """Mean ROC-AUC over tasks; tasks with one class in ``labels`` skipped.

  Returns NaN when no task has both classes.

  Examples:
    >>> y = np.array([[0, 1], [1, 1], [0, 1]], np.float32)
    >>> m = np.ones_like(y, bool)
    >>> roc_auc(y, m, np.array([[0.1, 0], [0.9, 0], [0.2, 0]]))
    1.0
  """
  aucs = []
  for t in range(labels.shape[1]):
    y, s = labels[mask[:, t], t], scores[mask[:, t], t]
    if len(np.unique(y)) == 2:
      aucs.append(sk_metrics.roc_auc_score(y, s))
  return float(np.mean(aucs)) if aucs else math.nan


def rmse(labels, mask, predictions) -> float:
  """Root mean squared error over the present labels (all tasks)."""
  return float(
    np.sqrt(sk_metrics.mean_squared_error(labels[mask], predictions[mask]))
  )


METRICS = {"roc_auc": (roc_auc, "max"), "rmse": (rmse, "min")}


def evaluate(
  predict,
  params,
  batches: Iterable[input_pipeline.GraphBatch],
  task_type: str,
  scaler: input_pipeline.TargetScaler | None,
  blocks: Callable[[input_pipeline.GraphBatch], int] = block_size,
) -> dict[str, float]:
  """Loss and the task's metric (ROC-AUC, or RMSE in original units).

  ``params`` are the clean weights (``graphsam_optax.eval_params``);
  ``blocks`` gives each batch's static block size.
  """
  logits, labels, masks = [], [], []
  for batch in batches:
    out = predict(params, batch.graphs, blocks(batch))
    logits.append(np.asarray(out)[batch.graph_mask])
    labels.append(batch.labels[batch.graph_mask])
    masks.append(batch.label_mask[batch.graph_mask])
  logits, labels, masks = map(np.concatenate, (logits, labels, masks))
  loss = _numpy_loss(logits.astype(np.float64), labels, masks, task_type)
  if task_type == "classification":
    return {"loss": loss, "roc_auc": roc_auc(labels, masks, logits)}
  if scaler is not None:
    logits = scaler.inverse_transform(logits)
    labels = scaler.inverse_transform(labels)
  return {"loss": loss, "rmse": rmse(labels, masks, logits)}


def prepare_data(
  config: default.Config, data_dir=None, cache_dir=None
) -> input_pipeline.PreparedData:
  """Loads and splits ``config.dataset`` or ``config.data_file``; subsets.

  ``max_molecule_atoms`` and ``max_molecules`` shrink the split (the latter
  samples each part with ``config.seed``; the scaler is refitted on what
  remains); ``fixed_shapes`` replaces the padding budgets by the single one
  that fits any batch of the kept molecules.
  """
  dataset = config.dataset
  if config.data_file is not None:
    dataset = datasets.csv_spec(
      config.data_file,
      config.smiles_column,
      config.target_columns or None,
      config.task_type,
    )
  data = input_pipeline.prepare_data(
    dataset,
    batch_size=config.batch_size,
    split=config.split,
    sizes=config.split_sizes,
    seed=config.seed,
    split_file=config.split_file,
    data_dir=data_dir,
    cache_dir=cache_dir,
    progress=False,
  )
  n_atoms = data.dataset.n_atoms
  parts = list(data.split)
  if config.max_molecule_atoms is not None:
    parts = [p[n_atoms[p] <= config.max_molecule_atoms] for p in parts]
  if config.max_molecules is not None:
    rng = np.random.default_rng(config.seed)
    parts = [
      np.sort(rng.choice(p, config.max_molecules, replace=False))
      if len(p) > config.max_molecules
      else p
      for p in parts
    ]
  split = type(data.split)(*parts)
  scaler = data.scaler
  if scaler is not None and split is not data.split:
    scaler = input_pipeline.TargetScaler.fit(data.dataset.labels[split.train])
  budgets = data.budgets
  if config.fixed_shapes:
    kept = np.sort(n_atoms[np.concatenate(parts)].astype(np.int64))[::-1]
    top = kept[: config.batch_size]
    budgets = (
      input_pipeline.GraphsTupleSize(
        -(-(int(top.sum()) + 1) // 64) * 64,
        -(-int((top * top).sum()) // 512) * 512,
        config.batch_size + 1,
      ),
    )
  return dataclasses.replace(data, split=split, scaler=scaler, budgets=budgets)


class Functions(NamedTuple):
  """The jitted functions of one model and optimizer (:func:`build`).

  Attributes:
    model: the CoMPT module.
    tx: the optimizer.
    init: ``init(seed, graphs, max_atoms)`` -> params (:func:`make_init`).
    init_state: ``tx.init`` jitted.
    train_step: :func:`make_train_step`.
    predict: :func:`make_predict`.
    eval_params: ``graphsam_optax.eval_params`` jitted.
  """

  model: model_lib.CoMPT
  tx: optax.GradientTransformationExtraArgs
  init: Callable
  init_state: Callable
  train_step: Callable
  predict: Callable
  eval_params: Callable


_BUILT: dict = {}


def build(
  config: default.Config, num_tasks: int, task_type: str, steps_per_epoch: int
) -> Functions:
  """The model, optimizer and jitted functions of a configuration, cached.

  Runs in one process with the same model and optimizer (seeds, resumed
  runs, tests) reuse the jitted functions and hence their compilations.
  """
  tx_fields = (
    "optimizer",
    "init_lr",
    "max_lr",
    "final_lr",
    "warmup_epochs",
    "lr_decay_epochs",
    "adam_b1",
    "adam_b2",
    "adam_eps",
  )
  model = create_model(config, num_tasks)
  spec = _registry.optimizer_spec(registry_name(config.optimizer))
  key = (
    model,
    task_type,
    steps_per_epoch,
    tuple(getattr(config, f) for f in tx_fields),
    config.epochs if "total_steps" in spec.needs else None,
    repr(sorted(_optimizer_hyperparameters(config).items())),
    config.fast_compile,
  )
  if key not in _BUILT:
    if len(_BUILT) >= 8:
      _BUILT.clear()
    tx = create_optimizer(config, steps_per_epoch)
    options = FAST_COMPILE if config.fast_compile else None
    _BUILT[key] = Functions(
      model=model,
      tx=tx,
      init=make_init(model, options),
      init_state=jax.jit(tx.init),
      train_step=make_train_step(model, tx, task_type, options),
      predict=make_predict(model, options),
      eval_params=jax.jit(graphsam_optax.eval_params),
    )
  return _BUILT[key]


class _Checkpoints:
  """The run's orbax checkpoints: the state after each finished epoch."""

  def __init__(self, directory: Path):
    self.directory = directory
    try:
      self.manager = ocp.CheckpointManager(
        directory.absolute(),
        options=ocp.CheckpointManagerOptions(
          max_to_keep=1, enable_async_checkpointing=False
        ),
      )
    except Exception as e:  # noqa: BLE001 - orbax raises many types
      raise run_dir.checkpoint_error(directory, e) from e

  def restore(self, target: dict) -> dict | None:
    """The latest state, or None; raises CheckpointError if unreadable."""
    try:
      step = self.manager.latest_step()
      if step is None:
        return None
      abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
      return self.manager.restore(step, args=ocp.args.StandardRestore(abstract))
    except Exception as e:  # noqa: BLE001 - orbax and TensorStore errors
      raise run_dir.checkpoint_error(self.directory, e) from e

  def save(self, epoch: int, state: dict) -> None:
    self.manager.save(epoch, args=ocp.args.StandardSave(state))
    self.manager.wait_until_finished()


def _write_history(workdir: Path, history: Sequence[dict]) -> None:
  run_dir.write_text(
    workdir / "metrics.json", json.dumps(list(history), indent=1)
  )
  if history:
    run_dir.write_csv(workdir / "metrics.csv", history, list(history[0]))


def _config_record(config: default.Config) -> dict:
  record = dataclasses.asdict(config)
  record["hyperparameters"] = {
    k: v if isinstance(v, (int, float, bool, str)) else repr(v)
    for k, v in config.hyperparameters.items()
  }
  return record


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
  row per epoch), ``checkpoints/`` and ``summary.json``. A run restarted on a
  ``workdir`` that holds checkpoints of the same config resumes after the
  last finished epoch.

  Args:
    config: the experiment.
    workdir: output directory.
    data_dir: directory of the MoleculeNet CSVs (else ``GRAPHSAM_DATA_DIR``).
    cache_dir: cache for downloads and featurized molecules.
    progress: show a tqdm bar per epoch (loss, graphs/s).
    log: receives one line per epoch.
    on_epoch_end: called with the epoch number after its checkpoint.
    num_devices: devices the training batches are split over (data
      parallelism, :mod:`models.parallel`); None uses all. Every step sees the
      same molecules as on one device, so the run is the same up to float
      rounding. Evaluation runs on the replicated weights.

  Returns:
    The summary (also written to ``summary.json``).
  """
  start = time.perf_counter()
  workdir = Path(workdir)
  needs = _registry.optimizer_spec(registry_name(config.optimizer)).needs
  record, notes = run_dir.check(
    workdir, _config_record(config), fixed_epochs="total_steps" in needs
  )
  data = prepare_data(config, data_dir, cache_dir)
  for line in notes + run_dir.start(workdir, record, data):
    log(line)
  spec = data.dataset.spec
  metric = spec.metric
  better = (
    (lambda a, b: a > b)
    if METRICS[metric][1] == "max"
    else (lambda a, b: a < b)
  )
  steps_per_epoch = data.steps_per_epoch(config.drop_last)
  if steps_per_epoch < 1:
    raise ValueError(
      f"{len(data.split.train)} training molecules make no batch of "
      f"{config.batch_size}"
    )
  fns = build(config, spec.num_tasks, spec.task_type, steps_per_epoch)
  fixed = fixed_block_size(config, data)
  blocks = functools.partial(block_size, fixed=fixed)
  first = next(data.train_batches(0, config.seed, config.drop_last))
  params = fns.init(config.seed, first.graphs, blocks(first))
  opt_state = fns.init_state(params)
  # models.parallel imports this module: import it here, not at the top.
  from models import parallel

  mesh = parallel.make_mesh(num_devices)
  if mesh.size > 1:
    train_step = parallel.make_parallel_train_step(
      fns.model,
      fns.tx,
      spec.task_type,
      mesh,
      FAST_COMPILE if config.fast_compile else None,
    )
    epoch_batches = parallel.make_train_batches(data, mesh, fixed)
  else:
    train_step = fns.train_step

    def epoch_batches(epoch, seed, drop_last):
      for batch in data.train_batches(epoch, seed, drop_last):
        yield batch, blocks(batch), int(batch.graph_mask.sum())

  state = {
    "params": params,
    "opt_state": opt_state,
    "best_params": params,
    "epoch": np.asarray(0, np.int32),
    "best_epoch": np.asarray(0, np.int32),
    "best_metric": np.asarray(np.nan, np.float64),
  }
  checkpoints = _Checkpoints(workdir / "checkpoints")
  restored = checkpoints.restore(state)
  history = []
  if restored is not None:
    state = restored
    done = int(state["epoch"])
    history = run_dir.read_history(workdir, done)
    log(f"resuming {workdir} after epoch {done}")
  # Committed to the device(s) whether fresh or restored, so that the jitted
  # step sees the same input shardings in every run (no recompilation).
  if mesh.size > 1:
    state = parallel.replicate(state, mesh)
  else:
    state = jax.device_put(state, jax.devices()[0])
  params, opt_state = state["params"], state["opt_state"]

  num_params = model_lib.count_params(params)
  epoch = int(state["epoch"])
  while epoch < config.epochs and epoch - int(state["best_epoch"]) < (
    config.patience
  ):
    epoch += 1
    losses, graphs, train_time = [], 0, 0.0
    bar = tqdm.tqdm(
      total=steps_per_epoch,
      desc=f"epoch {epoch}",
      disable=not progress,
      leave=False,
    )
    for batch, max_atoms, count in epoch_batches(
      epoch - 1, config.seed, config.drop_last
    ):
      tic = time.perf_counter()
      params, opt_state, loss = train_step(params, opt_state, batch, max_atoms)
      losses.append(float(loss))
      train_time += time.perf_counter() - tic
      graphs += count
      bar.update()
      bar.set_postfix(
        loss=f"{losses[-1]:.4f}", graphs_s=f"{graphs / train_time:.0f}"
      )
    bar.close()
    clean = fns.eval_params(opt_state, params)
    _check_losses(epoch, losses, clean)
    valid = evaluate(
      fns.predict,
      clean,
      data.eval_batches("valid"),
      spec.task_type,
      data.scaler,
      blocks,
    )
    if math.isnan(float(state["best_metric"])) or better(
      valid[metric], float(state["best_metric"])
    ):
      state["best_metric"] = np.asarray(valid[metric], np.float64)
      state["best_epoch"] = np.asarray(epoch, np.int32)
      state["best_params"] = clean
    row = {
      "epoch": epoch,
      "train_loss": float(np.mean(losses)),
      "valid_loss": valid["loss"],
      f"valid_{metric}": valid[metric],
      "best_epoch": int(state["best_epoch"]),
      f"best_valid_{metric}": float(state["best_metric"]),
      "train_seconds": train_time,
      "graphs_per_s": graphs / train_time,
    }
    history.append(row)
    state.update(
      params=params, opt_state=opt_state, epoch=np.asarray(epoch, np.int32)
    )
    checkpoints.save(epoch, state)
    _write_history(workdir, history)
    log(
      f"epoch {epoch}: train loss {row['train_loss']:.4f}, valid {metric} "
      f"{valid[metric]:.4f} (best {float(state['best_metric']):.4f} at "
      f"{int(state['best_epoch'])}), {row['graphs_per_s']:.0f} graphs/s"
    )
    if on_epoch_end is not None:
      on_epoch_end(epoch)

  test = evaluate(
    fns.predict,
    state["best_params"],
    data.eval_batches("test"),
    spec.task_type,
    data.scaler,
    blocks,
  )
  rates = [row["graphs_per_s"] for row in history]
  summary = {
    "dataset": spec.name,
    "optimizer": config.optimizer,
    "metric": metric,
    f"test_{metric}": test[metric],
    "test_loss": test["loss"],
    f"best_valid_{metric}": float(state["best_metric"]),
    "best_epoch": int(state["best_epoch"]),
    "epochs": epoch,
    "wall_seconds": time.perf_counter() - start,
    # The median epoch: compilation makes the first ones slower.
    "graphs_per_s": float(np.median(rates)) if rates else math.nan,
    "num_params": num_params,
    "seed": config.seed,
    "workdir": str(workdir),
  }
  run_dir.save_model(
    workdir, data, state["best_params"], int(state["best_epoch"])
  )
  run_dir.write_text(workdir / "summary.json", json.dumps(summary, indent=1))
  return summary
