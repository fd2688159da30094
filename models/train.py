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

What a compiled step depends on, and what it does not. Every float
hyperparameter (learning-rate schedule, Adam's, ρ, β, ...) reaches the step
as an array (:func:`float_hyperparameters`): the optimizer is built inside
the step from them, so every run of one model configuration and optimizer
family (name and integer/boolean hyperparameters) shares one compiled step,
and a sweep over ρ compiles once. Batches come in at most two shapes per
dataset (``models.input_pipeline.padding_budgets``), so a run compiles at
most two train steps, the second only if a batch needs it. The step sums the
loss on the device; the loop reads it once per epoch, so building the next
batch on the host overlaps the step.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import json
import math
import time
import warnings
from collections import OrderedDict
from collections.abc import Callable
from collections.abc import Iterable
from collections.abc import Iterator
from collections.abc import Mapping
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
from models import _allocator
from models import datasets
from models import featurization
from models import input_pipeline
from models import model as model_lib
from models import parallel
from models import run_dir
from models import splits
from models.configs import default

OPTIMIZERS = ("adam",) + tuple(
  name for name in graphsam_optax.optimizer_names() if name != "base"
)

# The Config fields of the learning-rate schedule and of Adam: floats that
# reach the compiled step as arrays, like the optimizer's own.
SCHEDULE_FIELDS = (
  "init_lr",
  "max_lr",
  "final_lr",
  "warmup_epochs",
  "lr_decay_epochs",
  "adam_b1",
  "adam_b2",
  "adam_eps",
)


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


def learning_rate_schedule(
  config: default.Config,
  steps_per_epoch: int,
  values: Mapping[str, Any] | None = None,
) -> optax.Schedule:
  """The paper's per-step learning rate.

  Linear warm-up from ``init_lr`` to ``max_lr`` over ``warmup_epochs``, then
  exponential decay reaching ``final_lr`` at ``lr_decay_epochs``, constant
  afterwards (the ``NoamLR`` of the authors' code). The formulas are optax's
  ``linear_schedule`` and ``exponential_decay`` joined at the warm-up's end,
  written so that every value may be an array (a tracer inside a jitted
  step).

  Args:
    config: the run; its schedule fields are the defaults of ``values``.
    steps_per_epoch: optimizer steps per epoch.
    values: overrides of the schedule fields (``SCHEDULE_FIELDS``), floats
      or arrays.

  Examples:
    >>> from models.configs import default
    >>> schedule = learning_rate_schedule(default.get_config("bbbp"), 10)
    >>> [f"{float(schedule(s)):.1e}" for s in (0, 10, 20, 300, 1000)]
    ['1.0e-04', '5.5e-04', '1.0e-03', '1.0e-04', '1.0e-04']
  """
  v = {f: getattr(config, f) for f in SCHEDULE_FIELDS}
  v.update(values or {})
  warmup = jnp.maximum(1.0, jnp.round(v["warmup_epochs"] * steps_per_epoch))
  decay = jnp.maximum(
    1.0, jnp.round(v["lr_decay_epochs"] * steps_per_epoch) - warmup
  )
  rate = v["final_lr"] / v["max_lr"]

  def schedule(count):
    ramp = 1 - jnp.clip(count, 0, warmup) / warmup
    rising = (v["init_lr"] - v["max_lr"]) * ramp + v["max_lr"]
    after = count - warmup
    falling = jnp.where(
      after <= 0, v["max_lr"], v["max_lr"] * jnp.power(rate, after / decay)
    )
    falling = jnp.where(
      rate < 1,
      jnp.maximum(falling, v["final_lr"]),
      jnp.minimum(falling, v["final_lr"]),
    )
    return jnp.where(count < warmup, rising, falling)

  return schedule


def registry_name(optimizer: str) -> str:
  """``"adam"`` is the registry's ``"base"`` (Adam alone)."""
  return "base" if optimizer == "adam" else optimizer


def optimizer_hyperparameters(config: default.Config) -> dict[str, Any]:
  """The optimizer's hyperparameters: registry defaults, then the config's.

  A method's ``seed`` defaults to the run's.
  """
  if config.optimizer not in OPTIMIZERS:
    raise ValueError(
      f"optimizer={config.optimizer!r} is unknown; choose one of "
      f"{', '.join(OPTIMIZERS)}"
    )
  defaults = graphsam_optax.optimizer_spec(
    registry_name(config.optimizer)
  ).defaults
  merged = {**defaults, **config.hyperparameters}
  if "seed" in defaults and "seed" not in config.hyperparameters:
    merged["seed"] = config.seed
  return merged


def _is_float_hyperparameter(name: str, default: Any, value: Any) -> bool:
  del name
  return (
    isinstance(default, float)
    and isinstance(value, (int, float))
    and not isinstance(value, bool)
  )


def float_hyperparameters(config: default.Config) -> dict[str, float]:
  """Every float the optimizer depends on, by name: schedule, Adam, method.

  These reach the compiled step as arrays (see :func:`make_train_step`); the
  rest of :func:`optimizer_hyperparameters` (integers, booleans, schedules)
  is part of what the step is compiled for.
  """
  defaults = graphsam_optax.optimizer_spec(
    registry_name(config.optimizer)
  ).defaults
  out = {f: float(getattr(config, f)) for f in SCHEDULE_FIELDS}
  for name, value in optimizer_hyperparameters(config).items():
    if _is_float_hyperparameter(name, defaults.get(name), value):
      out[name] = float(value)
  return out


def hyperparameter_values(config: default.Config) -> dict[str, np.float32]:
  """:func:`float_hyperparameters` as float32 scalars, the step's ``values``
  argument (place them with ``Engine.place`` before training)."""
  return {k: np.float32(v) for k, v in float_hyperparameters(config).items()}


def create_optimizer(
  config: default.Config,
  steps_per_epoch: int,
  values: Mapping[str, Any] | None = None,
) -> optax.GradientTransformationExtraArgs:
  """``config.optimizer`` from the registry around the paper's Adam.

  Args:
    config: the run.
    steps_per_epoch: optimizer steps per epoch.
    values: overrides of :func:`float_hyperparameters` (arrays inside a
      jitted step); None takes the config's.

  Raises:
    ValueError: on an unknown optimizer or hyperparameter, or an invalid
      value (the registry's message names it).
  """
  hyperparameters = optimizer_hyperparameters(config)
  v = {**float_hyperparameters(config), **(values or {})}
  base = optax.adam(
    learning_rate_schedule(config, steps_per_epoch, v),
    b1=v["adam_b1"],
    b2=v["adam_b2"],
    eps=v["adam_eps"],
  )
  hyperparameters.update(
    {k: v[k] for k in hyperparameters if k in v and k not in SCHEDULE_FIELDS}
  )
  return graphsam_optax.get_optimizer(
    registry_name(config.optimizer),
    base,
    steps_per_epoch=steps_per_epoch,
    total_steps=steps_per_epoch * config.epochs,
    **hyperparameters,
  )


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
    # sqrt has an infinite slope at 0: keep the gradient finite there (and
    # let a NaN through, so that a diverging run is seen).
    safe = jnp.where(mse == 0, 1.0, mse)
    return jnp.where(mse == 0, 0.0, jnp.sqrt(safe))
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
  """``loss_fn(params, batch, blocks)`` of one batch."""

  def loss_fn(params, batch, blocks):
    logits = model.apply({"params": params}, batch.graphs, blocks)
    return masked_loss(logits, batch.labels, batch.label_mask, task_type)

  return loss_fn


class EpochTotals(NamedTuple):
  """What the train step accumulates on the device over an epoch.

  Attributes:
    loss_sum: f32[] sum of the step losses.
    steps: i32[] steps taken.
    first_nonfinite: i32[] the first step (0-based) whose loss was not
      finite, -1 while none was.
    nonfinite_loss: f32[] that step's loss.
  """

  loss_sum: jax.Array
  steps: jax.Array
  first_nonfinite: jax.Array
  nonfinite_loss: jax.Array

  @classmethod
  def zeros(cls) -> EpochTotals:
    return cls(np.float32(0), np.int32(0), np.int32(-1), np.float32(0))

  def add(self, loss) -> EpochTotals:
    bad = ~jnp.isfinite(loss) & (self.first_nonfinite < 0)
    return EpochTotals(
      self.loss_sum + loss,
      self.steps + 1,
      jnp.where(bad, self.steps, self.first_nonfinite),
      jnp.where(bad, loss, self.nonfinite_loss),
    )


def optimizer_step(make_tx, value_and_grad, params, opt_state, totals, values):
  """One step of the optimizer contract; shared by every device layout.

  ``make_tx(values)`` builds the optimizer from the float hyperparameters;
  ``value_and_grad(params)`` gives the batch's loss and gradient.
  """
  tx = make_tx(values)
  loss, grads = value_and_grad(params)
  updates, opt_state = tx.update(
    grads,
    opt_state,
    params,
    grad_fn=lambda p: value_and_grad(p)[1],
  )
  return optax.apply_updates(params, updates), opt_state, totals.add(loss)


def make_train_step(model, task_type: str, make_tx, compiler_options=None):
  """One jitted step for every optimizer of a family.

  Returns ``train_step(params, opt_state, totals, batch, values, blocks)``
  -> ``(params, opt_state, totals)``: ``values`` are the float
  hyperparameters (:func:`float_hyperparameters`, as arrays), ``totals``
  the :class:`EpochTotals` so far, ``blocks`` the batch's static attention
  layout (``PreparedData.blocks_of``). ``grad_fn`` differentiates the same
  batch's loss, for the optimizers that take a second gradient.
  """
  loss_fn = make_loss_fn(model, task_type)

  @functools.partial(
    jax.jit, static_argnames="blocks", compiler_options=compiler_options
  )
  def train_step(params, opt_state, totals, batch, values, blocks):
    value_and_grad = jax.value_and_grad(
      functools.partial(loss_fn, batch=batch, blocks=blocks)
    )
    return optimizer_step(
      make_tx, value_and_grad, params, opt_state, totals, values
    )

  return train_step


def make_init(model, make_tx, compiler_options=None):
  """Jitted ``init(seed, graphs, values, blocks)`` -> (params, opt_state)."""

  @functools.partial(
    jax.jit, static_argnames="blocks", compiler_options=compiler_options
  )
  def init(seed, graphs, values, blocks):
    params = model.init(jax.random.key(seed), graphs, blocks)["params"]
    return params, make_tx(values).init(params)

  return init


def make_predict(model, compiler_options=None):
  """Jitted ``predict(params, graphs, blocks)`` -> logits ``[G, T]``."""

  @functools.partial(
    jax.jit, static_argnames="blocks", compiler_options=compiler_options
  )
  def predict(params, graphs, blocks):
    return model.apply({"params": params}, graphs, blocks)

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
  blocks_of: Callable[[input_pipeline.GraphBatch], tuple[int, int]],
) -> dict[str, float]:
  """Loss and the task's metric (ROC-AUC, or RMSE in original units).

  ``params`` are the clean weights (``graphsam_optax.eval_params``);
  ``blocks_of`` gives each batch's static attention layout
  (``PreparedData.blocks_of``).
  """
  outputs = predict_batches(predict, params, batches, blocks_of)
  return metrics_of(*outputs, task_type, scaler)


def predict_batches(
  predict,
  params,
  batches: Iterable[input_pipeline.GraphBatch],
  blocks_of: Callable[[input_pipeline.GraphBatch], tuple[int, int]],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Logits, labels and label masks of the batches' molecules, in order
  (labels standardized as the batches hold them)."""
  logits, labels, masks = [], [], []
  for batch in batches:
    out = predict(params, batch.graphs, blocks_of(batch))
    logits.append(np.asarray(out)[batch.graph_mask])
    labels.append(batch.labels[batch.graph_mask])
    masks.append(batch.label_mask[batch.graph_mask])
  return tuple(map(np.concatenate, (logits, labels, masks)))


def metrics_of(
  logits: np.ndarray,
  labels: np.ndarray,
  masks: np.ndarray,
  task_type: str,
  scaler: input_pipeline.TargetScaler | None,
) -> dict[str, float]:
  """Loss and the task's metric of :func:`predict_batches`' outputs."""
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
  samples each part with ``config.seed``; the scaler is refitted to what
  remains, the batch shapes to every molecule of at most
  ``max_molecule_atoms`` atoms, whatever the seed); ``fixed_shapes`` keeps
  only the shape that holds any batch (one compiled step, slower per step).
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
  # What the caps left out, then whether the parts can train and test.
  note = splits.describe_subset(
    data.split, split, n_atoms, config.max_molecule_atoms, config.max_molecules
  )
  if note:
    warnings.warn(f"{data.dataset.name}: {note}", stacklevel=2)
  fixed = config.split_file is not None or config.split == "fixed"
  splits.check_split(
    split,
    config.batch_size,
    config.drop_last,
    None if fixed else config.split_sizes,
  )
  scaler, budgets = data.scaler, data.budgets
  if split is not data.split and scaler is not None:
    scaler = input_pipeline.TargetScaler.fit(data.dataset.labels[split.train])
  if config.max_molecule_atoms is not None:
    # Fitted to every molecule the filter keeps, not to the sampled parts:
    # the shapes, and so the compiled steps, do not depend on the seed.
    kept = n_atoms[n_atoms <= config.max_molecule_atoms]
    budgets = input_pipeline.padding_budgets(kept, config.batch_size)
  if config.fixed_shapes:
    budgets = budgets[-1:]
  return dataclasses.replace(data, split=split, scaler=scaler, budgets=budgets)


class Functions(NamedTuple):
  """The jitted functions of one model and optimizer family (:func:`build`).

  Attributes:
    model: the CoMPT module.
    make_tx: ``make_tx(values)`` builds the optimizer from the float
      hyperparameters (:func:`float_hyperparameters`; arrays or floats).
    init: :func:`make_init`.
    train_step: :func:`make_train_step`.
    predict: :func:`make_predict`.
    eval_params: ``graphsam_optax.eval_params`` jitted.
    compiler_options: the options all of them compile with.
    train_steps: the compiled train steps, by batch shape
      (:class:`CompiledSteps`), shared by the family's runs.
    predicts: the compiled predictions, shared by the families of a model.
    parallel_steps: the data-parallel train steps, by mesh.
  """

  model: model_lib.CoMPT
  make_tx: Callable
  init: Callable
  train_step: Callable
  predict: Callable
  eval_params: Callable
  compiler_options: Mapping[str, Any] | None
  train_steps: CompiledSteps
  predicts: CompiledSteps
  parallel_steps: dict


# Functions of the most recently used families; evicting one drops its
# jitted functions and with them their compiled executables.
_BUILT: OrderedDict = OrderedDict()
MAX_BUILT = 4
# The evaluation of each model, shared by its families.
_PREDICTS: dict = {}


def family_key(
  config: default.Config, num_tasks: int, task_type: str, steps_per_epoch: int
) -> tuple:
  """What a run's compiled functions depend on: the model, the task, the
  optimizer's name and non-float hyperparameters, the steps per epoch
  (anchors, ρ decay), the run length where the method needs it, and the
  compiler options. Float hyperparameters are not part of it."""
  floats = float_hyperparameters(config)
  statics = sorted(
    (k, repr(v))
    for k, v in optimizer_hyperparameters(config).items()
    if k not in floats
  )
  spec = graphsam_optax.optimizer_spec(registry_name(config.optimizer))
  return (
    create_model(config, num_tasks),
    task_type,
    config.optimizer,
    tuple(statics),
    steps_per_epoch,
    config.epochs if "total_steps" in spec.needs else None,
    config.fast_compile,
  )


def build(
  config: default.Config, num_tasks: int, task_type: str, steps_per_epoch: int
) -> Functions:
  """The model, optimizer and jitted functions of a run's family, cached.

  Runs in one process that share :func:`family_key` (seeds, other ρ, β or
  learning rates, resumed runs, tests) share these functions and hence their
  compilations; the least recently used family beyond ``MAX_BUILT`` is
  dropped.
  """
  key = family_key(config, num_tasks, task_type, steps_per_epoch)
  if key in _BUILT:
    _BUILT.move_to_end(key)
    return _BUILT[key]
  model = create_model(config, num_tasks)
  options = FAST_COMPILE if config.fast_compile else None

  def make_tx(values):
    return create_optimizer(config, steps_per_epoch, values)

  train_step = make_train_step(model, task_type, make_tx, options)
  # Prediction does not depend on the optimizer: one per model.
  predict_key = (model, config.fast_compile)
  if predict_key not in _PREDICTS:
    predict = make_predict(model, options)
    _PREDICTS[predict_key] = predict, CompiledSteps(predict, "evaluation")
  predict, predicts = _PREDICTS[predict_key]
  _BUILT[key] = Functions(
    model=model,
    make_tx=make_tx,
    init=make_init(model, make_tx, options),
    train_step=train_step,
    predict=predict,
    eval_params=jax.jit(graphsam_optax.eval_params),
    compiler_options=options,
    train_steps=CompiledSteps(train_step, "train step"),
    predicts=predicts,
    parallel_steps={},
  )
  while len(_BUILT) > MAX_BUILT:
    _BUILT.popitem(last=False)
  return _BUILT[key]


# Compilations started ahead of need run here, one at a time, beside the
# training loop (XLA releases the GIL while it compiles).
_COMPILER = concurrent.futures.ThreadPoolExecutor(
  max_workers=1, thread_name_prefix="compile"
)


class CompiledSteps:
  """The executables of one jitted function, compiled ahead of use.

  ``get(*args, blocks=...)`` returns the executable for the arguments'
  shapes, compiling it the first time (and logging how long that took);
  ``prefetch(*args, blocks=...)`` starts that compilation in a background
  thread (the arguments may be ``jax.ShapeDtypeStruct``s), so that a later
  ``get`` only waits for what is left of it. Later runs of the same family
  reuse every executable. ``compiled`` and ``seconds`` count the
  compilations and their time, ``waited`` the seconds ``get`` spent
  waiting for one; ``log`` receives the lines.
  """

  def __init__(self, jitted, what: str):
    self.jitted, self.what = jitted, what
    self.executables: dict = {}
    self.compiled, self.seconds, self.waited = 0, 0.0, 0.0
    self.log: Callable[[str], Any] = print

  @staticmethod
  def _key(args, blocks) -> tuple:
    leaves, treedef = jax.tree.flatten(args)
    return treedef, tuple((np.shape(x), x.dtype) for x in leaves), blocks

  def _compile(self, args, blocks):
    tic = time.perf_counter()
    executable = self.jitted.lower(*args, blocks=blocks).compile()
    seconds = time.perf_counter() - tic
    self.compiled += 1
    self.seconds += seconds
    self.log(
      f"compiled the {self.what} for batches of {blocks[0]} blocks of "
      f"{blocks[1]} atoms in {seconds:.1f} s"
    )
    return executable

  def prefetch(self, *args, blocks) -> None:
    key = self._key(args, blocks)
    if key not in self.executables:
      self.executables[key] = _COMPILER.submit(self._compile, args, blocks)

  def get(self, *args, blocks):
    key = self._key(args, blocks)
    executable = self.executables.get(key)
    if isinstance(executable, concurrent.futures.Future) or executable is None:
      tic = time.perf_counter()
      if executable is None:
        self.log(
          f"compiling the {self.what} for batches of {blocks[0]} blocks of "
          f"{blocks[1]} atoms..."
        )
        executable = self._compile(args, blocks)
      else:
        executable = executable.result()
      self.executables[key] = executable
      self.waited += time.perf_counter() - tic
    return executable


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

  def close(self) -> None:
    self.manager.close()


def _elapsed_before(history: Sequence[dict]) -> float:
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


class Engine(NamedTuple):
  """How a run trains: its step, its batches and where its state lives.

  ``epoch_batches(epoch, seed, drop_last)`` yields ``(batch, blocks,
  molecules)`` with the batch already on the device(s); ``place`` puts a
  tree where the step wants its state.
  """

  step: CompiledSteps
  epoch_batches: Callable[..., Iterator[tuple]]
  place: Callable[[Any], Any]
  steps_per_epoch: int
  num_devices: int

  def train_step(self, params, opt_state, totals, batch, values, blocks):
    """One step on ``batch``: ``(params, opt_state, totals)`` after it."""
    step = self.step.get(
      params, opt_state, totals, batch, values, blocks=blocks
    )
    return step(params, opt_state, totals, batch, values)


def make_engine(
  fns: Functions,
  data: input_pipeline.PreparedData,
  config: default.Config,
  task_type: str,
  num_devices: int | None,
  log: Callable[[str], Any],
) -> Engine:
  """The single-device or data-parallel step and batches of a run.

  Args:
    fns: the run's family (:func:`build`); its compiled steps are reused.
    data: the prepared dataset.
    config: the run (``drop_last``, ``fixed_shapes``).
    task_type: ``"classification"`` or ``"regression"``.
    num_devices: devices the batches are split over (:mod:`models.parallel`);
      None uses all, 1 trains on one device.
    log: receives the compilation lines.
  """
  mesh = parallel.make_mesh(num_devices)
  if mesh.size == 1:
    device = mesh.devices.flat[0]

    def epoch_batches(epoch, seed, drop_last):
      for batch in data.train_batches(epoch, seed, drop_last):
        yield (
          jax.device_put(batch, device),
          data.blocks_of(batch),
          int(batch.graph_mask.sum()),
        )

    step = fns.train_steps
    place = functools.partial(jax.device_put, device=device)
  else:
    devices = tuple(d.id for d in mesh.devices.flat)
    if devices not in fns.parallel_steps:
      fns.parallel_steps[devices] = CompiledSteps(
        parallel.make_parallel_train_step(
          fns.model,
          functools.partial(masked_loss, task_type=task_type),
          functools.partial(optimizer_step, fns.make_tx),
          mesh,
          fns.compiler_options,
        ),
        "train step",
      )
    step = fns.parallel_steps[devices]
    epoch_batches = parallel.make_train_batches(
      data, mesh, single_shape=config.fixed_shapes
    )
    place = functools.partial(parallel.replicate, mesh=mesh)
  step.log = fns.predicts.log = log
  return Engine(
    step,
    epoch_batches,
    place,
    data.steps_per_epoch(config.drop_last),
    mesh.size,
  )


def to_host(tree):
  """NumPy copies of a tree's arrays, also of arrays replicated over several
  processes' devices (each process reads its own copy)."""

  def one(x):
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
      return np.asarray(x.addressable_data(0))
    return np.asarray(x)

  return jax.tree.map(one, tree)


def _prefetch(fns, engine, data, config, values, shapes) -> None:
  """Starts compiling, in the background, what the first epoch needs: the
  train step for each shape its batches use, in order, then the evaluation
  for the shapes of the validation batches. Shapes used later compile when
  first needed.

  ``shapes`` are the ``(params, opt_state)`` shapes: the first compilation
  runs while the parameters are initialized, the others while the first
  epoch trains.
  """
  params, opt_state = shapes
  train_shapes = data.shapes_used(
    data.train_indices(0, config.seed, config.drop_last)
  )
  valid_shapes = data.shapes_used(
    input_pipeline.batch_indices(data.split.valid, data.batch_size)
  )

  def example(molecules, budget):
    """A batch of one molecule in ``budget``'s shape: what compiles."""
    return input_pipeline.make_batch(
      data.dataset.graphs,
      data.dataset.labels,
      molecules[:1],
      [budget],
      scaler=data.scaler,
    )

  for budget in train_shapes:
    engine.step.prefetch(
      params,
      opt_state,
      EpochTotals.zeros(),
      example(data.split.train, budget),
      values,
      blocks=budget.blocks,
    )
  for budget in valid_shapes:
    graphs = example(data.split.valid, budget).graphs
    fns.predicts.prefetch(params, graphs, blocks=budget.blocks)


def train_epoch(
  engine: Engine, params, opt_state, values, epoch: int, config, progress: bool
):
  """Trains epoch ``epoch`` (1-based) of ``config``'s batches.

  ``values`` are the float hyperparameters placed by ``engine.place``.
  Returns ``(params, opt_state, totals, molecules, seconds)``: the new
  state, the device-summed :class:`EpochTotals` (read once, at the end), the
  molecules seen and the seconds of stepping (compilation excluded).
  """
  totals, graphs, pending = engine.place(EpochTotals.zeros()), 0, []
  batches = engine.epoch_batches(epoch - 1, config.seed, config.drop_last)
  bar = tqdm.tqdm(
    total=engine.steps_per_epoch,
    desc=f"epoch {epoch}",
    disable=not progress,
    leave=False,
  )
  tic, waited = time.perf_counter(), engine.step.waited
  for batch, blocks, count in batches:
    params, opt_state, totals = engine.train_step(
      params, opt_state, totals, batch, values, blocks
    )
    # Two steps in flight: the host builds the next batch meanwhile.
    pending.append(totals.steps)
    if len(pending) > 2:
      pending.pop(0).block_until_ready()
    graphs += count
    bar.update()
    bar.set_postfix(graphs_s=f"{graphs / (time.perf_counter() - tic):.0f}")
  totals = to_host(totals)
  bar.close()
  seconds = time.perf_counter() - tic - (engine.step.waited - waited)
  return params, opt_state, totals, graphs, seconds


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
  score = METRICS[spec.metric][0]
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
  needs = graphsam_optax.optimizer_spec(registry_name(config.optimizer)).needs
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
  create_optimizer(config, steps_per_epoch)  # validates the values
  fns = build(config, spec.num_tasks, spec.task_type, steps_per_epoch)
  engine = make_engine(fns, data, config, spec.task_type, num_devices, log)
  values = engine.place(hyperparameter_values(config))
  first = next(data.train_batches(0, config.seed, config.drop_last))
  init_args = (config.seed, first.graphs, values)
  blocks = data.blocks_of(first)
  if engine.num_devices == 1:
    shapes = fns.init.eval_shape(*init_args, blocks=blocks)
    _prefetch(fns, engine, data, config, values, shapes)
  params, opt_state = fns.init(*init_args, blocks)
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
  # Wall seconds of the run's earlier invocations up to their last
  # checkpoint, so that a resumed run's wall time covers all of it.
  earlier_seconds = 0.0
  if restored is not None:
    state = restored
    done = int(state["epoch"])
    history = run_dir.read_history(workdir, done)
    earlier_seconds = _elapsed_before(history)
    log(f"resuming {workdir} after epoch {done}")
  # Committed to the device(s) whether fresh or restored, so that the
  # compiled step sees the same input shardings in every run.
  state = engine.place(state)
  params, opt_state = state["params"], state["opt_state"]
  predict = fns.predicts
  compiled = (
    engine.step.compiled,
    engine.step.seconds + predict.seconds,
    predict.compiled,
  )

  def evaluate_part(weights, part):
    return evaluate(
      lambda p, graphs, blocks: predict.get(p, graphs, blocks=blocks)(
        p, graphs
      ),
      weights,
      data.eval_batches(part),
      spec.task_type,
      data.scaler,
      data.blocks_of,
    )

  num_params = model_lib.count_params(params)
  epoch = int(state["epoch"])
  try:
    while epoch < config.epochs and epoch - int(state["best_epoch"]) < (
      config.patience
    ):
      epoch += 1
      params, opt_state, totals, graphs, train_time = train_epoch(
        engine, params, opt_state, values, epoch, config, progress
      )
      if totals.first_nonfinite >= 0:
        raise NonFiniteLossError(
          epoch, int(totals.first_nonfinite) + 1, float(totals.nonfinite_loss)
        )
      clean = fns.eval_params(opt_state, params)
      valid = evaluate_part(clean, "valid")
      if math.isnan(float(state["best_metric"])) or better(
        valid[metric], float(state["best_metric"])
      ):
        state["best_metric"] = np.asarray(valid[metric], np.float64)
        state["best_epoch"] = np.asarray(epoch, np.int32)
        state["best_params"] = clean
      row = {
        "epoch": epoch,
        "train_loss": float(totals.loss_sum / max(int(totals.steps), 1)),
        "valid_loss": valid["loss"],
        f"valid_{metric}": valid[metric],
        "best_epoch": int(state["best_epoch"]),
        f"best_valid_{metric}": float(state["best_metric"]),
        "train_seconds": train_time,
        "graphs_per_s": graphs / train_time,
        "elapsed_seconds": earlier_seconds + time.perf_counter() - start,
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
  finally:
    checkpoints.close()

  outputs = predict_batches(
    lambda p, graphs, blocks: predict.get(p, graphs, blocks=blocks)(p, graphs),
    state["best_params"],
    data.eval_batches("test"),
    data.blocks_of,
  )
  test = metrics_of(*outputs, spec.task_type, data.scaler)
  subsets = test_predictions(workdir, data, *outputs)
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
    "wall_seconds": earlier_seconds + time.perf_counter() - start,
    # The median epoch: compilation makes the first ones slower.
    "graphs_per_s": float(np.median(rates)) if rates else math.nan,
    # Compiled by this run; steps compiled by an earlier run of the family
    # in this process are reused.
    "compiled_train_steps": engine.step.compiled - compiled[0],
    "compiled_evaluations": predict.compiled - compiled[2],
    "compile_seconds": engine.step.seconds + predict.seconds - compiled[1],
    "steps_per_epoch": steps_per_epoch,
    "train_seconds": float(sum(row["train_seconds"] for row in history)),
    "num_params": num_params,
    "seed": config.seed,
    "workdir": str(workdir),
    **({"test_subsets": subsets} if subsets else {}),
  }
  run_dir.save_model(
    workdir, data, state["best_params"], int(state["best_epoch"])
  )
  run_dir.write_text(workdir / "summary.json", json.dumps(summary, indent=1))
  _allocator.release_free_memory()
  return summary
