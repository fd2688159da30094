"""The GraphSAM paper's CoMPT set-up, per dataset (reference notes §4).

Model sizes per dataset are those of the authors' code (``get_options`` in
``CoMPT-main/utils.py`` of github.com/YL-wang/GraphSAM): d_model 256, dropout
0, one feed-forward layer, mish, GRU readout, and per dataset

==============  ======  =====  =======  =========  ===========  =====
dataset         layers  heads  kernel   norm       head layers  tasks
==============  ======  =====  =======  =========  ===========  =====
bbbp            4       4      exp      LayerNorm  2            1
tox21           8       4      exp      LayerNorm  4            12
sider           4       4      softmax  ScaleNorm  2            27
clintox         4       4      exp      LayerNorm  2            2
esol            3       4      softmax  ScaleNorm  2            1
lipophilicity   3       8      exp      LayerNorm  2            1
freesolv        3       4      softmax  ScaleNorm  2            1
==============  ======  =====  =======  =========  ===========  =====

``hiv`` (not in the paper) takes BBBP's model and ``nci5k-tpsa`` (the offline
demo set) ESOL's. The 30 MoleculeACE sets (``moleculeace/<set>``, not in the
paper) take Lipophilicity's, the paper's regression model for ChEMBL
molecules, and their benchmark's fixed split: the set's own test part, 10 %
of its train part drawn by the seed for early stopping
(``split="fixed"``, ``split_sizes=(0.9, 0.1, 0.0)``).

Training: random 80/10/10 split, batch 32, Adam (0.9,
0.999, 1e-8, no weight decay), learning rate warmed up linearly from 1e-4 to
1e-3 over 2 epochs, then decayed exponentially to 1e-4 at epoch 30 and held
there; at most 150 epochs, early stop after 20 epochs without validation
improvement, the best validation checkpoint evaluated once on test.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from models import dataset_registry

# layers, heads, kernel, norm, head layers
MODEL_SIZES: dict[str, tuple[int, int, str, str, int]] = {
  "bbbp": (4, 4, "exp", "layer", 2),
  "tox21": (8, 4, "exp", "layer", 4),
  "sider": (4, 4, "softmax", "scale", 2),
  "clintox": (4, 4, "exp", "layer", 2),
  "esol": (3, 4, "softmax", "scale", 2),
  "lipophilicity": (3, 8, "exp", "layer", 2),
  "freesolv": (3, 4, "softmax", "scale", 2),
  "hiv": (4, 4, "exp", "layer", 2),
  "nci5k-tpsa": (3, 4, "softmax", "scale", 2),
}


@dataclasses.dataclass(frozen=True)
class Config:
  """Everything a training run depends on.

  Attributes:
    dataset: a name of ``models.dataset_registry.DATASETS``, or the name of the
      ``data_file`` (its stem).
    data_file: your own CSV (``models.tables.csv_spec``) instead of a
      registry dataset; None uses ``dataset``. It takes the Config defaults
      for the model (BBBP's).
    smiles_column: the SMILES column of ``data_file``.
    target_columns: its label columns; empty takes all but the SMILES.
    task_type: ``"classification"`` or ``"regression"`` for ``data_file``;
      None infers it from the labels (0/1 only: classification).
    split: ``"random"``, ``"scaffold"``, ``"scaffold_balanced"`` or
      ``"fixed"`` (the dataset's own test part, as MoleculeACE's;
      ``models.splits.fixed_split``).
    split_sizes: train, validation and test fractions (``"fixed"``: train
      and validation shares of the dataset's train part).
    split_file: a JSON file of CSV data rows per part (see
      ``models.splits.read_split_file``), used instead of ``split``.
    batch_size: molecules per batch.
    max_molecules: keep at most this many molecules per split part (a
      sample drawn with ``seed``; None keeps all), for demos and tests.
    max_molecule_atoms: drop molecules with more atoms (None keeps all), for
      demos and tests.
    fixed_shapes: pad every batch to one budget and one block size, so the
      steps compile once (short runs, tests); the default fits a few
      budgets and block sizes to the data, faster per step.
    fast_compile: compile with LLVM's cheapest settings (about half the
      compile time, slower steps): for tiny models and tests.
    d_model, num_layers, num_heads, kernel, norm, head_layers, readout,
      attention: the model (see ``models.model.CoMPT``).
    optimizer: a ``graphsam_optax`` registry name, or ``"adam"`` (the
      registry's name for Adam alone).
    hyperparameters: overrides of the optimizer's registry defaults.
    init_lr, max_lr, final_lr, warmup_epochs, lr_decay_epochs: the learning
      rate schedule (see ``models.optim.learning_rate_schedule``).
    adam_b1, adam_b2, adam_eps: the base optimizer, Adam.
    epochs: the most training epochs.
    patience: stop after this many epochs without validation improvement.
    seed: seeds the split, the initialization and the batch order.
    drop_last: drop the last partial training batch (as the authors do).
  """

  dataset: str = "bbbp"
  data_file: str | None = None
  smiles_column: str = "smiles"
  target_columns: tuple[str, ...] = ()
  task_type: str | None = None
  split: str = "random"
  split_sizes: tuple[float, float, float] = (0.8, 0.1, 0.1)
  split_file: str | None = None
  batch_size: int = 32
  max_molecules: int | None = None
  max_molecule_atoms: int | None = None
  fixed_shapes: bool = False
  fast_compile: bool = False
  d_model: int = 256
  num_layers: int = 4
  num_heads: int = 4
  kernel: str = "exp"
  norm: str = "layer"
  head_layers: int = 2
  readout: str = "gru"
  attention: str = "dense"
  optimizer: str = "graphsam"
  hyperparameters: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  init_lr: float = 1e-4
  max_lr: float = 1e-3
  final_lr: float = 1e-4
  warmup_epochs: float = 2.0
  lr_decay_epochs: float = 30.0
  adam_b1: float = 0.9
  adam_b2: float = 0.999
  adam_eps: float = 1e-8
  epochs: int = 150
  patience: int = 20
  seed: int = 0
  drop_last: bool = True

  def replace(self, **changes) -> Config:
    return dataclasses.replace(self, **changes)


def has_config(dataset: str) -> bool:
  """Whether :func:`get_config` knows ``dataset``."""
  return dataset in MODEL_SIZES or _is_moleculeace(dataset)


def _is_moleculeace(dataset: str) -> bool:
  prefix = dataset_registry.MOLECULEACE_PREFIX
  names = {name.lower() for name in dataset_registry.DATASETS}
  return dataset.lower().startswith(prefix) and dataset.lower() in names


def get_config(dataset: str = "bbbp") -> Config:
  """The paper's set-up for ``dataset``.

  Examples:
    >>> config = get_config("moleculeace/chembl1862_ki")
    >>> config.dataset, config.split, config.split_sizes, config.num_heads
    ('moleculeace/CHEMBL1862_Ki', 'fixed', (0.9, 0.1, 0.0), 8)
  """
  if not has_config(dataset):
    raise ValueError(
      f"dataset={dataset!r} has no configuration; known: "
      f"{', '.join(MODEL_SIZES)} and moleculeace/<set> for the sets of "
      "models.dataset_registry.MOLECULEACE_SETS"
    )
  split = {}
  if _is_moleculeace(dataset):
    dataset = dataset_registry.get_spec(dataset).name
    split = {"split": "fixed", "split_sizes": (0.9, 0.1, 0.0)}
    layers, heads, kernel, norm, head_layers = MODEL_SIZES["lipophilicity"]
  else:
    layers, heads, kernel, norm, head_layers = MODEL_SIZES[dataset]
  return Config(
    dataset=dataset,
    num_layers=layers,
    num_heads=heads,
    kernel=kernel,
    norm=norm,
    head_layers=head_layers,
    **split,
  )
