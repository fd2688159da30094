"""A CoMPT-style molecular graph transformer over `jraph.GraphsTuple` batches.

CoMPT (Chen et al., IJCAI 2021) as trained in the GraphSAM paper: atom and
bond embeddings, layers of attention over all atom pairs of a molecule
(queries from atoms, keys from bond embeddings, values from atoms, outgoing
and incoming scores combined, a learnable topological-distance kernel), a
bidirectional GRU readout and an MLP head. Batches are
`models.input_pipeline.GraphBatch`: `graphs.nodes` f32[N, 115],
`graphs.edges["bond"]` i32[P] (row of the bond vocabulary, 0 = not bonded),
`graphs.edges["distance"]` f32[P], one pair per ordered atom pair of each
molecule.

The math of one encoder layer (`u = Norm(h)`, shared norm within a layer):

.. math::

  q_i = W_q u_i,\\quad v_j = W_v u_j,\\quad
  k_b = W_k (\\sqrt{d}(W_e f_b + b_e)) \\;\\text{for each bond vector } f_b,

  A_{ij} = \\operatorname{softmax}_j\\big(q_i \\cdot k_{b_{ij}} /
  \\sqrt{d_k}\\big),\\quad
  M_{ij} = (2 A_{ij} - \\delta_{ij} A_{ii})\\,\\kappa_\\lambda(D_{ij}),

  a_i = \\operatorname{mish}\\big(W_o \\textstyle\\sum_j M_{ij} v_j\\big),\\quad
  h_1 = u + \\operatorname{Norm}(a),\\quad
  h' = u + h_1 + \\operatorname{Norm}(\\operatorname{mish}(W_f h_1)),

with the kernel :math:`\\kappa_\\lambda(D)=e^{-\\lambda D}` or
:math:`\\operatorname{softmax}_j(-\\lambda D_{ij})`. CoMPT's incoming score
:math:`q_i\\cdot k_{ji}` equals the outgoing one because bond features are
symmetric and the pair embeddings are never updated (the reference code
computes an edge update and discards it), so "out + in - diag" is exactly
:math:`2A - \\operatorname{diag}(A)`; the tests check this against a
transcription that computes both.

What makes it cheap (reference notes §8). A pair embedding is an affine map
of the pair's 13 binary bond features (all zero for non-bonded pairs) and is
never updated, and the key map is affine, so a score is
:math:`q_i\\cdot k(f_{ij}) = q_i\\cdot k_0 + f_{ij}\\cdot(q_i M)`: per atom and
head, 1 + 13 numbers. Queries serve only in scores, so the query map folds
into those directions: one ``[N, d] x [d, 14 H]`` product per layer replaces
both the ``d x d`` query projection and any per-pair key (the authors' code
projects all ``90 x 90`` padded pair embeddings at full width in every layer,
about 1 GFLOP per molecule and layer). Every non-bonded pair of a row (the
self pair included) has the same score, so the softmax and the aggregation
reduce to one head-independent ``kappa @ v`` per molecule plus corrections
for the ~2 bonded pairs per atom (see :class:`PairAttention`); no ``d``-wide
tensor over all pairs is formed. Values and all dense layers run on atoms.

Attention layout (``attention=``), both the same function. ``"dense"``
packs the molecules of a batch, in order, into a static number of blocks of
a static size (``blocks=(count, size)``, :func:`pack_blocks`: next fit, a
molecule never split), scatters the pair distances once per forward pass
into ``[count, size, size]`` blocks (pairs of different molecules in a block
stay empty) and runs ``kappa @ v`` as one batched matrix product;
``"sparse"`` keeps the pair list and runs it as a ``[P, d]`` gather and a
segment sum. The input pipeline fits the blocks to each dataset
(``input_pipeline.padding_budgets``: the size is the largest molecule, the
count a high quantile of random batches), so the blocks cost about what
per-molecule blocks of the largest molecule in a typical batch did, with
two batch shapes per dataset instead of one per block size. Measured
before packing on this 2-core CPU (BBBP batches of 32, mean readout to
isolate the attention): dense was faster than sparse at every block size
BBBP has, 1.53x at 64 atoms per molecule, 1.16x at 256; the sparse gather is
memory bound while the dense product runs at matrix-multiply speed.

FLOPs per molecule (BBBP configuration: d = 256, 4 layers, 4 heads; n = 24
atoms on average, 9 blocks of 136 atoms for 32 molecules, T ~ 50 GRU steps,
the batch's largest molecule). Forward: atom embedding ``2 * 115 n d`` =
1.4 M; per layer the value, output and feed-forward maps ``6 n d^2`` = 9.4
M, scores ``2 n d (14 H)`` = 0.7 M and ``kappa @ v`` ``2 (9 / 32) 136^2 d``
= 2.7 M, so 12.9 M per layer and 52 M for 4; GRU readout: input gates
``2 n d 6d`` = 18.9 M, the recurrence ``2 T 2 d 3d`` = 39 M (each molecule
runs the batch's T steps), output map ``2 n 2d d`` = 6.3 M, so 65 M; about
118 MFLOP in all, 0.35 GFLOP for a training step (forward + backward), more
on the padded atoms of a batch. ``benchmarks/speed.py`` counts them on the
compiled step. The authors' code needs about 4 GFLOP per molecule for the
encoder's forward pass alone.

Deviations from the reference code, all deliberate:

- no learned positional embedding of the RDKit atom index (it makes the
  prediction depend on atom order; the batch format carries no such index);
- the readout ignores padding: the GRU runs over each molecule's own atoms
  (the reference runs it across the batch's padding, and its backward
  direction starts in the padding), its initial state is the max over real
  atoms only, and the mean is over real atoms (the reference sums padded
  positions too);
- the distance decay ``lambda`` is used as ``max(lambda, 0)``: the reference
  meant to clamp it (its ``clamp`` result is discarded); a negative value
  would turn the ``1e4`` distance of disconnected fragments into ``inf``.

Differences from the authors' data preparation, not of the model (see
``models.featurization``): a dative bond is featurized as a single bond
(theirs: as aromatic, through an unknown-value index of -1; ClinTox has 8
such bonds); the topological distance between disconnected fragments is
``1e4`` (theirs: RDKit's ``1e8``; both kernels give the same results while
the decay ``lambda > 0.0103``, where ``exp(-1e4 lambda)`` underflows to 0 in
float32 as ``exp(-1e8 lambda)`` does); and the authors drop molecules of 100
atoms or more (BBBP 2,039 -> 2,035) while we keep them.

The GRU readout (CoMPT's) reads atoms in the order of the batch, so it is not
invariant to permuting atoms within a molecule; ``readout="mean"`` (masked
mean of the encoder output, then the MLP head) is. Everything before the
readout is permutation equivariant.

Flax API: Linen. The training loop and every optimizer of `graphsam_optax`
work on the parameter pytree itself (GraphSAM holds perturbed parameters and
`eval_params` subtracts a tree from them), and ``model.apply(params, graphs)``
is a pure function of that pytree, so the train step is a plain jitted
function of ``(params, opt_state, batch)`` with no split/merge of NNX
objects; the module has no mutable state (no dropout, no batch norm).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import jraph
import numpy as np

_NEG = -1e30
# Capacity of the compacted bonded-pair list, per atom of the padded batch.
# Ordered bonded pairs = 2 x bonds = sum of atom degrees; the average heavy
# atom degree of MoleculeNet molecules is about 2.1 and exceeds 3 only for
# cage-like graphs denser than fullerenes; the padding atoms add margin.
BONDED_PER_ATOM = 3


def _positive_or_one(x):
  """``x`` where positive, else 1: a divisor that is safe to all orders.

  Padding rows of the softmax kernel sum to 0. ``max(x, 1e-30)`` keeps their
  value and gradient finite, but its second derivative overflows
  (``1 / 1e-60``) into NaN Hessian-vector products.
  """
  return jnp.where(x > 0, x, 1.0)


def mish(x):
  """``x tanh(softplus(x))`` with one exp: ``tanh(log(1 + e)) = n / (n + 2)``
  for ``n = e (e + 2)``, ``e = exp(x)``; equal to ``x`` in float32 above 20."""
  e = jnp.exp(jnp.minimum(x, 20.0))
  n = e * (e + 2.0)
  return jnp.where(x > 20.0, x, x * n / (n + 2.0))


def _torch_bias_init(fan_in: int):
  """PyTorch's default Linear bias init, U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
  bound = 1.0 / math.sqrt(fan_in)

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


def dense(features: int, fan_in: int, name: str | None = None) -> nn.Dense:
  """Glorot-uniform kernel (as CoMPT initializes) and PyTorch's bias init."""
  return nn.Dense(
    features,
    kernel_init=nn.initializers.xavier_uniform(),
    bias_init=_torch_bias_init(fan_in),
    name=name,
  )


class DenseParams(nn.Module):
  """The kernel and bias of :func:`dense`, for layers folded into others."""

  features: int
  fan_in: int

  @nn.compact
  def __call__(self):
    shape = (self.fan_in, self.features)
    kernel = self.param("kernel", nn.initializers.xavier_uniform(), shape)
    bias = self.param("bias", _torch_bias_init(self.fan_in), (self.features,))
    return kernel, bias


class LayerNorm(nn.Module):
  """CoMPT's layer norm: ``a (x - mean) / (std + eps) + b``, unbiased std."""

  eps: float = 1e-6

  @nn.compact
  def __call__(self, x):
    d = x.shape[-1]
    a = self.param("scale", nn.initializers.ones, (d,))
    b = self.param("bias", nn.initializers.zeros, (d,))
    mean = x.mean(-1, keepdims=True)
    var = jnp.sum(jnp.square(x - mean), -1, keepdims=True) / (d - 1)
    return a * (x - mean) / (jnp.sqrt(var) + self.eps) + b


class ScaleNorm(nn.Module):
  """``g x / max(||x||, eps)`` with a scalar ``g`` initialized to sqrt(d)."""

  eps: float = 1e-5

  @nn.compact
  def __call__(self, x):
    d = x.shape[-1]
    g = self.param("scale", nn.initializers.constant(math.sqrt(d)), ())
    norm = jnp.sqrt(jnp.sum(jnp.square(x), -1, keepdims=True))
    return x * (g / jnp.maximum(norm, self.eps))


def make_norm(kind: str, name: str | None = None) -> nn.Module:
  if kind == "layer":
    return LayerNorm(name=name)
  if kind == "scale":
    return ScaleNorm(name=name)
  raise ValueError(f"norm must be 'layer' or 'scale', got {kind!r}")


class RowMap(NamedTuple):
  """A partial bijection between the rows of two arrays, for gathers.

  ``move_rows(x, m)[r] = x[m.index[r]]`` where ``m.valid[r]``, else 0;
  ``m.inverse[s]`` is the output row holding input row ``s`` (``inverse_
  valid[s]`` False if none). The transpose of such a gather is the gather
  of ``m.transpose()``, so ``move_rows`` differentiates by gathering
  instead of XLA's scatter-add (several times slower on CPU).
  """

  index: jax.Array
  valid: jax.Array
  inverse: jax.Array
  inverse_valid: jax.Array

  def transpose(self) -> RowMap:
    return RowMap(self.inverse, self.inverse_valid, self.index, self.valid)


def _move_rows(x, rows: RowMap):
  mask = rows.valid.reshape(rows.valid.shape + (1,) * (x.ndim - 1))
  return jnp.where(mask, x[rows.index], 0.0)


@jax.custom_vjp
def move_rows(x, rows: RowMap):
  return _move_rows(x, rows)


move_rows.defvjp(
  lambda x, rows: (_move_rows(x, rows), rows),
  lambda rows, dy: (_move_rows(dy, rows.transpose()), None),
)


def pack_blocks(n_node, size: int):
  """Packs molecules, in order, into blocks of ``size`` atoms (next fit).

  A molecule goes into the current block if it fits after the atoms already
  there, else it opens the next block; a molecule of 0 atoms (padding)
  takes no room. ``models.input_pipeline.pack_blocks`` is the NumPy twin the
  input pipeline uses to choose a batch's budget; the two agree exactly.

  Args:
    n_node: i32[G] atoms per molecule.
    size: the static block size (at least the largest molecule).

  Returns:
    ``(block, start)``, i32[G] each: the block of every molecule and the
    position of its first atom in that block.
  """

  def place(carry, n):
    block, fill = carry
    opens = (fill + n > size) & (fill > 0)
    block = block + opens.astype(block.dtype)
    fill = jnp.where(opens, 0, fill)
    return (block, fill + n), (block, fill)

  zero = jnp.zeros((), n_node.dtype)
  _, (block, start) = jax.lax.scan(place, (zero, zero), n_node)
  return block, start


class Topology:
  """Index arrays shared by all layers, derived once from a padded batch.

  All are traced arrays unless noted.

  Attributes:
    node_graph: i32[N] graph of each node.
    node_pos: i32[N] position of each node within its graph.
    node_real: bool[N] node belongs to a real (non-padding) graph.
    graph_real: bool[G] real graphs (``jraph.get_graph_padding_mask``).
    n_node: i32[G] atoms per graph, 0 for padding graphs.
    offsets: i32[G] index of each graph's first node.
    block_count, block_size: static ints, the dense layout's blocks.
    graph_block, graph_start: i32[G] block of each molecule and the position
      of its first atom there (:func:`pack_blocks`).
    too_large: bool[] the molecules do not fit the blocks.
    blocks: RowMap from nodes to the ``block_count * block_size`` slots.
  """

  def __init__(self, graphs: jraph.GraphsTuple, blocks: tuple[int, int] | None):
    n_nodes = graphs.nodes.shape[0]
    n_graphs = graphs.n_node.shape[0]
    n_pairs = graphs.senders.shape[0]
    if blocks is None:
      # One block per graph, each as large as any real molecule can be
      # (n <= N - 1 atoms, n**2 <= P pairs): always fits, slow.
      blocks = (n_graphs, min(n_nodes - 1, math.isqrt(n_pairs)))
    self.block_count = max(int(blocks[0]), 1)
    self.block_size = max(int(blocks[1]), 1)
    self.graph_real = jraph.get_graph_padding_mask(graphs)
    self.n_node = jnp.where(self.graph_real, graphs.n_node, 0)
    self.offsets = jnp.cumsum(graphs.n_node) - graphs.n_node
    self.node_graph = jnp.repeat(
      jnp.arange(n_graphs), graphs.n_node, total_repeat_length=n_nodes
    )
    self.node_pos = jnp.arange(n_nodes) - self.offsets[self.node_graph]
    self.node_real = self.graph_real[self.node_graph]
    self.node_count = jnp.where(
      self.node_real, self.n_node[self.node_graph], 1
    ).astype(jnp.float32)
    self.graph_block, self.graph_start = pack_blocks(
      self.n_node, self.block_size
    )
    self.too_large = jnp.any(self.n_node > self.block_size) | jnp.any(
      self.graph_block >= self.block_count
    )
    slots = self.block_count * self.block_size
    node_slot = (self.graph_block * self.block_size + self.graph_start)[
      self.node_graph
    ] + self.node_pos
    placed = self.node_real & (node_slot < slots)
    node_slot = jnp.where(placed, node_slot, slots)  # out of range: dropped
    slot_node = (
      jnp.full(slots, -1, jnp.int32)
      .at[node_slot]
      .set(jnp.arange(n_nodes, dtype=jnp.int32), mode="drop")
    )
    self.blocks = RowMap(
      index=jnp.maximum(slot_node, 0),
      valid=slot_node >= 0,
      inverse=jnp.minimum(node_slot, slots - 1),
      inverse_valid=placed,
    )

  def to_blocks(self, x):
    """[N, ...] node array to [blocks, size, ...] (empty slots zero)."""
    y = move_rows(x, self.blocks)
    return y.reshape((self.block_count, self.block_size) + x.shape[1:])

  def from_blocks(self, y):
    """[blocks, size, ...] back to [N, ...] (nodes of padding graphs: 0)."""
    y = y.reshape((-1,) + y.shape[2:])
    return move_rows(y, self.blocks.transpose())

  def pairs_to_blocks(self, graphs, values, fill):
    """Scatters per-pair values into [blocks, size, size] (mode drop)."""
    g = self.node_graph[graphs.receivers]
    start = self.graph_start[g]
    i = start + self.node_pos[graphs.receivers]
    j = start + self.node_pos[graphs.senders]
    size = self.block_size
    ok = self.graph_real[g] & (i < size) & (j < size)
    block = jnp.where(ok, self.graph_block[g], self.block_count)  # dropped
    out = jnp.full((self.block_count, size, size), fill, values.dtype)
    return out.at[block, i, j].set(values, mode="drop")


class Pairs:
  """Pair data shared by all layers, built once per forward pass.

  Attributes:
    receivers, senders, dist: the batch's pair list (sparse layout).
    block_dist, block_valid: ``[G, n_max, n_max]`` distances and real-pair
      mask (dense layout; ``None`` otherwise).
    bonded_recv, bonded_send, bonded_bond, bonded_dist, bonded_valid: the
      bonded pairs (bond id != 0) compacted to a static capacity of
      ``BONDED_PER_ATOM * N`` entries; ``overflow`` is True if a batch has
      more (the model then returns NaN rather than a wrong number).
  """

  def __init__(self, graphs: jraph.GraphsTuple, topo: Topology, layout: str):
    bond = graphs.edges["bond"]
    self.receivers, self.senders = graphs.receivers, graphs.senders
    self.dist = graphs.edges["distance"]
    if layout == "dense":
      self.block_valid = topo.pairs_to_blocks(
        graphs, jnp.ones_like(bond, bool), False
      )
      self.block_dist = topo.pairs_to_blocks(graphs, self.dist, 0.0)
    else:
      self.block_valid = self.block_dist = None
    capacity = min(BONDED_PER_ATOM * graphs.nodes.shape[0], bond.shape[0])
    is_bonded = (bond != 0) & topo.node_real[graphs.receivers]
    (idx,) = jnp.nonzero(is_bonded, size=capacity, fill_value=0)
    self.overflow = jnp.sum(is_bonded) > capacity
    self.bonded_valid = jnp.arange(capacity) < jnp.sum(is_bonded)
    self.bonded_recv = graphs.receivers[idx]
    self.bonded_send = graphs.senders[idx]
    self.bonded_bond = bond[idx]
    self.bonded_dist = self.dist[idx]


class PairAttention(nn.Module):
  """One CoMPT attention block, computed in factored form (module docstring).

  Every non-bonded pair of row ``i`` (self pair included) has the same key
  ``k_0`` and hence the same score ``s_i0 = q_i . k_0``; only the ``~2n``
  bonded pairs of a molecule have other scores. With ``e_0 = exp(s_i0 - m_i)``
  and ``e_p = exp(s_p - m_i)`` for bonded pairs ``p = (i <- j)``:

  .. math::

    Z_i = n\\,e_0 + \\sum_{p}(e_p - e_0),\\qquad
    \\textstyle\\sum_j (2-\\delta_{ij}) A_{ij}\\kappa_{ij} v_j
    = \\big(2 e_0 S_i + 2\\sum_p (e_p - e_0)\\kappa_p v_j
    - e_0 \\kappa_{ii} v_i\\big) / Z_i,

  where ``S = kappa @ v`` is the kernel-weighted sum of values over the
  molecule: the only ``n^2``-sized work, head independent, one batched
  matrix product in the dense layout. Scores, softmax normalizer and
  corrections cost ``O(bonds * d)``; no ``[pairs, heads]`` softmax is
  formed. The function is exactly CoMPT's (tests compare with a direct
  transcription).
  """

  d_model: int
  num_heads: int
  kernel: str  # "exp" or "softmax"
  layout: str  # "dense" or "sparse"
  lambda_init: float = 0.1

  @nn.compact
  def __call__(self, u, bond_basis, vocabulary, topo: Topology, pairs: Pairs):
    d, heads = self.d_model, self.num_heads
    dk = d // heads
    n_nodes = u.shape[0]
    v = dense(d, d, "value")(u)
    lam = self.param("lambda", nn.initializers.constant(self.lambda_init), ())
    lam = jnp.maximum(lam, 0.0)

    # Keys are affine in the 13 bond features: k(f) = k_0 + f @ M, where
    # k_0 is the key of "no bond" and M the key map's linear part. A score
    # q . k(f) is then q . k_0 + f @ (q . M): per atom and head, 1 + 13
    # numbers. Queries are used only in scores, so the query map folds into
    # those 1 + 13 directions: u @ (W_q @ K) replaces the d x d projection.
    basis_keys = dense(d, d, "key")(bond_basis)  # [1 + 13, d]
    dirs = jnp.concatenate([basis_keys[:1], basis_keys[1:] - basis_keys[0]])
    n_dir = dirs.shape[0]
    # Block-diagonal over heads: column (h, f) holds direction f of head h.
    dirs = dirs.reshape(n_dir, heads, dk)
    eye = jnp.eye(heads, dtype=dirs.dtype)
    blocks = jnp.einsum("fhc,hg->hcgf", dirs, eye).reshape(d, heads * n_dir)
    blocks = blocks / math.sqrt(dk)
    w_q, b_q = DenseParams(d, d, name="query")()
    scores = u @ (w_q @ blocks) + b_q @ blocks  # [N, H * 14]
    scores = scores.reshape(n_nodes, heads, n_dir)
    s0 = scores[:, :, 0]  # the score of every non-bonded pair: [N, H]
    recv, send = pairs.bonded_recv, pairs.bonded_send
    feats = vocabulary[pairs.bonded_bond]  # [Nb, 13]
    sb = s0[recv] + jnp.einsum("phf,pf->ph", scores[recv, :, 1:], feats)
    sb = jnp.where(pairs.bonded_valid[:, None], sb, -jnp.inf)  # [Nb, H]
    m = jnp.maximum(s0, jax.ops.segment_max(sb, recv, num_segments=n_nodes))
    m = jax.lax.stop_gradient(m)
    e0 = jnp.exp(s0 - m)
    delta = jnp.where(
      pairs.bonded_valid[:, None], jnp.exp(sb - m[recv]) - e0[recv], 0.0
    )  # [Nb, H]
    z = topo.node_count[:, None] * e0 + jax.ops.segment_sum(
      delta, recv, num_segments=n_nodes
    )

    # Distance kernel: S = kappa @ v over each molecule, plus the pieces
    # the correction terms need (kappa of bonded pairs and of self pairs).
    smooth, kappa_bonded, kappa_self = self._smooth(lam, v, topo, pairs)
    vh = v.reshape(n_nodes, heads, dk)
    corr = jax.ops.segment_sum(
      (delta * kappa_bonded[:, None])[:, :, None] * vh[send],
      recv,
      num_segments=n_nodes,
    )
    num = 2.0 * (e0[:, :, None] * smooth.reshape(n_nodes, heads, dk) + corr)
    num = num - (e0 * kappa_self[:, None])[:, :, None] * vh
    out = num / z[:, :, None]
    return mish(dense(d, d, "out")(out.reshape(n_nodes, d)))

  def _smooth(self, lam, v, topo: Topology, pairs: Pairs):
    """``(kappa @ v, kappa of bonded pairs, kappa_ii)`` in the chosen layout."""
    if self.kernel not in ("exp", "softmax"):
      raise ValueError(
        f"kernel must be 'exp' or 'softmax', got {self.kernel!r}"
      )
    if self.layout == "dense":
      kappa = jnp.where(pairs.block_valid, jnp.exp(-lam * pairs.block_dist), 0)
      if self.kernel == "softmax":  # D_ii = 0 is the row maximum: no overflow
        rows = topo.from_blocks(jnp.sum(kappa, axis=-1))  # [N], 0 if padding
        kappa = kappa / _positive_or_one(jnp.sum(kappa, -1, keepdims=True))
      smooth = topo.from_blocks(
        jnp.einsum("gij,gjd->gid", kappa, topo.to_blocks(v))
      )
    elif self.layout == "sparse":
      kappa = jnp.exp(-lam * pairs.dist)
      smooth_raw = jax.ops.segment_sum(
        kappa[:, None] * v[pairs.senders],
        pairs.receivers,
        num_segments=v.shape[0],
      )
      if self.kernel == "softmax":
        rows = jax.ops.segment_sum(
          kappa, pairs.receivers, num_segments=v.shape[0]
        )
        smooth = smooth_raw / _positive_or_one(rows)[:, None]
      else:
        smooth = smooth_raw
    else:
      raise ValueError(f"layout must be 'dense' or 'sparse', got {self.layout}")
    kappa_bonded = jnp.exp(-lam * pairs.bonded_dist)
    if self.kernel == "softmax":
      rows = jnp.where(topo.node_real, _positive_or_one(rows), 1.0)
      return smooth, kappa_bonded / rows[pairs.bonded_recv], 1.0 / rows
    return smooth, kappa_bonded, jnp.ones(v.shape[0], v.dtype)


class EncoderLayer(nn.Module):
  d_model: int
  num_heads: int
  kernel: str
  norm: str
  layout: str

  @nn.compact
  def __call__(self, h, bond_basis, vocabulary, topo, pairs):
    norm = make_norm(self.norm, "norm")
    u = norm(h)
    a = PairAttention(
      self.d_model, self.num_heads, self.kernel, self.layout, name="attention"
    )(u, bond_basis, vocabulary, topo, pairs)
    h1 = u + norm(a)
    f = mish(dense(self.d_model, self.d_model, "feed_forward")(h1))
    return u + h1 + norm(f)


class GRULanes(NamedTuple):
  """Where the lanes of the bidirectional GRU read.

  A lane runs two molecules one after the other, each over its own atoms
  (forward direction: first atom to last; backward: last to first) from its
  own initial state: the largest molecule with the smallest, the second
  largest with the second smallest, and so on, so that ``G`` molecules need
  ``ceil(G / 2)`` lanes and the longest lane is barely longer than the
  largest molecule. Every step multiplies a ``[2, lanes, d]`` state, so
  pairing halves the sequential work of one lane per molecule.

  Attributes:
    offsets: i32[G] index of each molecule's first atom.
    n_node: i32[G] atoms per molecule (0 for padding graphs: no steps).
    node_graph: i32[N] molecule of each atom.
    node_pos: i32[N] position of each atom in its molecule.
    first, second: i32[L] the molecules of each lane, in running order
      (``second`` repeats ``first`` where a lane runs one molecule).
    first_len, lane_len: i32[L] atoms of the lane's first molecule, and of
      both (the step where, and after which, a lane changes molecule / ends).
  """

  offsets: jax.Array
  n_node: jax.Array
  node_graph: jax.Array
  node_pos: jax.Array
  first: jax.Array
  second: jax.Array
  first_len: jax.Array
  lane_len: jax.Array

  @classmethod
  def pair(cls, offsets, n_node, node_graph, node_pos) -> GRULanes:
    """Lanes of the molecules ``n_node``, paired largest with smallest."""
    order = jnp.argsort(-n_node, stable=True)
    lanes = (n_node.shape[0] + 1) // 2
    first = order[:lanes]
    # Lane i pairs order[i] with order[G - 1 - i]; with G odd, the middle
    # lane runs order[lanes - 1] alone.
    second = jnp.where(
      jnp.arange(lanes) < n_node.shape[0] // 2, order[::-1][:lanes], first
    )
    first_len = n_node[first]
    lane_len = first_len + jnp.where(second != first, n_node[second], 0)
    return cls(
      offsets, n_node, node_graph, node_pos, first, second, first_len, lane_len
    )

  @property
  def steps(self):
    """The longest lane: the loops' trip count."""
    return jnp.max(self.lane_len)

  def rows(self, t, num_nodes: int):
    """At step ``t``: the rows of a ``[2 * N, ...]`` (direction, atom) array
    the lanes read (``[2, L]``), which lanes have an atom there, and which
    start their second molecule (and so its initial state)."""
    in_second = t >= self.first_len
    molecule = jnp.where(in_second, self.second, self.first)
    pos = jnp.where(in_second, t - self.first_len, t)
    n = self.n_node[molecule]
    node = self.offsets[molecule] + jnp.stack([pos, n - 1 - pos])
    node = jnp.clip(node, 0, num_nodes - 1)
    row = node + num_nodes * jnp.arange(2)[:, None]
    switch = (t == self.first_len) & (self.second != self.first)
    return row, t < self.lane_len, switch

  def previous_rows(self, num_nodes: int):
    """For every (direction, atom) row, the row read one step before in
    that atom's molecule, and whether it is the molecule's first step (its
    state before is ``h0``)."""
    node = jnp.arange(num_nodes)
    first = jnp.stack(
      [self.node_pos == 0, self.node_pos == self.n_node[self.node_graph] - 1]
    )
    before = jnp.clip(jnp.stack([node - 1, node + 1]), 0, num_nodes - 1)
    return before + num_nodes * jnp.arange(2)[:, None], first


def _gru_cell(h, x, w, b):
  """PyTorch's GRU cell on both directions; returns h' and the gates."""
  g = jnp.einsum("kgd,kde->kge", h, w) + b[:, None, :]
  xr, xz, xn = jnp.split(x, 3, axis=-1)
  gr, gz, gn = jnp.split(g, 3, axis=-1)
  r = jax.nn.sigmoid(xr + gr)
  z = jax.nn.sigmoid(xz + gz)
  c = jnp.tanh(xn + r * gn)
  return (1.0 - z) * c + z * h, (r, z, c, gn)


def _gru_forward(x, h0, w, b, lanes: GRULanes, keep_gates: bool):
  """Runs the lanes; returns ``[2 * N, d]`` states (and ``[2 * N, 4d]``
  gates ``r, z, c, gn`` when ``keep_gates``), rows of padding atoms zero."""
  num_nodes = x.shape[1]
  rows = x.reshape(2 * num_nodes, -1)
  d = h0.shape[-1]
  width = 5 * d if keep_gates else d
  out_of_range = 2 * num_nodes
  h_second = h0[:, lanes.second]

  def step(t, carry):
    h, saved = carry
    read, active, switch = lanes.rows(t, num_nodes)
    h = jnp.where(switch[None, :, None], h_second, h)
    h, gates = _gru_cell(h, rows[read], w, b)
    row = jnp.concatenate([h, *gates], -1) if keep_gates else h
    write = jnp.where(active[None, :], read, out_of_range)
    return h, saved.at[write].set(row, mode="drop")

  saved = jnp.zeros((2 * num_nodes, width), x.dtype)
  _, saved = jax.lax.fori_loop(
    0, lanes.steps, step, (h0[:, lanes.first], saved)
  )
  if keep_gates:
    return saved[:, :d], saved[:, d:]
  return saved, None


@jax.custom_vjp
def gru(x, h0, w, b, lanes: GRULanes):
  """Bidirectional GRU over each molecule's atoms: x [2, N, 3d] input gates
  (``x W_in + b_in`` of each direction and atom), h0 [2, G, d], recurrent
  w [2, d, 3d], b [2, 3d]; returns the states [2, N, d] (zero on padding
  atoms).

  The lanes (:class:`GRULanes`: two molecules each) advance together for as
  many steps as the longest lane has atoms (a dynamic trip count: no static
  sequence length). Every step gathers its lanes' input rows and writes
  their states back to their atoms' rows, so no buffer is sized by a
  sequence length. Hand-written backward pass: one ``[2, L, 3d] x [2, 3d,
  d]`` product per step; the weight gradient is one product over the atoms
  after the loop.
  """
  states, _ = _gru_forward(x, h0, w, b, lanes, keep_gates=False)
  return states.reshape(2, x.shape[1], -1)


def _gru_fwd(x, h0, w, b, lanes):
  states, gates = _gru_forward(x, h0, w, b, lanes, keep_gates=True)
  return states.reshape(2, x.shape[1], -1), (states, gates, h0, w, lanes)


def _gru_bwd(res, d_states):
  states, gates, h0, w, lanes = res
  num_nodes = states.shape[0] // 2
  d = h0.shape[-1]
  d_out = d_states.reshape(2 * num_nodes, d)
  out_of_range = 2 * num_nodes
  steps = lanes.steps

  def step(i, carry):
    dh, dh_second, dx = carry
    t = steps - 1 - i
    read, active, switch = lanes.rows(t, num_nodes)
    before, _, _ = lanes.rows(t - 1, num_nodes)
    hp = jnp.where((t == 0) | switch[None, :, None], 0.0, states[before])
    hp = jnp.where(switch[None, :, None], h0[:, lanes.second], hp)
    hp = jnp.where(t == 0, h0[:, lanes.first], hp)
    r, z, c, gn = jnp.split(gates[read], 4, axis=-1)
    dh = dh + jnp.where(active[None, :, None], d_out[read], 0.0)
    da_n = dh * (1.0 - z) * (1.0 - c * c)
    da_z = dh * (hp - c) * z * (1.0 - z)
    da_r = da_n * gn * r * (1.0 - r)
    dg = jnp.concatenate([da_r, da_z, da_n * r], -1)
    write = jnp.where(active[None, :], read, out_of_range)
    dx = dx.at[write].set(jnp.concatenate([da_r, da_z, da_n], -1), mode="drop")
    dh = dh * z + jnp.einsum("kge,kde->kgd", dg, w)
    # A lane's second molecule starts from its own initial state: the
    # gradient before that step goes there, not to the first molecule.
    dh_second = jnp.where(switch[None, :, None], dh, dh_second)
    dh = jnp.where(switch[None, :, None], 0.0, dh)
    return dh, dh_second, dx

  dx = jnp.zeros((2 * num_nodes, 3 * d), states.dtype)
  zero = jnp.zeros_like(h0[:, lanes.first])
  dh_first, dh_second, dx = jax.lax.fori_loop(0, steps, step, (zero, zero, dx))
  paired = (lanes.second != lanes.first)[None, :, None]
  dh0 = (
    jnp.zeros_like(h0)
    .at[:, lanes.first]
    .add(dh_first)
    .at[:, lanes.second]
    .add(jnp.where(paired, dh_second, 0.0))
  )
  # Gradients of the gates g = h W + b equal those of the inputs x but for
  # the candidate's third, which r scales; rows of padding atoms are zero.
  before, first = lanes.previous_rows(num_nodes)
  h_first = h0[:, lanes.node_graph]  # [2, N, d]
  hp = jnp.where(
    first[..., None], h_first, states[before.reshape(-1)].reshape(2, -1, d)
  )
  dx = dx.reshape(2, num_nodes, 3 * d)
  r = gates[:, :d].reshape(2, num_nodes, d)
  dg = jnp.concatenate([dx[..., : 2 * d], dx[..., 2 * d :] * r], -1)
  dw = jnp.einsum("knd,kne->kde", hp, dg)
  db = jnp.sum(dg, axis=1)
  return dx, dh0, dw, db, None


gru.defvjp(_gru_fwd, _gru_bwd)


class GRUReadout(nn.Module):
  """CoMPT's bidirectional-GRU readout over each molecule's own atoms.

  Initial state (both directions): max over the molecule's atoms of
  ``mish(h + b)``; outputs ``mish(W [h_fwd; h_bwd])`` averaged over atoms.
  Input projections of both directions run as one matrix product on the
  atoms; only the ``[2, G, d] x [2, d, 3d]`` recurrence is sequential, for
  as many steps as the batch's largest molecule has atoms. Each direction's
  ``[d, 3d]`` matrices are initialized as PyTorch's ``xavier_uniform_``
  initializes a GRU's ``[3d, d]`` weight (fans ``d`` and ``3d``, per
  direction), as the authors' CoMPT does.
  """

  d_model: int

  @nn.compact
  def __call__(self, h, topo: Topology):
    d = self.d_model
    n_graphs = topo.n_node.shape[0]
    bias = self.param("bias", _torch_bias_init(d), (d,))
    init = jax.ops.segment_max(
      jnp.where(topo.node_real[:, None], mish(h + bias), -jnp.inf),
      topo.node_graph,
      num_segments=n_graphs,
    )
    init = jnp.where(topo.graph_real[:, None], init, 0.0)
    # batch_axis: the direction axis is not part of a matrix's fans.
    xavier = nn.initializers.xavier_uniform(batch_axis=(0,))
    w_in = self.param("w_in", xavier, (2, d, 3 * d))  # [dir, d, (r, z, n)]
    b_in = self.param("b_in", _torch_bias_init(d), (2, 3 * d))
    w_h = self.param("w_h", xavier, (2, d, 3 * d))
    b_h = self.param("b_h", _torch_bias_init(d), (2, 3 * d))
    # Both directions' input gates in one [N, d] x [d, 6d] product.
    w_flat = jnp.swapaxes(w_in, 0, 1).reshape(d, 6 * d)
    x_in = (h @ w_flat).reshape(-1, 2, 3 * d) + b_in
    h0 = jnp.broadcast_to(init[None], (2, n_graphs, d))
    lanes = GRULanes.pair(
      topo.offsets, topo.n_node, topo.node_graph, topo.node_pos
    )
    states = gru(jnp.swapaxes(x_in, 0, 1), h0, w_h, b_h, lanes)  # [2, N, d]
    states = jnp.swapaxes(states, 0, 1).reshape(-1, 2 * d)  # [N, (fwd, bwd)]
    y = mish(dense(d, 2 * d, "out")(states))
    total = jax.ops.segment_sum(
      jnp.where(topo.node_real[:, None], y, 0.0),
      topo.node_graph,
      num_segments=n_graphs,
    )
    return total / jnp.maximum(topo.n_node, 1)[:, None]


class CoMPT(nn.Module):
  """CoMPT-style graph transformer; ``apply`` returns logits ``[G, tasks]``.

  Attributes:
    num_tasks: outputs per molecule.
    bond_vocabulary: the ``[V, 13]`` bond feature rows (row 0 = not bonded)
      that ``edges["bond"]`` indexes, as a tuple of tuples.
    d_model: hidden width (256 in the paper).
    num_layers: encoder layers.
    num_heads: attention heads (must divide ``d_model``).
    kernel: distance kernel, ``"exp"`` or ``"softmax"``.
    norm: ``"layer"`` (CoMPT's LayerNorm) or ``"scale"`` (ScaleNorm).
    head_layers: layers of the output MLP (>= 1).
    readout: ``"gru"`` (CoMPT) or ``"mean"`` (permutation invariant).
    attention: ``"dense"`` or ``"sparse"`` layout (same function).
    blocks: ``(count, size)``, the static layout of the dense attention:
      molecules are packed in order into ``count`` blocks of ``size`` atoms
      (:func:`pack_blocks`); ``size`` at least the largest molecule. ``None``
      gives every graph a block of a size derived from the batch's shapes
      (always fits, slower).
  """

  num_tasks: int
  bond_vocabulary: tuple
  d_model: int = 256
  num_layers: int = 4
  num_heads: int = 4
  kernel: str = "exp"
  norm: str = "layer"
  head_layers: int = 2
  readout: str = "gru"
  attention: str = "dense"
  blocks: tuple[int, int] | None = None

  @nn.compact
  def __call__(
    self, graphs: jraph.GraphsTuple, blocks: tuple[int, int] | None = None
  ):
    """Logits ``[G, num_tasks]``; ``blocks`` (static) overrides the field."""
    d = self.d_model
    if d % self.num_heads:
      raise ValueError(f"num_heads {self.num_heads} must divide d_model {d}")
    graphs = jax.tree.map(jnp.asarray, graphs)
    topo = Topology(graphs, blocks or self.blocks)
    vocab = jnp.asarray(np.asarray(self.bond_vocabulary, np.float32))
    scale = math.sqrt(d)
    h = dense(d, graphs.nodes.shape[-1], "atom_embed")(graphs.nodes) * scale
    # The bond embedding of "no bond" and of each unit feature vector: with
    # the (affine) key maps, these determine every pair's key.
    n_feat = vocab.shape[-1]
    basis = jnp.concatenate([jnp.zeros((1, n_feat)), jnp.eye(n_feat)])
    bond_basis = dense(d, n_feat, "bond_embed")(basis) * scale
    pairs = Pairs(graphs, topo, self.attention)
    for layer in range(self.num_layers):
      h = EncoderLayer(
        d,
        self.num_heads,
        self.kernel,
        self.norm,
        self.attention,
        name=f"layer_{layer}",
      )(h, bond_basis, vocab, topo, pairs)
    h = make_norm(self.norm, "final_norm")(h)
    if self.readout == "gru":
      pooled = GRUReadout(d, name="readout")(h, topo)
    elif self.readout == "mean":
      total = jax.ops.segment_sum(
        jnp.where(topo.node_real[:, None], h, 0.0),
        topo.node_graph,
        num_segments=topo.n_node.shape[0],
      )
      pooled = total / jnp.maximum(topo.n_node, 1)[:, None]
    else:
      raise ValueError(f"readout must be 'gru' or 'mean', got {self.readout!r}")
    logits = MLPHead(
      d, self.num_tasks, self.head_layers, self.norm, name="head"
    )(pooled)
    # A batch outside the static capacities gives NaN, never a wrong number.
    bad = pairs.overflow
    if self.attention == "dense":
      bad = bad | topo.too_large
    return jnp.where(bad, jnp.nan, logits)


class MLPHead(nn.Module):
  """``head_layers - 1`` blocks of Dense, mish, norm; then Dense(tasks)."""

  d_model: int
  num_tasks: int
  num_layers: int
  norm: str

  @nn.compact
  def __call__(self, x):
    for i in range(self.num_layers - 1):
      x = mish(dense(self.d_model, x.shape[-1], f"hidden_{i}")(x))
      x = make_norm(self.norm, f"norm_{i}")(x)
    return dense(self.num_tasks, x.shape[-1], "output")(x)


def count_params(params) -> int:
  return int(sum(np.size(x) for x in jax.tree.leaves(params)))


def bond_vocabulary_tuple(vocab: Sequence[Sequence[float]]) -> tuple:
  """The hashable form of a ``[V, 13]`` vocabulary for ``CoMPT``."""
  return tuple(tuple(float(x) for x in row) for row in np.asarray(vocab))
