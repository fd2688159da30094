"""Data-parallel training over a device mesh, with JAX's own sharding.

A global batch of ``B`` molecules is split into ``D`` per-device batches of
about ``B / D`` molecules (one per device of a 1-D mesh with axis ``"data"``),
each padded like :func:`models.input_pipeline.make_batch` to ONE common budget
and stacked along a new leading device axis. A padded ``jraph.GraphsTuple``
cannot be cut along its nodes (its sender, receiver and padding-graph layout
would break), so the split happens on molecule indices, before padding.

This module sits below :mod:`models.train`, which passes it the loss and the
optimizer step. The step (:func:`make_parallel_train_step`) runs under
``jax.jit`` with a
``jax.shard_map`` body: parameters and optimizer state are replicated
(``P()``), the batch is split along the device axis (``P("data")``). Each
device runs the model's forward and backward passes on its own molecules.
Its ``[G, T]`` logits, labels and masks are all-gathered, so
:func:`models.metrics.masked_loss` is taken on the union batch exactly as on one
device (every real label weighs the same wherever it sits, RMSE included);
each device pulls back the loss gradient of its own logits, and the parameter
gradients are summed over devices (one all-reduce). Every device then holds
the full gradient of the union loss, and the optimizer's update (GraphSAM's
norms, its anchor ``lax.cond`` and its ``grad_fn`` pass, which repeats the
same parallel computation at other parameters) runs replicated on identical
numbers: the run is one-device training up to float rounding. The sums are
explicit (``check_vma=False``) because the model's custom-VJP functions do not
carry the varying-axis types that automatic summation needs.

Scaling beyond one host (not tested here). On a TPU pod slice or several GPU
hosts, call ``jax.distributed.initialize()`` at start-up in every process and
build the mesh over all devices (``make_mesh()``: ``jax.devices()`` is
global). Each process builds only its own devices' per-device batches
(``make_device_batch(..., positions=local_positions(mesh))``, which
:func:`make_train_batches` does; the common shape is chosen over all chunks,
which every process computes from the shared index order, so the processes
agree on it without talking), and :func:`shard_batch` assembles the global
array with ``jax.make_array_from_process_local_data``.
Every process must iterate the same global batches in the same order (same
seed) and call the step together; nothing else changes. Tested here: CPU
only, one process, ``XLA_FLAGS=--xla_force_host_platform_device_count=8``
(8 virtual devices on 2 cores: correctness, not speed). No GPU, TPU or
multi-process run was possible on this machine.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from collections.abc import Iterator
from collections.abc import Sequence

import jax
import numpy as np
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from models import featurization
from models import input_pipeline

AXIS = "data"


def make_mesh(num_devices: int | None = None) -> Mesh:
  """A 1-D mesh with axis ``"data"`` over the first ``num_devices`` devices.

  Args:
    num_devices: devices to use, ``1 <= num_devices <= jax.device_count()``;
      None uses all (every process's, after ``jax.distributed.initialize``).

  Returns:
    The mesh.
  """
  available = jax.device_count()
  if num_devices is None:
    num_devices = available
  if not 1 <= num_devices <= available:
    raise ValueError(
      f"num_devices must be in [1, {available}] (the devices JAX sees), got "
      f"{num_devices}"
    )
  return jax.make_mesh(
    (num_devices,),
    (AXIS,),
    axis_types=(jax.sharding.AxisType.Auto,),
    devices=jax.devices()[:num_devices],
  )


def replicated(mesh: Mesh) -> NamedSharding:
  """Sharding of parameters and optimizer state: a full copy per device."""
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Sharding of a stacked batch: its leading axis split over ``"data"``."""
  return NamedSharding(mesh, P(AXIS))


def per_device_budgets(
  n_atoms: np.ndarray, batch_size: int, num_devices: int
) -> tuple[input_pipeline.BatchShape, ...]:
  """Batch shapes for per-device batches of a global ``batch_size``.

  They are :func:`models.input_pipeline.padding_budgets` for
  ``ceil(batch_size / num_devices)`` molecules; pass the atom counts of
  every molecule the batches may hold, so that every per-device batch fits
  one.
  """
  if num_devices < 1:
    raise ValueError(f"num_devices must be >= 1, got {num_devices}")
  return input_pipeline.padding_budgets(n_atoms, -(-batch_size // num_devices))


def local_positions(mesh: Mesh) -> list[int]:
  """Positions along the mesh's device axis whose devices this process drives.

  All of them in a single-process run.
  """
  here = jax.process_index()
  return [i for i, d in enumerate(mesh.devices.flat) if d.process_index == here]


def make_device_batch(
  graphs: featurization.MolecularGraphs,
  labels: np.ndarray,
  idx: np.ndarray,
  budgets: Sequence[input_pipeline.BatchShape],
  num_devices: int,
  *,
  scaler: input_pipeline.TargetScaler | None = None,
  positions: Sequence[int] | None = None,
) -> input_pipeline.GraphBatch:
  """Per-device GraphBatches of molecules ``idx``, stacked on a device axis.

  ``idx`` is split into ``num_devices`` contiguous chunks (sizes differ by at
  most one); every chunk is padded to the smallest shape that fits all of
  them, so the batches stack (``input_pipeline.shape_of`` tells which).
  Real graphs keep the order of ``idx`` (device by device).

  Args:
    graphs: the dataset's featurized molecules.
    labels: f32[M, T] labels (NaN = missing).
    idx: molecule indices of the global batch, at least ``num_devices``.
    budgets: from :func:`per_device_budgets`.
    num_devices: size of the device axis.
    scaler: standardizes labels when given.
    positions: the device positions whose chunks are built, in order (a
      multi-process run builds its :func:`local_positions`; the budget still
      fits every chunk); None builds all.

  Returns:
    A GraphBatch whose every leaf has a leading axis of size
    ``num_devices`` (or ``len(positions)``).

  Examples:
    >>> smiles = ["CCO", "C", "CC", "O", "CCC"]
    >>> mols = featurization.featurize_smiles(smiles).graphs
    >>> labels = np.ones((5, 1), np.float32)
    >>> budgets = per_device_budgets(mols.n_atoms, 5, num_devices=2)
    >>> batch = make_device_batch(mols, labels, range(5), budgets, 2)
    >>> batch.graphs.nodes.shape, batch.graphs.n_node.tolist()
    ((2, 32, 115), [[3, 1, 2, 26], [1, 3, 28, 0]])
    >>> batch.graph_mask.tolist()
    [[True, True, True, False], [True, True, False, False]]
  """
  idx = np.asarray(idx, np.int64)
  if len(idx) < num_devices:
    raise ValueError(
      f"a batch of {len(idx)} molecules cannot feed num_devices="
      f"{num_devices} devices; use a batch size of at least {num_devices}"
    )
  chunks = np.array_split(idx, num_devices)
  budgets = list(budgets)
  fits = [
    budgets.index(input_pipeline.budget_of(graphs.n_atoms, chunk, budgets))
    for chunk in chunks
  ]
  common = (budgets[max(fits)],)
  return stack_batches(
    [
      input_pipeline.make_batch(
        graphs, labels, chunks[i], common, scaler=scaler
      )
      for i in (range(num_devices) if positions is None else positions)
    ]
  )


def stack_batches(
  batches: Sequence[input_pipeline.GraphBatch],
) -> input_pipeline.GraphBatch:
  """Stacks equally padded GraphBatches along a new leading device axis."""
  shapes = {
    tuple(np.shape(x) for x in jax.tree.leaves(batch)) for batch in batches
  }
  if len(shapes) != 1:
    raise ValueError(
      f"batches must share one padding budget to stack, got shapes {shapes}"
    )
  return jax.tree.map(lambda *xs: np.stack(xs), *batches)


def unstack_batch(
  batch: input_pipeline.GraphBatch,
) -> list[input_pipeline.GraphBatch]:
  """The per-device GraphBatches of a stacked batch (host arrays)."""
  count = len(batch.graph_mask)
  return [
    jax.tree.map(lambda x, i=i: np.asarray(x)[i], batch) for i in range(count)
  ]


def shard_batch(
  batch: input_pipeline.GraphBatch, mesh: Mesh
) -> input_pipeline.GraphBatch:
  """Puts a stacked host batch on the mesh, split along its device axis.

  In a multi-process run ``batch`` holds this process's devices only (see
  :func:`make_device_batch`); the result is the global array.
  """
  sharding = batch_sharding(mesh)
  return jax.tree.map(
    lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)),
    batch,
  )


def replicate(tree, mesh: Mesh):
  """Puts parameters or optimizer state on every device of the mesh."""
  return jax.device_put(tree, replicated(mesh))


def make_train_batches(
  data: input_pipeline.PreparedData, mesh: Mesh, single_shape: bool = False
) -> Callable[..., Iterator[tuple[input_pipeline.GraphBatch, tuple, int]]]:
  """Training batches on the mesh, epoch by epoch, for a training loop.

  Args:
    data: the prepared dataset; per-device shapes are computed once, on its
      training molecules.
    mesh: from :func:`make_mesh`.
    single_shape: pad every batch to the per-device shape that holds any
      (``Config.fixed_shapes``), so the step compiles once.

  Returns:
    ``epoch_batches(epoch, seed=0, drop_last=True)``, an iterator of
    ``(batch, blocks, num_graphs)``: the stacked batch placed on the mesh
    (:func:`shard_batch`), the model's static ``blocks`` for it and the
    number of molecules in the global batch. The global batches are those of
    ``data.train_batches(epoch, seed, drop_last)``, so training on ``D``
    devices sees the same molecules at every step as on one.
  """
  n_atoms = data.dataset.graphs.n_atoms[data.split.train]
  budgets = per_device_budgets(n_atoms, data.batch_size, mesh.size)
  if single_shape:
    budgets = budgets[-1:]
  positions = local_positions(mesh)

  def epoch_batches(epoch: int, seed: int = 0, drop_last: bool = True):
    for idx in data.train_indices(epoch, seed, drop_last):
      batch = make_device_batch(
        data.dataset.graphs,
        data.dataset.labels,
        idx,
        budgets,
        mesh.size,
        scaler=data.scaler,
        positions=positions,
      )
      blocks = input_pipeline.shape_of(batch, budgets).blocks
      yield shard_batch(batch, mesh), blocks, len(idx)

  return epoch_batches


def make_parallel_value_and_grad(model, loss):
  """``value_and_grad(params, batch, blocks)`` for a ``shard_map`` body.

  ``batch`` is this device's GraphBatch (no device axis); ``loss(logits,
  labels, mask)`` the loss of a batch (``models.metrics.masked_loss`` with its
  task). Returns the loss and gradient of ``loss`` on the union of every
  device's batch, both replicated: the model's forward and backward passes
  run on the local molecules, the ``[G, T]`` logits, labels and masks of all
  devices are gathered so the loss is taken on the union exactly as on one
  device, each device pulls back the loss gradient of its own logits, and
  the parameter gradients are summed over devices.
  """

  def gather(x):
    return jax.lax.all_gather(x, AXIS, tiled=True)

  def value_and_grad(params, batch, blocks):
    def apply(p):
      return model.apply({"params": p}, batch.graphs, blocks)

    logits, pullback = jax.vjp(apply, params)
    labels = gather(batch.labels)
    mask = gather(batch.label_mask)

    def union_loss(all_logits):
      return loss(all_logits, labels, mask)

    value, logit_grads = jax.value_and_grad(union_loss)(gather(logits))
    mine = jax.lax.dynamic_slice_in_dim(
      logit_grads, jax.lax.axis_index(AXIS) * len(logits), len(logits)
    )
    (grads,) = pullback(mine)
    return value, jax.lax.psum(grads, AXIS)

  return value_and_grad


def make_parallel_train_step(
  model, loss, update, mesh: Mesh, compiler_options=None
):
  """The data-parallel twin of :func:`models.engine.make_train_step`.

  Returns ``train_step(params, opt_state, totals, batch, values, blocks)``
  -> ``(params, opt_state, totals)`` where ``batch`` is a stacked batch
  (from :func:`make_device_batch`, ideally placed by :func:`shard_batch`),
  ``blocks`` its static attention layout, and everything else replicated
  (:func:`replicate`). ``update(value_and_grad, params, opt_state, totals,
  values)`` is the optimizer step (``models.engine.optimizer_step`` bound to
  its optimizer): every optimizer of the registry runs unchanged, seeing the
  full gradient of the union batch's loss, and ``grad_fn`` evaluates that
  same parallel gradient at other parameters. ``compiler_options`` go to
  ``jax.jit``.
  """
  value_and_grad = make_parallel_value_and_grad(model, loss)

  def local_step(params, opt_state, totals, batch, values, blocks):
    batch = jax.tree.map(lambda x: x[0], batch)  # this device's block
    return update(
      functools.partial(value_and_grad, batch=batch, blocks=blocks),
      params,
      opt_state,
      totals,
      values,
    )

  @functools.partial(
    jax.jit, static_argnames="blocks", compiler_options=compiler_options
  )
  def train_step(params, opt_state, totals, batch, values, blocks):
    step = jax.shard_map(
      functools.partial(local_step, blocks=blocks),
      mesh=mesh,
      in_specs=(P(), P(), P(), P(AXIS), P()),
      out_specs=P(),
      # Gradients are summed explicitly; the model's custom-VJP GRU does not
      # carry the varying-axis types that check_vma would need.
      check_vma=False,
    )
    return step(params, opt_state, totals, batch, values)

  return train_step
