"""The training engine: jitted steps, their compiled shapes, the epoch loop.

The train step is the plain optax loop of the optimizer contract::

  loss, grads = value_and_grad(loss_fn)(params, batch)
  updates, opt_state = tx.update(grads, opt_state, params,
                                 grad_fn=lambda p: grad(loss_fn)(p, batch))
  params = optax.apply_updates(params, updates)

so Adam costs one pass per step, SAM two, and GraphSAM one plus one per epoch.

What a compiled step depends on, and what it does not. Every float
hyperparameter reaches the step as an array
(``models.optim.float_hyperparameters``): the optimizer is built inside the
step from them, so every run of one model configuration and optimizer family
(name and integer/boolean hyperparameters, :func:`family_key`) shares one
compiled step, and a sweep over ρ compiles once. Batches come in at most two
shapes per dataset (``models.input_pipeline.padding_budgets``), so a run
compiles at most two train steps, the second only if a batch needs it
(:class:`CompiledSteps` compiles them ahead of need, in a background thread).
The step sums the loss on the device; :func:`train_epoch` reads it once per
epoch, so building the next batch on the host overlaps the step. Prediction
has one path, :func:`predict_batches`, for validation, test and
``models.predict``.
"""

from __future__ import annotations

import concurrent.futures
import functools
import time
from collections import OrderedDict
from collections.abc import Callable
from collections.abc import Iterable
from collections.abc import Iterator
from collections.abc import Mapping
from typing import Any
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import tqdm

import graphsam_optax
from models import featurization
from models import input_pipeline
from models import metrics
from models import model as model_lib
from models import optim
from models import parallel
from models.configs import default


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


def make_loss_fn(model, task_type: str):
  """``loss_fn(params, batch, blocks)`` of one batch."""

  def loss_fn(params, batch, blocks):
    logits = model.apply({"params": params}, batch.graphs, blocks)
    return metrics.masked_loss(
      logits, batch.labels, batch.label_mask, task_type
    )

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
  return metrics.metrics_of(*outputs, task_type, scaler)


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


def compiler_options(fast_compile: bool) -> dict | None:
  """XLA's options for a config's ``fast_compile`` (None: the defaults)."""
  return FAST_COMPILE if fast_compile else None


# The evaluation of each model, shared by its families and by
# models.predict.
_PREDICTS: dict = {}


def predict_steps(model: model_lib.CoMPT, fast_compile: bool) -> CompiledSteps:
  """The model's jitted prediction and its compiled shapes, one per model
  (prediction does not depend on the optimizer)."""
  key = (model, fast_compile)
  if key not in _PREDICTS:
    options = compiler_options(fast_compile)
    _PREDICTS[key] = CompiledSteps(make_predict(model, options), "evaluation")
  return _PREDICTS[key]


def family_key(
  config: default.Config, num_tasks: int, task_type: str, steps_per_epoch: int
) -> tuple:
  """What a run's compiled functions depend on: the model, the task, the
  optimizer's name and non-float hyperparameters, the steps per epoch
  (anchors, ρ decay), the run length where the method needs it, and the
  compiler options. Float hyperparameters are not part of it."""
  floats = optim.float_hyperparameters(config)
  statics = sorted(
    (k, repr(v))
    for k, v in optim.optimizer_hyperparameters(config).items()
    if k not in floats
  )
  spec = graphsam_optax.optimizer_spec(config.optimizer)
  return (
    create_model(config, num_tasks),
    task_type,
    config.optimizer,
    tuple(statics),
    steps_per_epoch,
    config.epochs
    if "total_steps" in spec.needs + spec.optional_needs
    else None,
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
  options = compiler_options(config.fast_compile)

  def make_tx(values):
    return optim.create_optimizer(config, steps_per_epoch, values)

  train_step = make_train_step(model, task_type, make_tx, options)
  predicts = predict_steps(model, config.fast_compile)
  _BUILT[key] = Functions(
    model=model,
    make_tx=make_tx,
    init=make_init(model, make_tx, options),
    train_step=train_step,
    predict=predicts.jitted,
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
  waiting for one; each call's ``log`` (the run's) receives its lines.
  """

  def __init__(self, jitted, what: str):
    self.jitted, self.what = jitted, what
    self.executables: dict = {}
    self.compiled, self.seconds, self.waited = 0, 0.0, 0.0

  @staticmethod
  def _key(args, blocks) -> tuple:
    leaves, treedef = jax.tree.flatten(args)
    return treedef, tuple((np.shape(x), x.dtype) for x in leaves), blocks

  def _compile(self, args, blocks, log):
    tic = time.perf_counter()
    executable = self.jitted.lower(*args, blocks=blocks).compile()
    seconds = time.perf_counter() - tic
    self.compiled += 1
    self.seconds += seconds
    log(
      f"compiled the {self.what} for batches of {blocks[0]} blocks of "
      f"{blocks[1]} atoms in {seconds:.1f} s"
    )
    return executable

  def prefetch(self, *args, blocks, log: Callable[[str], Any] = print) -> None:
    key = self._key(args, blocks)
    if key not in self.executables:
      self.executables[key] = _COMPILER.submit(self._compile, args, blocks, log)

  def get(self, *args, blocks, log: Callable[[str], Any] = print):
    key = self._key(args, blocks)
    executable = self.executables.get(key)
    if isinstance(executable, concurrent.futures.Future) or executable is None:
      tic = time.perf_counter()
      if executable is None:
        log(
          f"compiling the {self.what} for batches of {blocks[0]} blocks of "
          f"{blocks[1]} atoms..."
        )
        executable = self._compile(args, blocks, log)
      else:
        executable = executable.result()
      self.executables[key] = executable
      self.waited += time.perf_counter() - tic
    return executable


class CompileCount(NamedTuple):
  """Compilations of a run's steps and evaluations, and their seconds."""

  train_steps: int
  evaluations: int
  seconds: float

  def __sub__(self, other: CompileCount) -> CompileCount:
    return CompileCount(*(a - b for a, b in zip(self, other, strict=True)))


class Engine(NamedTuple):
  """How a run trains and predicts: its steps, batches and state's place.

  ``epoch_batches(epoch, seed, drop_last)`` yields ``(batch, blocks,
  molecules)`` with the batch already on the device(s); ``place`` puts a
  tree where the step wants its state; ``log`` (the run's) receives the
  compilation lines.
  """

  step: CompiledSteps
  predicts: CompiledSteps
  epoch_batches: Callable[..., Iterator[tuple]]
  place: Callable[[Any], Any]
  steps_per_epoch: int
  num_devices: int
  log: Callable[[str], Any]

  def train_step(self, params, opt_state, totals, batch, values, blocks):
    """One step on ``batch``: ``(params, opt_state, totals)`` after it."""
    step = self.step.get(
      params, opt_state, totals, batch, values, blocks=blocks, log=self.log
    )
    return step(params, opt_state, totals, batch, values)

  def predict(self, params, graphs, blocks):
    """The model's outputs on ``graphs`` (compiled once per shape)."""
    compiled = self.predicts.get(params, graphs, blocks=blocks, log=self.log)
    return compiled(params, graphs)

  def compile_count(self) -> CompileCount:
    """What the shared steps have compiled so far, in this process."""
    return CompileCount(
      self.step.compiled,
      self.predicts.compiled,
      self.step.seconds + self.predicts.seconds,
    )


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
          functools.partial(metrics.masked_loss, task_type=task_type),
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
  return Engine(
    step,
    fns.predicts,
    epoch_batches,
    place,
    data.steps_per_epoch(config.drop_last),
    mesh.size,
    log,
  )


def to_host(tree):
  """NumPy copies of a tree's arrays, also of arrays replicated over several
  processes' devices (each process reads its own copy)."""

  def one(x):
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
      return np.asarray(x.addressable_data(0))
    return np.asarray(x)

  return jax.tree.map(one, tree)


def prefetch(engine: Engine, data, config, values, shapes) -> None:
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
      log=engine.log,
    )
  for budget in valid_shapes:
    graphs = example(data.split.valid, budget).graphs
    engine.predicts.prefetch(
      params, graphs, blocks=budget.blocks, log=engine.log
    )


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
