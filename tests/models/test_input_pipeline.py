"""Padded GraphBatches: format, masks, epochs and the budget set."""

import types
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import jraph
import numpy as np
import pytest
from rdkit import RDConfig

from models import dataset_registry
from models import datasets
from models import featurization as F
from models import input_pipeline as P


@pytest.fixture(scope="module")
def nci():
  """400 NCI molecules with two synthetic tasks (some labels missing)."""
  with open(Path(RDConfig.RDDataDir) / "NCI" / "first_5K.smi") as f:
    smiles = [
      line.split("\t")[0] for _, line in zip(range(420), f, strict=False)
    ]
  result = F.featurize_smiles(smiles)
  graphs = result.graphs
  rng = np.random.default_rng(0)
  labels = rng.normal(size=(len(graphs), 2)).astype(np.float32)
  labels[rng.random(labels.shape) < 0.2] = np.nan
  return types.SimpleNamespace(graphs=graphs, labels=labels)


def _molecule_graphs_tuple(graphs, k):
  """One molecule as a GraphsTuple, built independently of make_batch."""
  mol = graphs.molecule(k)
  n = len(mol.nodes)
  return jraph.GraphsTuple(
    nodes=mol.nodes,
    edges={"bond": mol.bond.ravel(), "distance": mol.distance.ravel()},
    receivers=np.repeat(np.arange(n), n).astype(np.int32),
    senders=np.tile(np.arange(n), n).astype(np.int32),
    n_node=np.array([n], np.int32),
    n_edge=np.array([n * n], np.int32),
    globals=None,
  )


def test_budgets(nci):
  n = nci.graphs.n_atoms.astype(np.int64)
  budgets = P.padding_budgets(n, 32)
  assert budgets == P.padding_budgets(n, 32)  # deterministic
  assert len(budgets) == 2
  typical, largest = budgets
  assert all(b.n_graph == 33 for b in budgets)
  assert all(b.block_size == -(-n.max() // 8) * 8 for b in budgets)
  assert typical.n_node < largest.n_node and typical.n_edge < largest.n_edge
  assert typical.block_count < largest.block_count == 32
  # The largest holds the 32 largest molecules together.
  top = np.sort(n)[-32:]
  assert largest.fits(top.sum(), (top**2).sum(), 32, 32)
  assert all(b.n_node % 32 == 0 and b.n_edge % 512 == 0 for b in budgets)
  # The typical shape holds at least 99.5% of random batches, jointly.
  sizes = P.sample_batches(n, 32, 4000, seed=7)
  blocks = P.pack_blocks(sizes, typical.block_size)
  fits = [
    typical.fits(s.sum(), (s * s).sum(), 32, k)
    for s, k in zip(sizes, blocks, strict=True)
  ]
  assert np.mean(fits) >= 0.99
  with pytest.raises(ValueError, match="fits no shape"):
    P.select_budget(largest.n_node, 1, 2, 1, budgets)
  with pytest.raises(ValueError, match="batch_size"):
    P.padding_budgets(n, 0)
  with pytest.raises(ValueError, match="coverage"):
    P.padding_budgets(n, 32, coverage=0)
  # Where the typical shape would hold every batch, there is one shape.
  assert len(P.padding_budgets(np.full(50, 7), 4)) == 1


def test_pack_blocks_agrees_with_the_model():
  from models import layout

  rng = np.random.default_rng(0)
  sizes = rng.integers(0, 40, size=(200, 33))
  sizes[:, -1] = 0  # jraph's padding graph takes no room
  count = P.pack_blocks(sizes, 48)
  pack = jax.jit(
    jax.vmap(layout.pack_blocks, in_axes=(0, None)), static_argnums=1
  )
  block, start = pack(jnp.asarray(sizes, jnp.int32), 48)
  last = np.where(sizes > 0, np.asarray(block), -1).max(1)
  np.testing.assert_array_equal(count, last + 1)
  assert np.all(np.asarray(start) + sizes <= 48)


def test_make_batch_picks_the_first_shape_that_fits():
  result = F.featurize_smiles(["CCCCCC", "CCCCC", "CCCC"])  # 6, 5, 4 atoms
  labels = np.zeros((3, 1), np.float32)
  few_blocks = P.BatchShape(32, 512, 4, 1, 8)
  enough = P.BatchShape(64, 1024, 4, 3, 8)
  batch = P.make_batch(result.graphs, labels, [0, 1, 2], [few_blocks, enough])
  assert P.shape_of(batch, [few_blocks, enough]) == enough  # 3 blocks of 8
  assert P.pack_blocks(np.array([6, 5, 4]), 8) == 3
  batch = P.make_batch(result.graphs, labels, [2], [few_blocks, enough])
  assert P.shape_of(batch, [few_blocks, enough]) == few_blocks


def test_batch_format_by_hand():
  result = F.featurize_smiles(["CCO", "[Na+].[Cl-]"])
  labels = np.array([[1.0, np.nan], [0.0, 2.0]], np.float32)
  budget = P.BatchShape(8, 16, 4, 1, 8)
  batch = P.make_batch(result.graphs, labels, [0, 1], [budget])
  g = batch.graphs
  assert g.nodes.shape == (8, 115) and g.nodes.dtype == np.float32
  assert g.edges["bond"].shape == (16,) and g.edges["bond"].dtype == np.int32
  assert g.edges["distance"].dtype == np.float32
  assert g.senders.dtype == g.receivers.dtype == np.int32
  assert g.n_node.dtype == g.n_edge.dtype == np.int32 and g.globals is None
  np.testing.assert_array_equal(g.n_node, [3, 2, 3, 0])
  np.testing.assert_array_equal(g.n_edge, [9, 4, 3, 0])
  # Pair (i <- j) of molecule 0 is row-major: receivers 0,0,0,1,1,1,2,2,2.
  np.testing.assert_array_equal(
    g.receivers[:13], [0] * 3 + [1] * 3 + [2] * 3 + [3, 3, 4, 4]
  )
  np.testing.assert_array_equal(g.senders[:13], [0, 1, 2] * 3 + [3, 4, 3, 4])
  np.testing.assert_array_equal(
    g.edges["distance"][:9], [0, 1, 2, 1, 0, 1, 2, 1, 0]
  )
  np.testing.assert_array_equal(g.edges["distance"][9:13], [0, 1e4, 1e4, 0])
  assert (g.edges["bond"][[1, 3, 5, 7]] > 0).all()
  assert (g.edges["bond"][[0, 2, 4, 6, 8, 9, 10, 11, 12]] == 0).all()
  np.testing.assert_array_equal(g.nodes[5:], 0)  # padding atoms
  np.testing.assert_array_equal(g.edges["bond"][13:], 0)
  assert (g.senders[13:] >= 5).all() and (g.receivers[13:] >= 5).all()
  np.testing.assert_array_equal(batch.labels, [[1, 0], [0, 2], [0, 0], [0, 0]])
  np.testing.assert_array_equal(
    batch.label_mask, [[1, 0], [1, 1], [0, 0], [0, 0]]
  )
  np.testing.assert_array_equal(batch.graph_mask, [1, 1, 0, 0])
  np.testing.assert_array_equal(
    jraph.get_graph_padding_mask(g), batch.graph_mask
  )


def test_matches_jraph_batch_then_pad(nci):
  budgets = P.padding_budgets(nci.graphs.n_atoms, 8)
  idx = np.array([5, 17, 3, 250, 99, 0, 12])
  batch = P.make_batch(nci.graphs, nci.labels, idx, budgets)
  size = budgets[0].block_size
  nodes, pairs, blocks = P.batch_totals(nci.graphs.n_atoms, idx, size)
  budget = P.select_budget(nodes, pairs, len(idx), blocks, budgets)
  assert P.shape_of(batch, budgets) == budget
  expected = jraph.pad_with_graphs(
    jraph.batch_np([_molecule_graphs_tuple(nci.graphs, k) for k in idx]),
    budget.n_node,
    budget.n_edge,
    budget.n_graph,
  )
  got = batch.graphs
  for field in ("nodes", "senders", "receivers", "n_node", "n_edge"):
    np.testing.assert_array_equal(getattr(got, field), getattr(expected, field))
  for key in ("bond", "distance"):
    np.testing.assert_array_equal(got.edges[key], expected.edges[key])


def _graph_of(index, n_node):
  return np.repeat(np.arange(len(n_node)), n_node)[index]


def test_pairs_stay_inside_molecules_and_padding_is_inert(nci):
  budgets = P.padding_budgets(nci.graphs.n_atoms, 16)
  idx = np.arange(40, 56)
  small = P.make_batch(nci.graphs, nci.labels, idx, budgets)
  big = P.make_batch(nci.graphs, nci.labels, idx, budgets[-1:])
  for batch in (small, big):
    g = batch.graphs
    graph = _graph_of(g.receivers, g.n_node)
    np.testing.assert_array_equal(graph, _graph_of(g.senders, g.n_node))
    real = batch.graph_mask[graph]
    assert real.sum() == (nci.graphs.n_atoms[idx].astype(int) ** 2).sum()
    assert (g.edges["bond"][~real] == 0).all()

  def readout(batch):
    # A message-passing-like reduction per real graph: sum over pairs of
    # exp(-D) * (receiver features), grouped by graph.
    g = batch.graphs
    messages = np.exp(-0.1 * g.edges["distance"])[:, None] * g.nodes[g.senders]
    per_node = np.zeros_like(g.nodes)
    np.add.at(per_node, g.receivers, messages)
    per_graph = np.zeros((len(g.n_node), g.nodes.shape[1]), np.float32)
    np.add.at(per_graph, _graph_of(np.arange(len(g.nodes)), g.n_node), per_node)
    return per_graph[batch.graph_mask]

  np.testing.assert_allclose(readout(small), readout(big), rtol=1e-6)


def test_epochs_cover_every_molecule_once(nci):
  indices = np.arange(3, 403)
  epoch0 = P.batch_indices(indices, 32, shuffle=True, seed=1, epoch=0)
  again = P.batch_indices(indices, 32, shuffle=True, seed=1, epoch=0)
  epoch1 = P.batch_indices(indices, 32, shuffle=True, seed=1, epoch=1)
  assert len(epoch0) == P.num_batches(400, 32, drop_last=False) == 13
  np.testing.assert_array_equal(np.sort(np.concatenate(epoch0)), indices)
  np.testing.assert_array_equal(np.concatenate(epoch0), np.concatenate(again))
  assert not np.array_equal(np.concatenate(epoch0), np.concatenate(epoch1))
  dropped = P.batch_indices(indices, 32, shuffle=True, drop_last=True)
  assert len(dropped) == P.num_batches(400, 32, drop_last=True) == 12
  assert all(len(b) == 32 for b in dropped)

  budgets = P.padding_budgets(nci.graphs.n_atoms, 32)
  batches = list(
    P.iterate_batches(nci, indices, 32, budgets, shuffle=True, seed=1)
  )
  seen = []
  for batch, idx in zip(batches, epoch0, strict=True):
    real = batch.graph_mask.sum()
    assert real == len(idx)
    np.testing.assert_array_equal(
      batch.graphs.n_node[:real], nci.graphs.n_atoms[idx]
    )
    present = ~np.isnan(nci.labels[idx])
    np.testing.assert_array_equal(batch.label_mask[:real], present)
    assert (
      not batch.label_mask[real:].any() and not batch.graph_mask[real:].any()
    )
    np.testing.assert_array_equal(
      batch.labels[:real], np.where(present, nci.labels[idx], 0)
    )
    seen.extend(idx)
  assert sorted(seen) == list(indices)
  last = batches[-1]  # 400 = 12 * 32 + 16: padded with 17 padding graphs
  assert last.graph_mask.sum() == 16 and len(last.graph_mask) == 33


def test_distinct_shapes_are_bounded(nci):
  budgets = P.padding_budgets(nci.graphs.n_atoms, 32)
  shapes = set()
  for epoch in range(5):
    for batch in P.iterate_batches(
      nci, np.arange(400), 32, budgets, shuffle=True, epoch=epoch
    ):
      shapes.add((len(batch.graphs.nodes), len(batch.graphs.senders)))
  assert shapes <= {(b.n_node, b.n_edge) for b in budgets}
  idx = P.batch_indices(np.arange(400), 32, shuffle=True)
  usage = P.budget_usage(nci.graphs.n_atoms, idx, budgets)
  assert usage["shapes_used"] <= len(budgets) and sum(usage["counts"]) == 13
  assert 0 < usage["pair_fill"] <= 1 and 0 < usage["node_fill"] <= 1
  assert usage["mean_pairs"] <= usage["mean_padded_pairs"]
  assert usage["mean_blocks"] <= usage["mean_padded_blocks"]


def test_target_scaler():
  y = np.array([[1.0, 5.0], [3.0, np.nan], [np.nan, 5.0]], np.float32)
  scaler = P.TargetScaler.fit(y)
  np.testing.assert_allclose(scaler.mean, [2.0, 5.0])
  np.testing.assert_allclose(scaler.std, [1.0, 1.0])  # 2nd: zero -> 1
  z = scaler.transform(y)
  np.testing.assert_allclose(z[:2, 0], [-1, 1])
  np.testing.assert_allclose(scaler.inverse_transform(z), y)
  result = F.featurize_smiles(["C", "CC", "CCC"])
  batch = P.make_batch(
    result.graphs, y, [0, 1, 2], [P.BatchShape(64, 512, 4, 3, 8)], scaler=scaler
  )
  np.testing.assert_allclose(batch.labels[:3], [[-1, 0], [1, 0], [0, 0]])
  np.testing.assert_array_equal(batch.label_mask[:3], ~np.isnan(y))


def test_prepare_data_on_the_tiny_csv(tmp_path):
  tiny = Path(__file__).parents[1] / "data" / "tiny_molecules.csv"
  spec = dataset_registry.DatasetSpec(
    "tiny",
    tiny.name,
    None,
    None,
    "smiles",
    ("label_a", "label_b"),
    "regression",
    "rmse",
  )
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", datasets.InvalidSmilesWarning)
    data = P.prepare_data(
      spec,
      batch_size=2,
      sizes=(0.5, 0.25, 0.25),
      data_dir=tiny.parent,
      cache_dir=tmp_path,
    )
  assert [len(p) for p in data.split] == [2, 1, 1]
  assert data.scaler is not None and data.steps_per_epoch() == 1
  (batch,) = data.train_batches(epoch=0)
  assert batch.graph_mask.tolist() == [True, True, False]
  (valid,) = data.eval_batches("valid")
  assert valid.graph_mask.sum() == 1
  assert len(valid.graph_mask) == data.budgets[0].n_graph == 3
