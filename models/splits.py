"""Train/validation/test splits of a molecule list, as index arrays.

* ``random_split``: a seeded permutation, 80/10/10 by default.
* ``scaffold_split``: Bemis-Murcko scaffold sets, largest first, so no
  scaffold is on two sides (chemprop v1's ``scaffold_split`` with
  ``balanced=False``; deterministic, the seed is unused).
* ``scaffold_split(balanced=True)``: scaffold sets larger than half the
  validation or test size go first in random order, then the others in random
  order (chemprop's ``scaffold_balanced``, also the GraphSAM/CoMPT code's
  ``scaffold_split(balanced=True)``; its shuffles use ``random.Random(seed)``
  exactly as both do, so a seed gives their split of the same molecule list).

Sizes follow the GraphSAM code: ``floor(f_valid * n)`` validation and
``floor(f_test * n)`` test molecules, the rest for training. Sets are filled
in order: a scaffold set goes to train if it fits there, else to validation
if it fits there, else to test. Every function returns sorted, disjoint index
arrays that together cover ``range(n)``.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
from rdkit import rdBase
from rdkit.Chem.Scaffolds import MurckoScaffold

from models import featurization


class Split(NamedTuple):
  """Indices (i64, sorted) of the three parts of a dataset."""

  train: np.ndarray
  valid: np.ndarray
  test: np.ndarray


SPLIT_METHODS = ("random", "scaffold", "scaffold_balanced")


def split_sizes(
  n: int, sizes: Sequence[float] = (0.8, 0.1, 0.1)
) -> tuple[int, int, int]:
  """(train, valid, test) counts: valid and test floored, train the rest."""
  if len(sizes) != 3 or any(f < 0 for f in sizes):
    raise ValueError(f"sizes must be 3 non-negative fractions, got {sizes}")
  if not math.isclose(sum(sizes), 1.0, abs_tol=1e-6):
    raise ValueError(f"sizes must sum to 1, got {sizes} (sum {sum(sizes)})")
  n_valid = math.floor(sizes[1] * n)
  n_test = math.floor(sizes[2] * n)
  return n - n_valid - n_test, n_valid, n_test


def _as_split(parts) -> Split:
  return Split(*(np.sort(np.asarray(p, np.int64)) for p in parts))


def random_split(
  n: int, sizes: Sequence[float] = (0.8, 0.1, 0.1), seed: int = 0
) -> Split:
  """Seeded random split of ``range(n)``."""
  n_train, n_valid, _ = split_sizes(n, sizes)
  perm = np.random.default_rng(seed).permutation(n)
  return _as_split(
    (
      perm[:n_train],
      perm[n_train : n_train + n_valid],
      perm[n_train + n_valid :],
    )
  )


def murcko_scaffold(smiles: str, include_chirality: bool = False) -> str:
  """Bemis-Murcko scaffold SMILES ("" for acyclic molecules)."""
  mol, reason = featurization.parse_smiles(smiles)
  if mol is None:
    raise ValueError(f"cannot compute the scaffold of {smiles!r}: {reason}")
  with rdBase.BlockLogs():
    return MurckoScaffold.MurckoScaffoldSmiles(
      mol=mol, includeChirality=include_chirality
    )


def scaffold_sets(
  smiles: Sequence[str], include_chirality: bool = False
) -> list[list[int]]:
  """Indices grouped by scaffold, groups in order of first appearance."""
  groups: dict[str, list[int]] = {}
  for i, s in enumerate(smiles):
    groups.setdefault(murcko_scaffold(s, include_chirality), []).append(i)
  return list(groups.values())


def scaffold_split(
  smiles: Sequence[str],
  sizes: Sequence[float] = (0.8, 0.1, 0.1),
  *,
  balanced: bool = False,
  seed: int = 0,
  include_chirality: bool = False,
) -> Split:
  """Bemis-Murcko scaffold split; see the module docstring.

  Args:
    smiles: SMILES of the molecules (all parseable).
    sizes: train, validation and test fractions.
    balanced: the balanced variant (big sets first, random order).
    seed: seed of the balanced variant's shuffles; unused otherwise.
    include_chirality: keep stereo in scaffolds.

  Returns:
    A Split in which every scaffold is on one side only.
  """
  n_train, n_valid, n_test = split_sizes(len(smiles), sizes)
  sets = scaffold_sets(smiles, include_chirality)
  if balanced:
    big = [s for s in sets if len(s) > n_valid / 2 or len(s) > n_test / 2]
    small = [
      s for s in sets if not (len(s) > n_valid / 2 or len(s) > n_test / 2)
    ]
    rng = random.Random(seed)
    rng.shuffle(big)
    rng.shuffle(small)
    sets = big + small
  else:
    sets = sorted(sets, key=len, reverse=True)
  train, valid, test = [], [], []
  for s in sets:
    if len(train) + len(s) <= n_train:
      train += s
    elif len(valid) + len(s) <= n_valid:
      valid += s
    else:
      test += s
  return _as_split((train, valid, test))


def split_dataset(
  smiles: Sequence[str],
  method: str = "random",
  sizes: Sequence[float] = (0.8, 0.1, 0.1),
  seed: int = 0,
) -> Split:
  """Dispatches on ``method``, one of SPLIT_METHODS."""
  if method == "random":
    return random_split(len(smiles), sizes, seed)
  if method == "scaffold":
    return scaffold_split(smiles, sizes, seed=seed)
  if method == "scaffold_balanced":
    return scaffold_split(smiles, sizes, balanced=True, seed=seed)
  raise ValueError(f"unknown split method {method!r}; one of {SPLIT_METHODS}")
