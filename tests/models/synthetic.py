"""Synthetic molecule-like batches in the format of `GraphBatch`.

Used by the model and training tests (and by speed measurements) so that they
need no data file: random connected "molecules" (a random
tree plus a few ring closures), symmetric bond ids from a bond vocabulary,
topological distances, every ordered atom pair of each molecule (self pairs
included), padded with `jraph.pad_with_graphs`.
"""

from __future__ import annotations

import itertools
import tempfile
from pathlib import Path
from typing import NamedTuple

import jraph
import numpy as np

from models import featurization

# The pipeline's sizes, so that synthetic batches fit the model as real ones.
ATOM_FEATURES = len(featurization.ATOM_FEATURIZER)
BOND_FEATURES = len(featurization.BOND_FEATURIZER)
DISCONNECTED_DISTANCE = featurization.DISCONNECTED_DISTANCE
# Featurized-molecule cache shared by the training and CLI tests (keyed by
# file checksum and featurizer version, so reuse across runs is safe).
TEST_CACHE = Path(tempfile.gettempdir()) / "graphsam-optax-test-cache"


class Batch(NamedTuple):
  """Same fields as `models.input_pipeline.GraphBatch`."""

  graphs: jraph.GraphsTuple
  labels: np.ndarray
  label_mask: np.ndarray
  graph_mask: np.ndarray


def bond_vocabulary() -> np.ndarray:
  """Row 0 all zeros, then every type x stereo x 3 binary flags vector."""
  rows = [np.zeros(BOND_FEATURES, np.float32)]
  for t, s, c, a, r in itertools.product(
    range(4), range(6), range(2), range(2), range(2)
  ):
    v = np.zeros(BOND_FEATURES, np.float32)
    v[t] = 1
    v[4 + s] = 1
    v[10:] = (c, a, r)
    rows.append(v)
  return np.stack(rows)


def _distances(n: int, bonds: list[tuple[int, int]]) -> np.ndarray:
  d = np.full((n, n), np.inf)
  np.fill_diagonal(d, 0)
  for i, j in bonds:
    d[i, j] = d[j, i] = 1
  for k in range(n):  # Floyd-Warshall; n is small
    d = np.minimum(d, d[:, k : k + 1] + d[k : k + 1, :])
  return np.where(np.isinf(d), DISCONNECTED_DISTANCE, d).astype(np.float32)


def molecule(
  rng: np.random.Generator, n: int, vocab_size: int, fragments: int = 1
):
  """Random atoms, bond-id matrix and distance matrix of one molecule."""
  nodes = np.zeros((n, ATOM_FEATURES), np.float32)
  nodes[np.arange(n), rng.integers(0, 101, n)] = 1
  nodes[:, 101:] = rng.random((n, ATOM_FEATURES - 101)) < 0.3
  bonds = []
  starts = (
    set(range(0, n, max(1, -(-n // fragments)))) if fragments > 1 else {0}
  )
  for i in range(1, n):
    if i not in starts:
      bonds.append((int(rng.integers(max(0, i - 4), i)), i))
  for _ in range(n // 6):  # ring closures
    i, j = sorted(rng.integers(0, n, 2))
    if j - i > 2:
      bonds.append((int(i), int(j)))
  bond_ids = np.zeros((n, n), np.int32)
  for i, j in bonds:
    bond_ids[i, j] = bond_ids[j, i] = rng.integers(1, vocab_size)
  return nodes, bond_ids, _distances(n, bonds)


def graphs_from_molecules(mols) -> jraph.GraphsTuple:
  """Unpadded GraphsTuple with all ordered pairs (row-major: i, then j)."""
  nodes, bond, dist, send, recv, n_node, n_edge = [], [], [], [], [], [], []
  offset = 0
  for x, b, d in mols:
    n = x.shape[0]
    i, j = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    nodes.append(x)
    bond.append(b[i, j].ravel())
    dist.append(d[i, j].ravel())
    recv.append(offset + i.ravel())
    send.append(offset + j.ravel())
    n_node.append(n)
    n_edge.append(n * n)
    offset += n
  return jraph.GraphsTuple(
    nodes=np.concatenate(nodes).astype(np.float32),
    edges={
      "bond": np.concatenate(bond).astype(np.int32),
      "distance": np.concatenate(dist).astype(np.float32),
    },
    senders=np.concatenate(send).astype(np.int32),
    receivers=np.concatenate(recv).astype(np.int32),
    n_node=np.asarray(n_node, np.int32),
    n_edge=np.asarray(n_edge, np.int32),
    globals=None,
  )


def pad(graphs: jraph.GraphsTuple, n_node: int, n_edge: int, n_graph: int):
  return jraph.pad_with_graphs(graphs, n_node, n_edge, n_graph)


def make_batch(
  mols,
  labels: np.ndarray,
  label_mask: np.ndarray | None = None,
  budget: tuple[int, int, int] | None = None,
) -> Batch:
  """Pads `mols` (list of molecule() triples) with their labels [G, T]."""
  graphs = graphs_from_molecules(mols)
  g = len(mols)
  if budget is None:
    nodes = int(graphs.n_node.sum())
    budget = (nodes + 1, int(graphs.n_edge.sum()) + 1, g + 1)
  padded = pad(graphs, *budget)
  g_pad = budget[2]
  labels = np.asarray(labels, np.float32).reshape(g, -1)
  if label_mask is None:
    label_mask = np.ones_like(labels, bool)
  lab = np.zeros((g_pad, labels.shape[1]), np.float32)
  msk = np.zeros((g_pad, labels.shape[1]), bool)
  lab[:g] = np.where(label_mask, labels, 0)
  msk[:g] = label_mask
  graph_mask = np.zeros(g_pad, bool)
  graph_mask[:g] = True
  return Batch(padded, lab, msk, graph_mask)


def round_up(x: int, m: int) -> int:
  return -(-x // m) * m


def random_batches(
  seed: int,
  num_batches: int,
  batch_size: int = 32,
  mean_atoms: float = 24.0,
  max_atoms: int = 90,
  num_tasks: int = 1,
  vocab_size: int = 193,
  classification: bool = True,
  budget: tuple[int, int, int] | None = None,
) -> list[Batch]:
  """BBBP-like batches: atom counts ~ 3 + Gamma with the given mean."""
  rng = np.random.default_rng(seed)
  if budget is None:
    n_pad = round_up(int(batch_size * mean_atoms * 1.2), 64)
    p_pad = round_up(int(batch_size * mean_atoms**2 * 1.6), 1024)
    budget = (n_pad, p_pad, batch_size + 1)
  out = []
  while len(out) < num_batches:
    sizes = np.clip(
      3 + rng.gamma(4.0, (mean_atoms - 3) / 4.0, batch_size).astype(int),
      3,
      max_atoms,
    )
    if sizes.sum() >= budget[0] or (sizes**2).sum() > budget[1]:
      continue
    mols = [molecule(rng, int(n), vocab_size) for n in sizes]
    if classification:
      y = (rng.random((batch_size, num_tasks)) < 0.5).astype(np.float32)
    else:
      y = rng.normal(size=(batch_size, num_tasks)).astype(np.float32)
    out.append(make_batch(mols, y, budget=budget))
  return out
