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

Attention layout (``attention=``): ``"dense"`` packs the molecules of a
batch into blocks and runs ``kappa @ v`` as one batched matrix product,
``"sparse"`` keeps the pair list (a gather and a segment sum); both compute
the same function (:mod:`models.layout`). The cost of a step, in FLOPs per
molecule, is worked out in the docs' training guide.

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

import flax.linen as nn
import jax
import jax.numpy as jnp
import jraph
import numpy as np

from models.gru import GRULanes
from models.gru import gru
from models.layout import Pairs
from models.layout import Topology

_NEG = -1e30


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
