"""Data parallelism: 8 devices train exactly as 1 device on the union batch.

The multi-device check runs in a subprocess started with
``XLA_FLAGS=--xla_force_host_platform_device_count=8`` (8 virtual CPU
devices), so this test session keeps its single device.
"""

import functools
import os
import socket
import subprocess
import sys
import types
from pathlib import Path

import jax
import numpy as np
import pytest
from rdkit import RDConfig

from models import featurization
from models import input_pipeline
from models import parallel
from models import splits

ROOT = Path(__file__).resolve().parents[2]
DEVICES = 8
BATCH = 30  # 8 devices get 4 or 3 molecules: unequal chunks


def _molecules(count):
  """The first NCI molecules with a regression target (TPSA-like) and two
  classification tasks, one with missing labels."""
  with open(Path(RDConfig.RDDataDir) / "NCI" / "first_5K.smi") as f:
    smiles = [
      line.split("\t")[0] for _, line in zip(range(count), f, strict=False)
    ]
  graphs = featurization.featurize_smiles(smiles).graphs
  rng = np.random.default_rng(0)
  size = graphs.n_atoms.astype(np.float32)
  regression = (size + rng.normal(size=len(size)))[:, None]
  classes = np.stack(
    [size > np.median(size), rng.random(len(size)) < 0.5], 1
  ).astype(np.float32)
  classes[rng.random(len(size)) < 0.3, 1] = np.nan
  return graphs, regression, classes


def _max_params_difference(a, b):
  return max(
    float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
  )


def run_checks():
  """8-device training steps equal 1-device steps on the union batches.

  GraphSAM (anchor every 2 steps, with grad_fn: steps 0 and 2 are anchors
  with a second pass) on the regression task (RMSE, the nonlinear loss) and
  SAM on the classification tasks with missing labels, each for 4 steps on 2
  alternating global batches. SGD is the base optimizer: Adam divides by
  the root of the second moment and turns the 1e-9 summation noise of
  gradients that are zero in exact arithmetic (the bond-embedding bias,
  whose shift the attention softmax removes) into full-size steps, on one
  device as well as on several.
  """
  import optax

  import graphsam_optax
  from models import engine
  from models import metrics
  from models.configs import test as test_config

  assert jax.device_count() == DEVICES, jax.devices()
  graphs, regression, classes = _molecules(2 * BATCH)
  mesh = parallel.make_mesh()
  config = test_config.get_config()
  batches = [np.arange(k * BATCH, (k + 1) * BATCH) for k in range(2)]
  # The largest shapes fit both batches: one compilation per step function.
  union_budget = input_pipeline.padding_budgets(graphs.n_atoms, BATCH)[-1:]
  device_budget = parallel.per_device_budgets(graphs.n_atoms, BATCH, DEVICES)[
    -1:
  ]
  cases = [
    (
      "regression",
      regression,
      graphsam_optax.graphsam(optax.sgd(0.1), anchor_every=2, beta=0.9),
    ),
    ("classification", classes, graphsam_optax.sam(optax.sgd(0.1))),
  ]
  for task_type, labels, tx in cases:
    union = [
      input_pipeline.make_batch(graphs, labels, idx, union_budget)
      for idx in batches
    ]
    stacked = [
      parallel.make_device_batch(graphs, labels, idx, device_budget, DEVICES)
      for idx in batches
    ]
    one_blocks = union_budget[0].blocks
    many_blocks = device_budget[0].blocks
    model = engine.create_model(config, labels.shape[1])
    params = model.init(
      jax.random.key(config.seed), union[0].graphs, one_blocks
    )["params"]
    options = engine.FAST_COMPILE  # the same programs, compiled faster
    one_step = engine.make_train_step(
      model, task_type, lambda _, tx=tx: tx, options
    )
    many_step = parallel.make_parallel_train_step(
      model,
      functools.partial(metrics.masked_loss, task_type=task_type),
      functools.partial(engine.optimizer_step, lambda _, tx=tx: tx),
      mesh,
      options,
    )
    zero = engine.EpochTotals.zeros()
    one = (params, tx.init(params), zero)
    many = parallel.replicate(one, mesh)
    for step in range(4):
      one = one_step(*one, union[step % 2], {}, one_blocks)
      batch = parallel.shard_batch(stacked[step % 2], mesh)
      assert batch.graphs.nodes.sharding.spec == jax.P(parallel.AXIS)
      many = many_step(*many, batch, {}, many_blocks)
      np.testing.assert_allclose(many[2].loss_sum, one[2].loss_sum, rtol=1e-5)
      assert _max_params_difference(many[0], one[0]) < 1e-5, (task_type, step)
      # Optimizer state too: GraphSAM's moving average and perturbation.
      assert _max_params_difference(many[1], one[1]) < 1e-5, (task_type, step)
    for leaf in jax.tree.leaves(many):
      assert leaf.sharding.spec == jax.P(), leaf.sharding
      assert len(leaf.sharding.device_set) == DEVICES
    clean = [
      graphsam_optax.eval_params(state, p) for p, state, _ in (one, many)
    ]
    assert _max_params_difference(*clean) < 1e-5
    print(f"checked {task_type}: loss sum {float(many[2].loss_sum):.6f}")


@pytest.mark.slow
def test_eight_devices_train_as_one():
  env = dict(
    os.environ,
    XLA_FLAGS=f"--xla_force_host_platform_device_count={DEVICES}",
    JAX_PLATFORMS="cpu",
  )
  result = subprocess.run(
    [
      sys.executable,
      "-c",
      "from tests.models import test_parallel; test_parallel.run_checks()",
    ],
    cwd=ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=900,
  )
  assert result.returncode == 0, result.stdout + result.stderr
  assert result.stdout.count("checked") == 2, result.stdout


@pytest.fixture(scope="module")
def molecules():
  return _molecules(40)


def test_device_batch_keeps_molecules_in_order(molecules):
  graphs, _, classes = molecules
  idx = np.arange(3, 3 + 11)
  budgets = parallel.per_device_budgets(graphs.n_atoms, 11, 4)
  batch = parallel.make_device_batch(graphs, classes, idx, budgets, 4)
  assert batch.graph_mask.shape == (4, 4)
  assert batch.graph_mask.sum(1).tolist() == [3, 3, 3, 2]
  parts = parallel.unstack_batch(batch)
  n_node = np.concatenate([p.graphs.n_node[p.graph_mask] for p in parts])
  np.testing.assert_array_equal(n_node, graphs.n_atoms[idx])
  labels = np.concatenate([p.labels[p.graph_mask] for p in parts])
  mask = np.concatenate([p.label_mask[p.graph_mask] for p in parts])
  np.testing.assert_array_equal(mask, ~np.isnan(classes[idx]))
  np.testing.assert_array_equal(labels[mask], classes[idx][mask])
  # Each part is an ordinary padded batch of its molecules.
  budget = input_pipeline.shape_of(batch, budgets)
  single = input_pipeline.make_batch(graphs, classes, idx[:3], [budget])
  for x, y in zip(
    jax.tree.leaves(parts[0]), jax.tree.leaves(single), strict=True
  ):
    np.testing.assert_array_equal(x, y)


def test_device_batch_positions_build_a_subset(molecules):
  graphs, _, classes = molecules
  budgets = parallel.per_device_budgets(graphs.n_atoms, 16, 4)
  full = parallel.make_device_batch(graphs, classes, range(16), budgets, 4)
  part = parallel.make_device_batch(
    graphs, classes, range(16), budgets, 4, positions=[1, 3]
  )
  for x, y in zip(jax.tree.leaves(full), jax.tree.leaves(part), strict=True):
    np.testing.assert_array_equal(np.asarray(x)[[1, 3]], y)


def test_device_batch_errors(molecules):
  graphs, _, classes = molecules
  budgets = parallel.per_device_budgets(graphs.n_atoms, 4, 4)
  with pytest.raises(ValueError, match="num_devices=4"):
    parallel.make_device_batch(graphs, classes, range(3), budgets, 4)
  with pytest.raises(ValueError, match="num_devices"):
    parallel.per_device_budgets(graphs.n_atoms, 4, 0)
  size = budgets[0].block_size
  small, large = (
    input_pipeline.make_batch(
      graphs,
      classes,
      [0],
      [input_pipeline.BatchShape(nodes, 1024, 2, 1, size)],
    )
    for nodes in (64, 128)
  )
  with pytest.raises(ValueError, match="padding budget"):
    parallel.stack_batches([small, large])


def test_make_mesh():
  mesh = parallel.make_mesh()
  assert mesh.axis_names == (parallel.AXIS,)
  assert mesh.size == jax.device_count()
  assert parallel.local_positions(mesh) == list(range(mesh.size))
  for bad in (0, jax.device_count() + 1):
    with pytest.raises(ValueError, match="num_devices"):
      parallel.make_mesh(bad)


def test_train_batches_are_the_single_device_batches(molecules):
  graphs, regression, _ = molecules
  dataset = types.SimpleNamespace(graphs=graphs, labels=regression)
  split = splits.Split(np.arange(30), np.arange(30, 35), np.arange(35, 40))
  data = input_pipeline.PreparedData(
    dataset,
    split,
    batch_size=8,
    budgets=input_pipeline.padding_budgets(graphs.n_atoms, 8),
    scaler=input_pipeline.TargetScaler.fit(regression[split.train]),
  )
  mesh = parallel.make_mesh(1)
  epoch_batches = parallel.make_train_batches(data, mesh)
  ours = list(epoch_batches(epoch=1, seed=3, drop_last=True))
  theirs = list(data.train_batches(1, seed=3, drop_last=True))
  assert len(ours) == len(theirs) == 3
  budgets = parallel.per_device_budgets(graphs.n_atoms[split.train], 8, 1)
  for (batch, blocks, count), single in zip(ours, theirs, strict=True):
    parts = parallel.unstack_batch(jax.device_get(batch))
    labels = np.concatenate([p.labels[p.graph_mask] for p in parts])
    np.testing.assert_array_equal(labels, single.labels[single.graph_mask])
    assert count == single.graph_mask.sum() == 8
    assert blocks == input_pipeline.shape_of(batch, budgets).blocks


def test_single_shape_gives_one_shape(molecules):
  graphs, regression, _ = molecules
  dataset = types.SimpleNamespace(graphs=graphs, labels=regression)
  split = splits.Split(np.arange(40), np.arange(0), np.arange(0))
  data = input_pipeline.PreparedData(dataset, split, 8, (), None)
  epoch_batches = parallel.make_train_batches(
    data, parallel.make_mesh(1), single_shape=True
  )
  shapes = {
    (tuple(batch.graphs.senders.shape), blocks)
    for epoch in range(3)
    for batch, blocks, _ in epoch_batches(epoch)
  }
  largest = parallel.per_device_budgets(graphs.n_atoms, 8, 1)[-1]
  assert shapes == {((1, largest.n_edge), largest.blocks)}


# Parameters that shift every attention score of a query alike, which the
# softmax removes: their gradient is zero in exact arithmetic, so Adam turns
# the float noise of a different summation order into full steps, and they
# differ between device layouts without changing any prediction.
SOFTMAX_SHIFTS = ("['bond_embed']['bias']", "['key']['bias']")


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _worker(process_id, num_processes, port, out, devices):
  env = dict(
    os.environ,
    XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
    JAX_PLATFORMS="cpu",
  )
  return subprocess.Popen(
    [
      sys.executable,
      "-m",
      "tests.models.multihost",
      str(process_id),
      str(num_processes),
      str(port),
      str(out),
    ],
    cwd=ROOT,
    env=env,
    stdout=subprocess.PIPE,
    stderr=subprocess.STDOUT,
    text=True,
  )


@pytest.mark.slow
def test_two_processes_of_four_devices_train_as_one_of_eight(tmp_path):
  """jax.distributed on localhost (gloo collectives): the multi-host path."""
  port = _free_port()
  two, one = tmp_path / "two.npz", tmp_path / "one.npz"
  workers = [_worker(k, 2, port, two, 4) for k in range(2)]
  workers.append(_worker(0, 1, 0, one, 8))
  for worker in workers:
    output, _ = worker.communicate(timeout=900)
    assert worker.returncode == 0, output[-3000:]
  a, b = np.load(one), np.load(two)
  np.testing.assert_allclose(b["losses"], a["losses"], rtol=1e-5)
  np.testing.assert_allclose(b["predictions"], a["predictions"], rtol=1e-5)
  names = [k for k in a.files if k.startswith("[")]
  assert names == [k for k in b.files if k.startswith("[")] and len(names) > 20
  shifts = [k for k in names if k.endswith(SOFTMAX_SHIFTS)]
  assert len(shifts) == 2
  for name in names:
    if name not in shifts:
      np.testing.assert_allclose(b[name], a[name], atol=1e-5, err_msg=name)
