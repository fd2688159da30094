"""The dense attention layout: molecules packed into blocks, and the index
arrays every layer shares.

:func:`pack_blocks` places the molecules of a batch, in order, into a static
number of blocks of a static size (next fit); :class:`Topology` derives once
per forward pass where every atom and pair sits; :class:`Pairs` keeps the
bonded pairs (the only ones whose attention score differs from the row's
non-bonded score). :func:`move_rows` moves rows between the packed and the
flat layout and differentiates by gathering, not by XLA's scatter-add.

The two attention layouts of ``CoMPT(attention=...)`` compute the same
function. ``"dense"`` packs the molecules of a batch, in order, into a static
number of blocks of a static size (``blocks=(count, size)``,
:func:`pack_blocks`: next fit, a molecule never split), scatters the pair
distances once per forward pass into ``[count, size, size]`` blocks (pairs of
different molecules in a block stay empty) and runs ``kappa @ v`` as one
batched matrix product; ``"sparse"`` keeps the pair list and runs it as a ``[P,
d]`` gather and a segment sum. The input pipeline fits the blocks to each
dataset (``input_pipeline.padding_budgets``: the size is the largest molecule,
the count a high quantile of random batches), so the blocks cost about what
per-molecule blocks of the largest molecule in a typical batch did, with two
batch shapes per dataset instead of one per block size.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import jraph

# Capacity of the compacted bonded-pair list, per atom of the padded batch.
# Ordered bonded pairs = 2 x bonds = sum of atom degrees; the average heavy
# atom degree of MoleculeNet molecules is about 2.1 and exceeds 3 only for
# cage-like graphs denser than fullerenes; the padding atoms add margin.
BONDED_PER_ATOM = 3


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
