"""Padded batches of molecules as ``jraph.GraphsTuple``s, prepared in NumPy.

A batch holds ``batch_size`` molecules. Its edges are all ordered atom pairs
``(i <- j)`` of each molecule, self pairs included, never across molecules;
each pair carries a bond vocabulary id and a topological distance (see
:class:`GraphBatch` and :mod:`models.featurization`). Batches are padded with
``jraph.pad_with_graphs`` to the smallest fitting budget of a small fixed set
(``padding_budgets``), so a jitted step compiles a handful of shapes per
dataset rather than one per batch. Padding graphs are masked out by
``graph_mask``, missing labels by ``label_mask``.

Everything here is NumPy on the host: nothing is put on a device.
"""

from __future__ import annotations

import dataclasses
import math
import os
import warnings
from collections.abc import Iterator
from collections.abc import Sequence
from typing import NamedTuple

import jraph
import numpy as np

from models import datasets
from models import featurization
from models import splits


class GraphsTupleSize(NamedTuple):
  """A padding budget: nodes, edges (atom pairs) and graphs per batch."""

  n_node: int
  n_edge: int
  n_graph: int


class GraphBatch(NamedTuple):
  """One padded batch: the format between the input pipeline and the model.

  Attributes:
    graphs: nodes f32[N_pad, 115], the CoMPT atom features (padding rows 0);
      edges {"bond": i32[P_pad], "distance": f32[P_pad]}: for the ordered
      atom pair ``(i <- j)`` the row of ``BondFeaturizer.vocabulary()`` (row 0
      = not bonded, also self pairs and padding) and the topological distance
      (0 for ``i == j``, ``DISCONNECTED_DISTANCE`` between fragments);
      senders (atom ``j``), receivers (atom ``i``) i32[P_pad], global node
      indices: all ``n * n`` ordered pairs of each molecule, self pairs
      included, never across molecules; n_node, n_edge (``= n_node ** 2``)
      i32[G_pad]; globals None. The last graph(s) are jraph padding graphs.
    labels: f32[G_pad, T] targets, 0 where missing or padding (standardized
      when a TargetScaler is given).
    label_mask: bool[G_pad, T] True for present labels of real molecules.
    graph_mask: bool[G_pad] True for real molecules.
  """

  graphs: jraph.GraphsTuple
  labels: np.ndarray
  label_mask: np.ndarray
  graph_mask: np.ndarray


@dataclasses.dataclass(frozen=True)
class TargetScaler:
  """Per-task standardization ``(y - mean) / std`` of regression targets.

  Attributes:
    mean: f32[T] training mean (NaNs ignored).
    std: f32[T] training standard deviation (population, as ``np.std`` in
      the GraphSAM code; 1 where it is 0 or undefined).
  """

  mean: np.ndarray
  std: np.ndarray

  @classmethod
  def fit(cls, labels: np.ndarray) -> TargetScaler:
    """Scaler from f32[M, T] training labels (NaN = missing)."""
    labels = np.asarray(labels, np.float64)
    present = ~np.isnan(labels)
    count = present.sum(0)
    safe = np.where(present, labels, 0.0)
    mean = safe.sum(0) / np.maximum(count, 1)
    var = (np.where(present, labels - mean, 0.0) ** 2).sum(0)
    std = np.sqrt(var / np.maximum(count, 1))
    std = np.where((std > 0) & np.isfinite(std), std, 1.0)
    return cls(mean.astype(np.float32), std.astype(np.float32))

  def transform(self, y: np.ndarray) -> np.ndarray:
    return (y - self.mean) / self.std

  def inverse_transform(self, y: np.ndarray) -> np.ndarray:
    """Back to original units (for RMSE): ``y * std + mean``."""
    return y * self.std + self.mean


def batch_totals(n_atoms: np.ndarray, idx: np.ndarray) -> tuple[int, int]:
  """(atoms, atom pairs) of the molecules ``idx``."""
  n = n_atoms[idx].astype(np.int64)
  return int(n.sum()), int((n * n).sum())


def _round_up(x: float, multiple: int) -> int:
  return int(math.ceil(x / multiple) * multiple)


def _optimal_thresholds(x: np.ndarray, k: int) -> np.ndarray:
  """At most k thresholds minimizing sum over x of the least threshold >= x.

  Exact dynamic program over the sorted samples (cost of a group = its size
  times its maximum); returns the group maxima, increasing.
  """
  x = np.sort(x)
  s = len(x)
  j = np.arange(s + 1)
  upper = j[:, None] < j[None, :]  # i < j
  cost = np.where(j == 0, 0.0, np.inf)
  choices = []
  for _ in range(k):
    # total[i, j]: best cost of the first i samples plus group (i, j].
    total = (
      cost[:, None]
      + (j[None, :] - j[:, None]) * np.concatenate([[0.0], x])[None, :]
    )
    total = np.where(upper, total, np.inf)
    best = total.argmin(0)
    new = total[best, j]
    # -1: one group fewer is as good (ties keep fewer budgets).
    choices.append(np.where(new < cost, best, -1))
    cost = np.minimum(cost, new)
  # Walk back from s: the last group ends at s, its start is its choice.
  ends, end = [], s
  for choice in reversed(choices):
    if end == 0:
      break
    start = choice[end]
    if start < 0:
      continue
    ends.append(end)
    end = start
  return np.array([x[e - 1] for e in sorted(ends)])


def padding_budgets(
  n_atoms: np.ndarray,
  batch_size: int,
  *,
  num_typical: int = 4,
  growth: float = 2.0,
  num_samples: int = 1000,
  seed: int = 0,
  node_multiple: int = 64,
  edge_multiple: int = 512,
) -> tuple[GraphsTupleSize, ...]:
  """The fixed set of padding budgets for a dataset, smallest first.

  ``num_samples`` random batches of ``batch_size`` molecules are drawn
  (seeded, independent of training seeds). The ``num_typical`` smallest
  budgets are the pair counts that minimize the mean padded pair count of
  those batches (an exact dynamic program); above the largest sampled batch,
  budgets grow by at most ``growth`` up to the largest possible batch (the
  ``batch_size`` largest molecules together), so every batch of these
  molecules fits one. A budget's node count is the most atoms of any sampled
  batch within its pair count, plus jraph's padding node, rounded up to
  ``node_multiple``; pair counts are rounded up to ``edge_multiple``. Every
  budget has ``batch_size + 1`` graphs.

  Args:
    n_atoms: atoms per molecule of the WHOLE dataset (all splits), so that
      training and evaluation share the budgets.
    batch_size: molecules per batch (>= 1).
    num_typical: budgets fitted to the sampled batches (>= 1).
    growth: largest ratio (> 1) between the budgets above them.
    num_samples: random batches drawn to fit the budgets.
    seed: seed of that sampling.
    node_multiple: rounding of node budgets.
    edge_multiple: rounding of pair budgets.

  Returns:
    Budgets, increasing in nodes and pairs; the last fits any batch.
  """
  if batch_size < 1:
    raise ValueError(f"batch_size must be >= 1, got {batch_size}")
  if num_typical < 1:
    raise ValueError(f"num_typical must be >= 1, got {num_typical}")
  if growth <= 1:
    raise ValueError(f"growth must be > 1, got {growth}")
  n = np.asarray(n_atoms, np.int64)
  if n.size == 0:
    raise ValueError("n_atoms is empty")
  b = min(batch_size, n.size)
  top = np.sort(n)[::-1][:b]
  worst = (int(top.sum()), int((top * top).sum()))

  rng = np.random.default_rng(seed)
  per_epoch = n.size // b
  epochs = max(1, math.ceil(num_samples / per_epoch))
  idx = np.concatenate(
    [rng.permutation(n.size)[: per_epoch * b] for _ in range(epochs)]
  ).reshape(-1, b)[:num_samples]
  nodes = n[idx].sum(1)
  pairs = (n[idx] ** 2).sum(1)

  levels = []
  for t in _optimal_thresholds(pairs, num_typical):
    levels.append((nodes[pairs <= t].max(), t))
  # Geometric steps of ratio <= growth from the largest sample to the worst.
  node_top, pair_top = levels[-1]
  steps = math.ceil(math.log(max(worst[1] / pair_top, 1.0), growth))
  for k in range(1, steps + 1):
    levels.append(
      (
        min(node_top * growth**k, worst[0]),
        pair_top * (worst[1] / pair_top) ** (k / steps),
      )
    )
  levels.append(worst)

  cap = (
    _round_up(worst[0] + 1, node_multiple),
    _round_up(worst[1], edge_multiple),
  )
  budgets, last = [], (0, 0)
  for node_b, pair_b in levels:
    budget = (
      max(last[0], min(_round_up(node_b + 1, node_multiple), cap[0])),
      max(last[1], min(_round_up(max(pair_b, 1), edge_multiple), cap[1])),
    )
    if budget != last:
      budgets.append(GraphsTupleSize(*budget, batch_size + 1))
      last = budget
  return tuple(budgets)


def select_budget(
  n_node: int, n_edge: int, n_graph: int, budgets: Sequence[GraphsTupleSize]
) -> GraphsTupleSize:
  """The first (smallest) budget that fits a batch plus jraph's padding."""
  for b in budgets:
    if n_node < b.n_node and n_edge <= b.n_edge and n_graph < b.n_graph:
      return b
  raise ValueError(
    f"a batch of {n_graph} molecules, {n_node} atoms and {n_edge} pairs fits "
    f"no budget of {list(budgets)}; compute the budgets on the full dataset "
    "with this batch size"
  )


def _ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
  """Concatenation of ``arange(s, s + l)`` for all (s, l), vectorized."""
  ends = np.cumsum(lengths)
  return np.arange(ends[-1] if len(ends) else 0) + np.repeat(
    starts - (ends - lengths), lengths
  )


def make_batch(
  graphs: featurization.MolecularGraphs,
  labels: np.ndarray,
  idx: np.ndarray,
  budgets: Sequence[GraphsTupleSize],
  *,
  scaler: TargetScaler | None = None,
) -> GraphBatch:
  """Padded GraphBatch of molecules ``idx`` (real graphs first, in order).

  Args:
    graphs: the dataset's featurized molecules.
    labels: f32[M, T] labels of the dataset (NaN = missing).
    idx: molecule indices of this batch (at most ``n_graph - 1``).
    budgets: from ``padding_budgets``; the smallest that fits is used.
    scaler: standardizes labels when given.

  Returns:
    A GraphBatch; its docstring describes the fields.

  Examples:
    >>> mols = featurization.featurize_smiles(["CCO", "C"]).graphs
    >>> labels = np.array([[1.0], [np.nan]], np.float32)
    >>> budgets = padding_budgets(mols.n_atoms, batch_size=2)
    >>> batch = make_batch(mols, labels, [0, 1], budgets)
    >>> batch.graphs.n_node.tolist(), batch.graphs.n_edge[:2].tolist()
    ([3, 1, 60], [9, 1])
    >>> batch.graph_mask.tolist(), batch.label_mask[:, 0].tolist()
    ([True, True, False], [True, False, False])
  """
  idx = np.asarray(idx, np.int64)
  n = graphs.n_atoms[idx].astype(np.int64)
  nn = n * n
  num_nodes, num_pairs = int(n.sum()), int(nn.sum())
  budget = select_budget(num_nodes, num_pairs, len(idx), budgets)

  atom_rows = _ranges(graphs.atom_offsets[idx], n)
  pair_rows = _ranges(graphs.pair_offsets[idx], nn)
  first_node = np.repeat(np.cumsum(n) - n, nn)
  local = np.arange(num_pairs) - np.repeat(np.cumsum(nn) - nn, nn)
  size = np.repeat(n, nn)
  graph = jraph.GraphsTuple(
    nodes=graphs.atom_features(atom_rows),
    edges={
      "bond": graphs.pair_bond[pair_rows].astype(np.int32),
      "distance": graphs.pair_distance[pair_rows].astype(np.float32),
    },
    receivers=(first_node + local // np.maximum(size, 1)).astype(np.int32),
    senders=(first_node + local % np.maximum(size, 1)).astype(np.int32),
    n_node=n.astype(np.int32),
    n_edge=nn.astype(np.int32),
    globals=None,
  )
  graph = jraph.pad_with_graphs(graph, *budget)
  # jraph's batching offsets the indices in int64.
  graph = graph._replace(
    senders=graph.senders.astype(np.int32),
    receivers=graph.receivers.astype(np.int32),
  )

  y = np.asarray(labels[idx], np.float32)
  present = ~np.isnan(y)
  if scaler is not None:
    y = scaler.transform(y)
  g_pad = budget.n_graph
  out_labels = np.zeros((g_pad, y.shape[1]), np.float32)
  out_labels[: len(idx)] = np.where(present, y, 0.0)
  label_mask = np.zeros((g_pad, y.shape[1]), bool)
  label_mask[: len(idx)] = present
  return GraphBatch(graph, out_labels, label_mask, np.arange(g_pad) < len(idx))


def num_batches(num_examples: int, batch_size: int, drop_last: bool) -> int:
  """Batches per epoch."""
  if drop_last:
    return num_examples // batch_size
  return -(-num_examples // batch_size)


def batch_indices(
  indices: np.ndarray,
  batch_size: int,
  *,
  shuffle: bool = False,
  seed: int = 0,
  epoch: int = 0,
  drop_last: bool = False,
) -> list[np.ndarray]:
  """Molecule indices of each batch of one epoch.

  With ``shuffle`` the order is a permutation drawn from ``(seed, epoch)``:
  reproducible, and different in every epoch. ``drop_last`` drops a final
  partial batch (as the GraphSAM code does for training).
  """
  indices = np.asarray(indices, np.int64)
  if shuffle:
    indices = np.random.default_rng([seed, epoch]).permutation(indices)
  count = num_batches(len(indices), batch_size, drop_last)
  return [indices[k * batch_size : (k + 1) * batch_size] for k in range(count)]


def iterate_batches(
  dataset: datasets.MoleculeDataset,
  indices: np.ndarray,
  batch_size: int,
  budgets: Sequence[GraphsTupleSize] | None = None,
  *,
  shuffle: bool = False,
  seed: int = 0,
  epoch: int = 0,
  drop_last: bool = False,
  scaler: TargetScaler | None = None,
) -> Iterator[GraphBatch]:
  """GraphBatches of one epoch over ``dataset[indices]``.

  Without shuffling, real graphs come in the order of ``indices``, so the
  predictions ``pred[batch.graph_mask]`` of successive batches concatenate
  to ``indices``' order. ``budgets`` default to ``padding_budgets`` of the
  whole dataset (compute them once and pass them in).
  """
  if dataset.graphs is None:
    raise ValueError("dataset was loaded with featurize=False")
  if budgets is None:
    budgets = padding_budgets(dataset.graphs.n_atoms, batch_size)
  for idx in batch_indices(
    indices,
    batch_size,
    shuffle=shuffle,
    seed=seed,
    epoch=epoch,
    drop_last=drop_last,
  ):
    yield make_batch(
      dataset.graphs, dataset.labels, idx, budgets, scaler=scaler
    )


def budget_usage(
  n_atoms: np.ndarray,
  batches: Sequence[np.ndarray],
  budgets: Sequence[GraphsTupleSize],
) -> dict:
  """How a list of batches (of molecule indices) uses the budgets.

  Returns:
    A dict: ``budgets``; ``counts`` (batches per budget); ``shapes_used``
    (distinct budgets hit); ``mean_nodes``, ``mean_pairs`` (real, per batch);
    ``mean_padded_nodes``, ``mean_padded_pairs``; ``pair_fill`` (real over
    padded pairs).
  """
  counts = [0] * len(budgets)
  real, padded = [], []
  for idx in batches:
    nodes, pairs = batch_totals(n_atoms, idx)
    b = select_budget(nodes, pairs, len(idx), budgets)
    counts[list(budgets).index(b)] += 1
    real.append((nodes, pairs))
    padded.append((b.n_node, b.n_edge))
  real, padded = np.array(real, float), np.array(padded, float)
  return {
    "budgets": list(budgets),
    "counts": counts,
    "shapes_used": sum(c > 0 for c in counts),
    "mean_nodes": real[:, 0].mean(),
    "mean_pairs": real[:, 1].mean(),
    "mean_padded_nodes": padded[:, 0].mean(),
    "mean_padded_pairs": padded[:, 1].mean(),
    "pair_fill": real[:, 1].sum() / padded[:, 1].sum(),
  }


@dataclasses.dataclass(frozen=True, eq=False)
class PreparedData:
  """A loaded dataset with its split, budgets and target scaler.

  Attributes:
    dataset: the MoleculeDataset.
    split: train/valid/test molecule indices.
    batch_size: molecules per batch.
    budgets: padding budgets (shared by all splits).
    scaler: TargetScaler fitted on the training labels, or None.
  """

  dataset: datasets.MoleculeDataset
  split: splits.Split
  batch_size: int
  budgets: tuple[GraphsTupleSize, ...]
  scaler: TargetScaler | None

  def steps_per_epoch(self, drop_last: bool = True) -> int:
    return num_batches(len(self.split.train), self.batch_size, drop_last)

  def train_batches(
    self, epoch: int, seed: int = 0, drop_last: bool = True
  ) -> Iterator[GraphBatch]:
    """Shuffled training batches of one epoch."""
    return iterate_batches(
      self.dataset,
      self.split.train,
      self.batch_size,
      self.budgets,
      shuffle=True,
      seed=seed,
      epoch=epoch,
      drop_last=drop_last,
      scaler=self.scaler,
    )

  def eval_batches(self, part: str) -> Iterator[GraphBatch]:
    """Batches of ``"train"``, ``"valid"`` or ``"test"``, in index order."""
    return iterate_batches(
      self.dataset,
      getattr(self.split, part),
      self.batch_size,
      self.budgets,
      scaler=self.scaler,
    )


def prepare_data(
  dataset: str | datasets.DatasetSpec | datasets.MoleculeDataset,
  *,
  batch_size: int = 32,
  split: str = "random",
  sizes: Sequence[float] = (0.8, 0.1, 0.1),
  seed: int = 0,
  split_file: str | os.PathLike | None = None,
  standardize: bool | None = None,
  **load_kwargs,
) -> PreparedData:
  """Loads (if needed), splits, and computes budgets and the target scaler.

  Args:
    dataset: a registry name, spec, or loaded MoleculeDataset.
    batch_size: molecules per batch.
    split: one of ``splits.SPLIT_METHODS``.
    sizes: train, validation and test fractions.
    seed: split seed.
    split_file: a fixed split (``splits.read_split_file``), used instead of
      ``split``, ``sizes`` and ``seed``; listed rows that were dropped at
      loading, and loaded molecules it does not list, are left out with a
      warning.
    standardize: standardize targets with training mean/std; None does so
      for regression datasets only.
    **load_kwargs: passed to ``datasets.load_dataset``.

  Returns:
    A PreparedData.
  """
  if not isinstance(dataset, datasets.MoleculeDataset):
    dataset = datasets.load_dataset(dataset, **load_kwargs)
  if split_file is None:
    part = splits.split_dataset(dataset.smiles, split, sizes, seed)
  else:
    part, skipped, unused = splits.read_split_file(
      split_file, dataset.row_index, dataset.num_rows
    )
    if skipped or unused:
      warnings.warn(
        f"{split_file}: {skipped} listed rows were dropped at loading and "
        f"{unused} loaded molecules are in no part; both are left out",
        stacklevel=2,
      )
  if standardize is None:
    standardize = dataset.task_type == "regression"
  scaler = TargetScaler.fit(dataset.labels[part.train]) if standardize else None
  budgets = padding_budgets(dataset.n_atoms, batch_size)
  return PreparedData(dataset, part, batch_size, budgets, scaler)
