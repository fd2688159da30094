"""Tests of models/model.py: CoMPT against a direct transcription, masks."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from models import featurization
from models import gru as gru_lib
from models import layout
from models import model as model_lib
from tests.models import synthetic

VOCAB = featurization.BOND_FEATURIZER.vocabulary()
BUDGET = (64, 512, 6)  # nodes, pairs, graphs of most test batches


def make_model(**kw):
  kw = {
    "num_tasks": 2,
    "d_model": 8,
    "num_heads": 2,
    "num_layers": 1,
    "blocks": (4, 16),
    **kw,
  }
  return model_lib.CoMPT(
    bond_vocabulary=model_lib.bond_vocabulary_tuple(VOCAB), **kw
  )


# Few models, few shapes: every distinct pair compiles (seconds on 2 cores).
GRU_MODEL = make_model(kernel="exp", norm="layer", readout="gru")
MEAN_MODEL = make_model(
  kernel="softmax",
  norm="scale",
  readout="mean",
  attention="sparse",
  num_tasks=12,
)


def molecules(seed, sizes, fragments=1):
  rng = np.random.default_rng(seed)
  return [synthetic.molecule(rng, n, len(VOCAB), fragments) for n in sizes]


def batch_of(mols, budget=BUDGET):
  labels = np.zeros((len(mols), 1), np.float32)
  return synthetic.make_batch(mols, labels, budget=budget)


# Tests check numbers, not speed: skip LLVM's expensive passes, which halves
# compile times on 2 shared cores.
fast_jit = functools.partial(
  jax.jit, compiler_options={"xla_backend_optimization_level": 0}
)


@functools.cache
def _jitted(model):
  return fast_jit(model.init), fast_jit(model.apply)


def init(model, batch, seed=0):
  return _jitted(model)[0](jax.random.key(seed), batch.graphs)["params"]


def apply(model, params, batch):
  return np.asarray(_jitted(model)[1]({"params": params}, batch.graphs))


# Molecules shared by several tests: two, one in two fragments (distance 1e4
# between them), and a single atom.
MOLS = (
  molecules(0, [9, 13]) + molecules(1, [7], fragments=2) + molecules(2, [1])
)


# --- A direct NumPy (float64) transcription of CoMPT's math, one molecule at a
# time: per-pair keys from per-pair bond embeddings, outgoing AND incoming
# softmax, distance kernel, torch's GRU over the molecule's atoms.


def _mish(x):
  return x * np.tanh(np.log1p(np.exp(x)))


def _sigmoid(x):
  return 1 / (1 + np.exp(-x))


def _softmax(x, axis=-1):
  e = np.exp(x - x.max(axis, keepdims=True))
  return e / e.sum(axis, keepdims=True)


def _norm(p, x, kind):
  if kind == "layer":
    mean = x.mean(-1, keepdims=True)
    std = x.std(-1, ddof=1, keepdims=True)
    return p["scale"] * (x - mean) / (std + 1e-6) + p["bias"]
  return p["scale"] * x / np.maximum(np.linalg.norm(x, axis=-1)[:, None], 1e-5)


def _dense(p, x):
  return x @ p["kernel"] + p["bias"]


def _gru(p, k, xs, h):
  d, out = len(h), []
  for x in xs:
    gx = x @ p["w_in"][k] + p["b_in"][k]
    gh = h @ p["w_h"][k] + p["b_h"][k]
    r = _sigmoid(gx[:d] + gh[:d])
    z = _sigmoid(gx[d : 2 * d] + gh[d : 2 * d])
    n = np.tanh(gx[2 * d :] + r * gh[2 * d :])
    h = (1 - z) * n + z * h
    out.append(h)
  return np.stack(out)


def reference(params, model, mol):
  p = jax.tree.map(lambda x: np.asarray(x, np.float64), params)
  x, bond, dist = mol
  n, d, heads = len(x), model.d_model, model.num_heads
  dk = d // heads
  h = _dense(p["atom_embed"], x) * np.sqrt(d)
  edges = _dense(p["bond_embed"], VOCAB[bond]) * np.sqrt(d)  # [n, n, d]
  for layer in range(model.num_layers):
    lp = p[f"layer_{layer}"]
    ap = lp["attention"]
    u = _norm(lp["norm"], h, model.norm)
    q = _dense(ap["query"], u).reshape(n, heads, dk)
    v = _dense(ap["value"], u).reshape(n, heads, dk)
    k = _dense(ap["key"], edges).reshape(n, n, heads, dk)
    out_scores = np.einsum("mhd,mnhd->hmn", q, k) / np.sqrt(dk)
    in_scores = np.einsum("nhd,mnhd->hnm", q, k) / np.sqrt(dk)
    out_attn, in_attn = _softmax(out_scores), _softmax(in_scores)
    diag = np.einsum("hii->hi", out_attn)[:, :, None] * np.eye(n)
    message = out_attn + in_attn - diag
    lam = max(ap["lambda"], 0.0)
    if model.kernel == "exp":
      kernel = np.exp(-lam * dist)
    else:
      kernel = _softmax(-lam * dist)
    message = message * kernel
    o = np.einsum("hmn,nhd->mhd", message, v).reshape(n, d)
    a = _mish(_dense(ap["out"], o))
    h1 = u + _norm(lp["norm"], a, model.norm)
    f = _mish(_dense(lp["feed_forward"], h1))
    h = u + h1 + _norm(lp["norm"], f, model.norm)
  h = _norm(p["final_norm"], h, model.norm)
  if model.readout == "gru":
    rp = p["readout"]
    h0 = _mish(h + rp["bias"]).max(0)
    fwd = _gru(rp, 0, h, h0)
    bwd = _gru(rp, 1, h[::-1], h0)[::-1]
    pooled = _mish(_dense(rp["out"], np.concatenate([fwd, bwd], -1))).mean(0)
  else:
    pooled = h.mean(0)
  hp = p["head"]
  z = pooled[None]
  for i in range(model.head_layers - 1):
    z = _norm(hp[f"norm_{i}"], _mish(_dense(hp[f"hidden_{i}"], z)), model.norm)
  return _dense(hp["output"], z)[0]


@pytest.mark.parametrize("model", [GRU_MODEL, MEAN_MODEL], ids=["gru", "mean"])
def test_matches_direct_transcription(model):
  batch = batch_of(MOLS)
  params = init(model, batch)
  params["layer_0"]["attention"]["lambda"] = jnp.float32(0.3)
  got = apply(model, params, batch)
  want = np.stack([reference(params, model, m) for m in MOLS])
  np.testing.assert_allclose(got[: len(MOLS)], want, rtol=2e-4, atol=2e-5)


@pytest.mark.parametrize("model", [GRU_MODEL, MEAN_MODEL], ids=["gru", "mean"])
def test_output_shape_per_task_count(model):
  batch = batch_of(MOLS)
  out = apply(model, init(model, batch), batch)
  assert out.shape == (BUDGET[2], model.num_tasks)
  assert np.all(np.isfinite(out))


def _permute(mol, perm):
  x, bond, dist = mol
  return x[perm], bond[np.ix_(perm, perm)], dist[np.ix_(perm, perm)]


def test_permuting_atoms_leaves_predictions_unchanged():
  # The mean readout is invariant; CoMPT's GRU readout reads atoms in order
  # by design, so only its encoder is (see the model's docstring).
  batch = batch_of(MOLS)
  params = init(MEAN_MODEL, batch)
  perm = np.random.default_rng(0).permutation(13)
  permuted = batch_of([MOLS[0], _permute(MOLS[1], perm)] + MOLS[2:])
  np.testing.assert_allclose(
    apply(MEAN_MODEL, params, permuted)[:4],
    apply(MEAN_MODEL, params, batch)[:4],
    rtol=1e-5,
    atol=1e-6,
  )


def test_other_molecules_and_padding_leave_a_prediction_unchanged():
  first = MOLS[1]
  params = init(GRU_MODEL, batch_of(MOLS))
  want = apply(GRU_MODEL, params, batch_of([first]))[0]
  others = batch_of([MOLS[0], MOLS[3], first, MOLS[2]])
  tight = batch_of([first], budget=(14, 169, 2))
  np.testing.assert_allclose(
    apply(GRU_MODEL, params, others)[2], want, rtol=2e-5
  )
  np.testing.assert_allclose(
    apply(GRU_MODEL, params, tight)[0], want, rtol=2e-5
  )


def test_dense_and_sparse_layouts_agree():
  batch = batch_of(MOLS)
  params = init(MEAN_MODEL, batch)
  dense = MEAN_MODEL.clone(attention="dense")
  np.testing.assert_allclose(
    apply(dense, params, batch)[:4],
    apply(MEAN_MODEL, params, batch)[:4],
    rtol=1e-4,
    atol=1e-5,
  )


def test_molecule_larger_than_the_block_gives_nan():
  batch = batch_of(molecules(7, [20]))  # GRU_MODEL's blocks hold 16 atoms
  out = apply(GRU_MODEL, init(GRU_MODEL, batch), batch)
  assert np.all(np.isnan(out))


def test_more_blocks_than_the_layout_has_give_nan():
  # Next fit: 9 | 13 | 7 + 1 fill three blocks of 16; two are too few.
  batch = batch_of(MOLS)
  params = init(GRU_MODEL, batch)
  assert np.all(np.isfinite(apply(GRU_MODEL, params, batch)))
  assert np.all(np.isnan(apply(GRU_MODEL.clone(blocks=(2, 16)), params, batch)))


def test_packing_in_blocks_changes_no_prediction():
  # One block per molecule, the default layout and tight packing agree.
  batch = batch_of(MOLS)
  params = init(GRU_MODEL, batch)
  want = apply(GRU_MODEL.clone(blocks=(5, 16)), params, batch)
  for blocks in ((3, 16), (2, 24), (1, 30), None):
    got = apply(GRU_MODEL.clone(blocks=blocks), params, batch)
    np.testing.assert_allclose(got[:4], want[:4], rtol=1e-5, atol=1e-6)


def test_pack_blocks_is_next_fit():
  n = jnp.array([9, 13, 7, 1, 0, 16, 3], jnp.int32)
  block, start = jax.jit(layout.pack_blocks, static_argnums=1)(n, 16)
  assert block.tolist() == [0, 1, 2, 2, 2, 3, 4]
  assert start.tolist() == [0, 0, 0, 7, 8, 0, 0]


def test_gradients_finite_and_padding_gets_none():
  batch = batch_of(MOLS)
  params = init(GRU_MODEL, batch)

  def loss(p, nodes):
    graphs = batch.graphs._replace(nodes=nodes)
    out = GRU_MODEL.apply({"params": p}, graphs)
    return jnp.sum(jnp.where(batch.graph_mask[:, None], out, 0.0) ** 2)

  nodes = jnp.asarray(batch.graphs.nodes)
  grads, node_grads = fast_jit(jax.grad(loss, argnums=(0, 1)))(params, nodes)
  for leaf in jax.tree.leaves((grads, node_grads)):
    assert np.all(np.isfinite(leaf))
  assert np.any(grads["layer_0"]["attention"]["lambda"] != 0)
  real_atoms = int(batch.graphs.n_node[: len(MOLS)].sum())
  assert np.all(node_grads[real_atoms:] == 0)  # padding atoms: no gradient
  assert np.any(node_grads[:real_atoms] != 0)


def test_gru_vjp_equals_autodiff():
  # Three molecules of 5, 3 and 1 atoms plus jraph's padding graph (whose
  # lanes run no step): the hand-written backward pass against autodiff of
  # an unrolled transcription that runs each molecule's atoms in order.
  batch = batch_of(molecules(9, [5, 3, 1]), budget=(16, 64, 4))
  topo = layout.Topology(jax.tree.map(jnp.asarray, batch.graphs), None)
  lanes = gru_lib.GRULanes.pair(
    topo.offsets, topo.n_node, topo.node_graph, topo.node_pos
  )
  # 4 graphs (5, 3, 1 atoms, padding): lanes 5 + 0 and 3 + 1.
  np.testing.assert_array_equal(lanes.lane_len, [5, 4])
  n, g, d = 16, 4, 4
  sizes = [5, 3, 1]
  rng = np.random.default_rng(0)
  x = rng.normal(size=(2, n, 3 * d)).astype(np.float32)
  h0 = rng.normal(size=(2, g, d)).astype(np.float32)
  w = rng.normal(size=(2, d, 3 * d)).astype(np.float32) * 0.5
  b = rng.normal(size=(2, 3 * d)).astype(np.float32)
  weights = rng.normal(size=(2, n, d)).astype(np.float32)

  def reference(x, h0, w, b, lanes):
    del lanes
    out = jnp.zeros((2, n, d))
    first = 0
    for graph, size in enumerate(sizes):
      for k, order in ((0, range(size)), (1, reversed(range(size)))):
        h = h0[k, graph]
        for pos in order:
          h = gru_lib._gru_cell(
            h[None, None],
            x[k, first + pos][None, None],
            w[k : k + 1],
            b[k : k + 1],
          )[0][0, 0]
          out = out.at[k, first + pos].set(h)
      first += size
    return out

  def loss(gru, *args):
    return jnp.sum(gru(*args) * weights)

  args = (x, h0, w, b, lanes)
  got = fast_jit(
    jax.value_and_grad(functools.partial(loss, gru_lib.gru), (0, 1, 2, 3))
  )(*args)
  want = fast_jit(
    jax.value_and_grad(functools.partial(loss, reference), (0, 1, 2, 3))
  )(*args)
  np.testing.assert_allclose(got[0], want[0], rtol=1e-5)
  for a, e in zip(got[1], want[1], strict=True):
    np.testing.assert_allclose(a, e, rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(got[1][0][:, sum(sizes) :], 0.0)  # padding


def test_gru_initialization_per_direction():
  # PyTorch's xavier_uniform_ on a GRU's [3d, d] weight: bound
  # sqrt(6 / (d + 3d)), each direction a matrix of its own.
  d = 64
  readout = model_lib.GRUReadout(d)
  batch = batch_of(MOLS)
  topo = layout.Topology(jax.tree.map(jnp.asarray, batch.graphs), None)
  h = jnp.zeros((batch.graphs.nodes.shape[0], d))
  params = readout.init(jax.random.key(0), h, topo)["params"]
  bound = np.sqrt(6.0 / (4 * d))
  for name in ("w_in", "w_h"):
    w = np.asarray(params[name])
    assert w.shape == (2, d, 3 * d)
    assert np.abs(w).max() <= bound
    for k in range(2):  # uniform on [-bound, bound]: std bound / sqrt(3)
      assert abs(w[k].std() / (bound / np.sqrt(3)) - 1) < 0.02
      assert np.abs(w[k]).max() > 0.99 * bound


def test_move_rows_vjp_is_the_transposed_gather():
  rows = layout.RowMap(
    index=np.array([2, 0, 0, 1]),
    valid=np.array([True, True, False, True]),
    inverse=np.array([1, 3, 0]),
    inverse_valid=np.array([True, True, True]),
  )
  x = np.arange(6.0, dtype=np.float32).reshape(3, 2)
  weights = np.arange(8.0, dtype=np.float32).reshape(4, 2) + 1

  @fast_jit
  def both(x):
    moved = layout.move_rows(x, rows)
    got = jax.grad(lambda x: jnp.sum(layout.move_rows(x, rows) * weights))
    want = jax.grad(lambda x: jnp.sum(layout._move_rows(x, rows) * weights))
    return moved, got(x), want(x)

  moved, got, want = both(x)
  np.testing.assert_array_equal(moved, [[4, 5], [0, 1], [0, 0], [2, 3]])
  np.testing.assert_array_equal(got, want)


def test_mish_matches_its_definition():
  x = np.linspace(-40.0, 40.0, 2001, dtype=np.float32)
  want = x * np.tanh(np.logaddexp(0.0, x.astype(np.float64)))
  np.testing.assert_allclose(fast_jit(model_lib.mish)(x), want, atol=1e-5)
  grads = fast_jit(jax.vmap(jax.grad(model_lib.mish)))(x)
  reference = lambda t: t * jnp.tanh(jax.nn.softplus(t))
  want_grads = fast_jit(jax.vmap(jax.grad(reference)))(x)
  np.testing.assert_allclose(grads, want_grads, atol=1e-5)
