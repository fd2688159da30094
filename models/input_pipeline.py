"""Padded ``jraph.GraphsTuple`` batches of molecules, prepared in NumPy.

A batch holds ``batch_size`` molecules. Its edges are all ordered atom pairs
``(i <- j)`` of each molecule, self pairs included, never across molecules;
each pair carries a bond vocabulary id and a topological distance (see
:class:`GraphBatch` and :mod:`models.featurization`). Batches are padded with
``jraph.pad_with_graphs`` to one of at most two shapes per dataset
(:func:`padding_budgets`: one fitted to the typical batch, one that holds any
batch), so a jitted step compiles once or twice per dataset. A shape also
fixes the model's dense attention layout: molecules packed in order into a
static number of blocks of a static size (:func:`pack_blocks`). Padding
graphs are masked out by ``graph_mask``, missing labels by ``label_mask``.

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

from models import dataset_registry
from models import datasets
from models import featurization
from models import splits
from models import tables
from models.configs import default


class BatchShape(NamedTuple):
  """A padded batch's static shape: the GraphsTuple budget and the blocks.

  Attributes:
    n_node: nodes (atoms) of the padded GraphsTuple, jraph's padding included.
    n_edge: edges (ordered atom pairs).
    n_graph: graphs, jraph's padding graph included.
    block_count: blocks of the model's dense attention layout.
    block_size: atoms per block (at least the dataset's largest molecule).
  """

  n_node: int
  n_edge: int
  n_graph: int
  block_count: int
  block_size: int

  @property
  def blocks(self) -> tuple[int, int]:
    """``(block_count, block_size)``, the model's static ``blocks``."""
    return self.block_count, self.block_size

  def fits(self, nodes: int, pairs: int, graphs: int, blocks: int) -> bool:
    """Whether a batch of these totals fits (jraph needs one spare node and
    one spare graph for its padding graph)."""
    return (
      nodes < self.n_node
      and pairs <= self.n_edge
      and graphs < self.n_graph
      and blocks <= self.block_count
    )


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


def pack_blocks(n_atoms: np.ndarray, size: int) -> np.ndarray:
  """Blocks of ``size`` atoms that next-fit packing of ``n_atoms`` fills.

  The NumPy twin of ``models.layout.pack_blocks``, vectorized over the
  leading axes: molecules along the last axis are packed in order, each into
  the current block if it fits, else into a new one.

  Examples:
    >>> pack_blocks(np.array([9, 13, 7, 1, 0, 16, 3]), 16).tolist()
    5
    >>> pack_blocks(np.array([[3, 3, 3], [9, 9, 9]]), 16).tolist()
    [1, 3]
  """
  n = np.asarray(n_atoms, np.int64)
  blocks = np.zeros(n.shape[:-1], np.int64)
  fill = np.zeros(n.shape[:-1], np.int64)
  for k in range(n.shape[-1]):
    m = n[..., k]
    opens = (fill + m > size) & (fill > 0)
    blocks += opens
    fill = np.where(opens, 0, fill) + m
  return blocks + (fill > 0)


def batch_totals(
  n_atoms: np.ndarray, idx: np.ndarray, block_size: int
) -> tuple[int, int, int]:
  """(atoms, atom pairs, blocks) of the molecules ``idx``, in that order."""
  n = n_atoms[np.asarray(idx, np.int64)].astype(np.int64)
  return int(n.sum()), int((n * n).sum()), int(pack_blocks(n, block_size))


def _round_up(x: float, multiple: int) -> int:
  return int(math.ceil(x / multiple) * multiple)


def sample_batches(
  n_atoms: np.ndarray, batch_size: int, num_samples: int, seed: int
) -> np.ndarray:
  """``[num_samples, b]`` atom counts of random batches, as training draws
  them: successive chunks of seeded permutations of all molecules."""
  n = np.asarray(n_atoms, np.int64)
  b = min(batch_size, n.size)
  per_epoch = n.size // b
  rng = np.random.default_rng(seed)
  epochs = max(1, math.ceil(num_samples / per_epoch))
  idx = np.concatenate(
    [rng.permutation(n.size)[: per_epoch * b] for _ in range(epochs)]
  ).reshape(-1, b)[:num_samples]
  return n[idx]


def padding_budgets(
  n_atoms: np.ndarray,
  batch_size: int,
  *,
  coverage: float = 0.995,
  num_samples: int = 20000,
  seed: int = 0,
  node_multiple: int = 32,
  edge_multiple: int = 512,
  block_multiple: int = 8,
) -> tuple[BatchShape, ...]:
  """At most two batch shapes for a dataset: typical, then any batch.

  ``num_samples`` random batches of ``batch_size`` molecules are drawn
  (seeded, independent of training seeds). The first shape holds a share
  ``coverage`` of them: its atom, pair and block counts are the smallest
  equal quantile of the three that holds that share jointly. The second
  holds any batch of these molecules (the ``batch_size`` largest together,
  one block each), so every batch of the dataset fits one of the two and a
  run compiles at most two steps; it is dropped when the first already holds
  every batch. Blocks hold ``block_size`` atoms, the largest molecule
  rounded up to ``block_multiple``. Every shape has ``batch_size + 1``
  graphs (jraph's padding graph).

  A batch the first shape misses costs a step of the second, which is
  several times larger: with the default, about one step in 200.

  Args:
    n_atoms: atoms per molecule of the WHOLE dataset (all splits), so that
      training and evaluation share the shapes.
    batch_size: molecules per batch (>= 1).
    coverage: share of random batches the first shape holds, in (0, 1].
    num_samples: random batches drawn to fit it.
    seed: seed of that sampling.
    node_multiple: rounding of node counts.
    edge_multiple: rounding of pair counts.
    block_multiple: rounding of the block size.

  Returns:
    One or two shapes, the first smaller in every count.
  """
  if batch_size < 1:
    raise ValueError(f"batch_size must be >= 1, got {batch_size}")
  if not 0 < coverage <= 1:
    raise ValueError(f"coverage must be in (0, 1], got {coverage}")
  n = np.asarray(n_atoms, np.int64)
  if n.size == 0:
    raise ValueError("n_atoms is empty")
  b = min(batch_size, n.size)
  size = _round_up(max(int(n.max()), 1), block_multiple)
  top = np.sort(n)[::-1][:b]
  largest = BatchShape(
    _round_up(int(top.sum()) + 1, node_multiple),
    _round_up(max(int((top * top).sum()), 1), edge_multiple),
    batch_size + 1,
    b,
    size,
  )
  sizes = sample_batches(n, batch_size, num_samples, seed)
  totals = np.stack(
    [sizes.sum(1), (sizes * sizes).sum(1), pack_blocks(sizes, size)], 1
  )
  for q in np.linspace(coverage, 1.0, 101):
    limits = np.quantile(totals, q, axis=0, method="higher")
    if np.mean(np.all(totals <= limits, axis=1)) >= coverage:
      break
  typical = BatchShape(
    min(_round_up(int(limits[0]) + 1, node_multiple), largest.n_node),
    min(_round_up(max(int(limits[1]), 1), edge_multiple), largest.n_edge),
    batch_size + 1,
    min(int(limits[2]), largest.block_count),
    size,
  )
  if typical == largest:
    return (largest,)
  return typical, largest


def select_budget(
  nodes: int,
  pairs: int,
  graphs: int,
  blocks: int,
  budgets: Sequence[BatchShape],
) -> BatchShape:
  """The first (smallest) shape that fits a batch plus jraph's padding."""
  for budget in budgets:
    if budget.fits(nodes, pairs, graphs, blocks):
      return budget
  raise ValueError(
    f"a batch of {graphs} molecules, {nodes} atoms, {pairs} pairs and "
    f"{blocks} blocks fits no shape of {list(budgets)}; compute the shapes "
    "on the full dataset with this batch size"
  )


def budget_of(
  n_atoms: np.ndarray, idx: np.ndarray, budgets: Sequence[BatchShape]
) -> BatchShape:
  """The shape a batch of the molecules ``idx`` is padded to (none built)."""
  nodes, pairs, blocks = batch_totals(n_atoms, idx, budgets[0].block_size)
  return select_budget(nodes, pairs, len(idx), blocks, budgets)


def shape_of(batch: GraphBatch, budgets: Sequence[BatchShape]) -> BatchShape:
  """The shape a padded batch was built for (its node count tells)."""
  nodes = np.shape(batch.graphs.nodes)[-2]
  for budget in budgets:
    if budget.n_node == nodes:
      return budget
  raise ValueError(f"a batch of {nodes} padded nodes has no shape of {budgets}")


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
  budgets: Sequence[BatchShape],
  *,
  scaler: TargetScaler | None = None,
) -> GraphBatch:
  """Padded GraphBatch of molecules ``idx`` (real graphs first, in order).

  Args:
    graphs: the dataset's featurized molecules.
    labels: f32[M, T] labels of the dataset (NaN = missing).
    idx: molecule indices of this batch (at most ``n_graph - 1``).
    budgets: from ``padding_budgets``; the smallest that fits is used
      (:func:`shape_of` tells which).
    scaler: standardizes labels when given.

  Returns:
    A GraphBatch; its docstring describes the fields.

  Examples:
    >>> mols = featurization.featurize_smiles(["CCO", "C"]).graphs
    >>> labels = np.array([[1.0], [np.nan]], np.float32)
    >>> budgets = padding_budgets(mols.n_atoms, batch_size=2)
    >>> batch = make_batch(mols, labels, [0, 1], budgets)
    >>> batch.graphs.n_node.tolist(), batch.graphs.n_edge[:2].tolist()
    ([3, 1, 28], [9, 1])
    >>> shape_of(batch, budgets).blocks
    (1, 8)
    >>> batch.graph_mask.tolist(), batch.label_mask[:, 0].tolist()
    ([True, True, False], [True, False, False])
  """
  idx = np.asarray(idx, np.int64)
  n = graphs.n_atoms[idx].astype(np.int64)
  nn = n * n
  num_nodes, num_pairs = int(n.sum()), int(nn.sum())
  blocks = int(pack_blocks(n, budgets[0].block_size))
  budget = select_budget(num_nodes, num_pairs, len(idx), blocks, budgets)

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
  graph = jraph.pad_with_graphs(graph, *budget[:3])
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
  budgets: Sequence[BatchShape] | None = None,
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
  budgets: Sequence[BatchShape],
) -> dict:
  """How a list of batches (of molecule indices) uses the shapes.

  Returns:
    A dict: ``budgets``; ``counts`` (batches per shape); ``shapes_used``
    (distinct shapes hit); ``mean_nodes``, ``mean_pairs``, ``mean_blocks``
    (real, per batch); ``mean_padded_nodes``, ``mean_padded_pairs``,
    ``mean_padded_blocks``; ``node_fill`` and ``pair_fill`` (real over
    padded).
  """
  counts = [0] * len(budgets)
  real, padded = [], []
  for idx in batches:
    nodes, pairs, blocks = batch_totals(n_atoms, idx, budgets[0].block_size)
    b = select_budget(nodes, pairs, len(idx), blocks, budgets)
    counts[list(budgets).index(b)] += 1
    real.append((nodes, pairs, blocks))
    padded.append((b.n_node, b.n_edge, b.block_count))
  real, padded = np.array(real, float), np.array(padded, float)
  return {
    "budgets": list(budgets),
    "counts": counts,
    "shapes_used": sum(c > 0 for c in counts),
    "mean_nodes": real[:, 0].mean(),
    "mean_pairs": real[:, 1].mean(),
    "mean_blocks": real[:, 2].mean(),
    "mean_padded_nodes": padded[:, 0].mean(),
    "mean_padded_pairs": padded[:, 1].mean(),
    "mean_padded_blocks": padded[:, 2].mean(),
    "node_fill": real[:, 0].sum() / padded[:, 0].sum(),
    "pair_fill": real[:, 1].sum() / padded[:, 1].sum(),
  }


@dataclasses.dataclass(frozen=True, eq=False)
class PreparedData:
  """A loaded dataset with its split, budgets and target scaler.

  Attributes:
    dataset: the MoleculeDataset.
    split: train/valid/test molecule indices.
    batch_size: molecules per batch.
    budgets: the batch shapes (shared by all splits; :func:`padding_budgets`).
    scaler: TargetScaler fitted on the training labels, or None.
  """

  dataset: datasets.MoleculeDataset
  split: splits.Split
  batch_size: int
  budgets: tuple[BatchShape, ...]
  scaler: TargetScaler | None

  def steps_per_epoch(self, drop_last: bool = True) -> int:
    return num_batches(len(self.split.train), self.batch_size, drop_last)

  def blocks_of(self, batch: GraphBatch) -> tuple[int, int]:
    """The model's static ``blocks`` for a batch of these shapes."""
    return shape_of(batch, self.budgets).blocks

  def shapes_used(self, batches: Sequence[np.ndarray]) -> list[BatchShape]:
    """The shapes the batches of molecule indices ``batches`` are padded
    to, in the order they first occur (no batch is built)."""
    used = []
    for idx in batches:
      budget = budget_of(self.dataset.n_atoms, idx, self.budgets)
      if budget not in used:
        used.append(budget)
    return used

  def train_indices(
    self, epoch: int, seed: int = 0, drop_last: bool = True
  ) -> list[np.ndarray]:
    """Molecule indices of the shuffled training batches of one epoch."""
    return batch_indices(
      self.split.train,
      self.batch_size,
      shuffle=True,
      seed=seed,
      epoch=epoch,
      drop_last=drop_last,
    )

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
  dataset: str | dataset_registry.DatasetSpec | datasets.MoleculeDataset,
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
    column = dataset.spec.split_column
    part = splits.split_dataset(
      dataset.smiles,
      split,
      sizes,
      seed,
      parts=dataset.annotations[column] if column else None,
    )
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


def data_for(
  config: default.Config, data_dir=None, cache_dir=None
) -> PreparedData:
  """Loads and splits ``config.dataset`` or ``config.data_file``; subsets.

  ``max_molecule_atoms`` and ``max_molecules`` shrink the split (the latter
  samples each part with ``config.seed``; the scaler is refitted to what
  remains, the batch shapes to every molecule of at most
  ``max_molecule_atoms`` atoms, whatever the seed); ``fixed_shapes`` keeps
  only the shape that holds any batch (one compiled step, slower per step).
  """
  dataset = config.dataset
  if config.data_file is not None:
    dataset = tables.csv_spec(
      config.data_file,
      config.smiles_column,
      config.target_columns or None,
      config.task_type,
    )
  data = prepare_data(
    dataset,
    batch_size=config.batch_size,
    split=config.split,
    sizes=config.split_sizes,
    seed=config.seed,
    split_file=config.split_file,
    data_dir=data_dir,
    cache_dir=cache_dir,
    progress=False,
  )
  n_atoms = data.dataset.n_atoms
  parts = list(data.split)
  if config.max_molecule_atoms is not None:
    parts = [p[n_atoms[p] <= config.max_molecule_atoms] for p in parts]
  if config.max_molecules is not None:
    rng = np.random.default_rng(config.seed)
    parts = [
      np.sort(rng.choice(p, config.max_molecules, replace=False))
      if len(p) > config.max_molecules
      else p
      for p in parts
    ]
  split = type(data.split)(*parts)
  # What the caps left out, then whether the parts can train and test.
  note = splits.describe_subset(
    data.split, split, n_atoms, config.max_molecule_atoms, config.max_molecules
  )
  if note:
    warnings.warn(f"{data.dataset.name}: {note}", stacklevel=2)
  fixed = config.split_file is not None or config.split == "fixed"
  splits.check_split(
    split,
    config.batch_size,
    config.drop_last,
    None if fixed else config.split_sizes,
  )
  scaler, budgets = data.scaler, data.budgets
  if split is not data.split and scaler is not None:
    scaler = TargetScaler.fit(data.dataset.labels[split.train])
  if config.max_molecule_atoms is not None:
    # Fitted to every molecule the filter keeps, not to the sampled parts:
    # the shapes, and so the compiled steps, do not depend on the seed.
    kept = n_atoms[n_atoms <= config.max_molecule_atoms]
    budgets = padding_budgets(kept, config.batch_size)
  if config.fixed_shapes:
    budgets = budgets[-1:]
  return dataclasses.replace(data, split=split, scaler=scaler, budgets=budgets)
