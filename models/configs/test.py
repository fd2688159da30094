"""A tiny configuration that trains in seconds on a CPU (tests, demos)."""

from __future__ import annotations

from models.configs import default


def get_config(dataset: str = "nci5k-tpsa") -> default.Config:
  """One small layer on a few hundred molecules, a few epochs.

  It shrinks the data: at most 160 molecules per split part (sampled with
  the seed) and none over 32 atoms; training says in one line what that
  left out (``models.splits.describe_subset``), and predictions flag the
  molecules larger than any it trained on (``models.domain``).
  """
  return default.get_config(dataset).replace(
    d_model=16,
    num_layers=1,
    num_heads=2,
    head_layers=2,
    batch_size=16,
    max_molecules=160,
    max_molecule_atoms=32,
    fixed_shapes=True,
    fast_compile=True,
    epochs=3,
    patience=20,
    warmup_epochs=1.0,
    lr_decay_epochs=3.0,
    max_lr=3e-3,
  )
