"""The bidirectional GRU of CoMPT's readout, with a hand-written backward pass.

:class:`GRULanes` pairs molecules into lanes (the largest with the smallest)
so that the sequential recurrence runs about half as many steps as one lane
per molecule would; :func:`gru` runs both directions over the lanes with a
custom VJP that keeps the gates of the forward pass instead of re-deriving
them.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp


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
