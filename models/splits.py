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
* ``fixed_split``: a benchmark's own test part (MoleculeACE's ``split``
  column); validation is drawn from the rest at random with the seed.

Sizes follow the GraphSAM code: ``floor(f_valid * n)`` validation and
``floor(f_test * n)`` test molecules, the rest for training. Sets are filled
in order: a scaffold set goes to train if it fits there, else to validation
if it fits there, else to test. Every function returns sorted, disjoint index
arrays that together cover ``range(n)``.

Molecules with identical SMILES strings always land on the same side: the
scaffold splits do so by construction, :func:`split_dataset`'s random split
moves each group of duplicates as one (a list without duplicates splits as
before). A fixed split can be given as a JSON file of CSV data rows
(:func:`read_split_file`); :func:`split_rows` writes one.
"""

from __future__ import annotations

import json
import math
import os
import random
from collections.abc import Mapping
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np


class Split(NamedTuple):
  """Indices (i64, sorted) of the three parts of a dataset."""

  train: np.ndarray
  valid: np.ndarray
  test: np.ndarray


SPLIT_METHODS = ("random", "scaffold", "scaffold_balanced", "fixed")
FIXED_PARTS = ("train", "test")


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
  n: int,
  sizes: Sequence[float] = (0.8, 0.1, 0.1),
  seed: int = 0,
  groups: Sequence[int] | None = None,
) -> Split:
  """Seeded random split of ``range(n)``.

  Args:
    n: number of molecules.
    sizes: train, validation and test fractions.
    seed: seed of the permutation.
    groups: a group id per molecule (e.g. equal for duplicate SMILES): the
      groups are taken in the order of their first member in the seeded
      permutation and cut into parts whole, so a part's size is off by less
      than the largest group. None (or all ids distinct) gives the plain
      permuted split.

  Examples:
    >>> split = random_split(6, (0.5, 0.25, 0.25), groups=[0, 1, 0, 2, 3, 4])
    >>> len({side for side, part in enumerate(split) if {0, 2} & set(part)})
    1
  """
  n_train, n_valid, _ = split_sizes(n, sizes)
  perm = np.random.default_rng(seed).permutation(n)
  if groups is not None:
    # Groups in the order of their first member in the permutation, each
    # one's members together; a group goes where its first member falls.
    _, first, inverse, counts = np.unique(
      np.asarray(groups)[perm],
      return_index=True,
      return_inverse=True,
      return_counts=True,
    )
    order = np.argsort(first)
    start = np.empty(len(first), np.int64)
    start[order] = np.cumsum(counts[order]) - counts[order]
    position = np.empty(n, np.int64)
    position[perm] = start[inverse]
    return _as_split(
      (
        np.flatnonzero(position < n_train),
        np.flatnonzero((position >= n_train) & (position < n_train + n_valid)),
        np.flatnonzero(position >= n_train + n_valid),
      )
    )
  return _as_split(
    (
      perm[:n_train],
      perm[n_train : n_train + n_valid],
      perm[n_train + n_valid :],
    )
  )


def duplicate_groups(smiles: Sequence[str]) -> np.ndarray:
  """i64 group id per molecule: equal for identical SMILES strings."""
  return np.unique(np.asarray(smiles, dtype=object), return_inverse=True)[1]


def fixed_split(
  smiles: Sequence[str],
  parts: Sequence[str],
  sizes: Sequence[float] = (0.9, 0.1, 0.0),
  seed: int = 0,
) -> Split:
  """A benchmark's fixed test part, and validation carved from its train part.

  The molecules marked ``"test"`` are the test part, untouched by the seed;
  those marked ``"train"`` are split at random (:func:`random_split`, with
  identical SMILES kept together) into training and validation in the
  proportion ``sizes[0] : sizes[1]`` (``sizes[2]`` is the benchmark's and
  is not used): the default keeps 10 % of the training part for early
  stopping.

  Args:
    smiles: the molecules.
    parts: ``"train"`` or ``"test"`` per molecule.
    sizes: train and validation fractions of the train part (and a third
      value, ignored, so that a config's ``split_sizes`` fits).
    seed: seed of the train/validation draw.

  Raises:
    ValueError: a part other than ``"train"`` or ``"test"``, no molecule in
      one of them, or no validation share.

  Examples:
    >>> split = fixed_split(list("ABCDEFGHIJKL"), ["train"] * 10 + ["test"] * 2)
    >>> [len(part) for part in split], split.test.tolist()
    ([9, 1, 2], [10, 11])
  """
  parts = np.asarray(parts, dtype=str)
  unknown = sorted(set(parts.tolist()) - set(FIXED_PARTS))
  if unknown:
    raise ValueError(
      f"a fixed split marks each molecule train or test; found {unknown}"
    )
  train, test = (np.flatnonzero(parts == p) for p in FIXED_PARTS)
  if not len(train) or not len(test):
    raise ValueError(
      f"a fixed split needs train and test molecules; got {len(train)} train "
      f"and {len(test)} test"
    )
  if len(sizes) != 3 or not sizes[1] > 0 or sizes[0] < 0:
    raise ValueError(
      f"sizes must give a positive validation share, got {tuple(sizes)}"
    )
  share = sizes[1] / (sizes[0] + sizes[1])
  inner = random_split(
    len(train),
    (1 - share, share, 0.0),
    seed,
    duplicate_groups([smiles[i] for i in train]),
  )
  return _as_split((train[inner.train], train[inner.valid], test))


def murcko_scaffold(smiles: str, include_chirality: bool = False) -> str:
  """Bemis-Murcko scaffold SMILES ("" for acyclic molecules)."""
  from rdkit import rdBase
  from rdkit.Chem.Scaffolds import MurckoScaffold

  from models import featurization

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
  parts: Sequence[str] | None = None,
) -> Split:
  """Dispatches on ``method``, one of SPLIT_METHODS.

  Identical SMILES strings stay together (see the module docstring).
  ``"fixed"`` needs ``parts``, the dataset's train/test mark per molecule.
  """
  if method == "fixed":
    if parts is None:
      raise ValueError(
        "split 'fixed' keeps a dataset's own test part, and this dataset "
        "marks none (a MoleculeACE set does); choose another split"
      )
    return fixed_split(smiles, parts, sizes, seed)
  if method == "random":
    return random_split(len(smiles), sizes, seed, duplicate_groups(smiles))
  if method == "scaffold":
    return scaffold_split(smiles, sizes, seed=seed)
  if method == "scaffold_balanced":
    return scaffold_split(smiles, sizes, balanced=True, seed=seed)
  raise ValueError(f"unknown split method {method!r}; one of {SPLIT_METHODS}")


class SplitFileError(ValueError):
  """A split file is unreadable or inconsistent with its dataset."""


_PART_KEYS = {
  "train": "train",
  "valid": "valid",
  "val": "valid",
  "test": "test",
}


def read_split_file(
  path: str | os.PathLike, rows: np.ndarray, num_rows: int
) -> tuple[Split, int, int]:
  """A fixed split from a JSON file of CSV data rows.

  The file is ``{"train": [...], "valid": [...], "test": [...]}`` (``"val"``
  is accepted for ``"valid"``): 0-based data rows of the CSV, the header and
  blank lines not counted, as ``pandas.read_csv`` numbers them and as
  :func:`split_rows` writes them.

  Args:
    path: the JSON file.
    rows: i64[M] the data row of each loaded molecule
      (``MoleculeDataset.row_index``).
    num_rows: data rows in the CSV.

  Returns:
    The Split in molecule indices, the number of listed rows that were
    dropped at loading (skipped), and the number of loaded molecules the
    file leaves out (unused).

  Raises:
    SplitFileError: unreadable JSON, a missing or unknown part, a row that
      is not an integer in ``[0, num_rows)``, a row in two parts, or an
      empty part; the message names the file and the part.
  """
  try:
    spec = json.loads(Path(path).read_text(encoding="utf-8"))
  except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
    raise SplitFileError(f"cannot read the split file {path}: {e}") from None
  if not isinstance(spec, Mapping):
    raise SplitFileError(
      f"{path}: expected an object with train, valid and test row lists"
    )
  parts: dict[str, list[int]] = {}
  for key, value in spec.items():
    if key not in _PART_KEYS or _PART_KEYS[key] in parts:
      raise SplitFileError(
        f"{path}: unexpected key {key!r}; the keys are train, valid (or "
        "val) and test"
      )
    bad = [
      v
      for v in (value if isinstance(value, list) else [value])
      if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < num_rows
    ]
    if not isinstance(value, list) or bad:
      raise SplitFileError(
        f"{path}: {key!r} must list data rows, integers in [0, {num_rows}) "
        f"(0-based, header not counted); got {bad[0] if bad else value!r}"
      )
    parts[_PART_KEYS[key]] = value
  for name in ("train", "valid", "test"):
    if name not in parts:
      raise SplitFileError(f"{path}: no {name!r} list")
  seen: dict[int, str] = {}
  for name, listed in parts.items():
    for row in listed:
      if row in seen:
        raise SplitFileError(
          f"{path}: data row {row} is in {seen[row]!r} and {name!r}"
        )
      seen[row] = name
  position = {int(r): i for i, r in enumerate(rows)}
  out = []
  for name in ("train", "valid", "test"):
    kept = [position[r] for r in parts[name] if r in position]
    if not kept:
      raise SplitFileError(f"{path}: no loadable molecule in {name!r}")
    out.append(kept)
  skipped = sum(r not in position for r in seen)
  unused = len(rows) - sum(map(len, out))
  return _as_split(out), skipped, unused


def split_rows(split: Split, rows: np.ndarray) -> dict[str, list[int]]:
  """The split as CSV data rows, the format of :func:`read_split_file`."""
  return {
    name: [int(r) for r in np.asarray(rows)[part]]
    for name, part in zip(("train", "valid", "test"), split, strict=True)
  }


class SplitSizeError(ValueError):
  """A split leaves a part empty, or too few molecules for one batch."""


def _fractions(sizes: Sequence[float]) -> str:
  return "/".join(f"{f:g}" for f in sizes)


def check_split(
  split: Split,
  batch_size: int,
  drop_last: bool = True,
  sizes: Sequence[float] | None = None,
) -> None:
  """Refuses, before any training, a split that cannot train and test.

  Every part needs a molecule (early stopping reads the validation part,
  the metric the test part), and with ``drop_last`` the training part
  needs a whole batch.

  Args:
    split: the parts.
    batch_size: molecules per training batch.
    drop_last: whether the last partial training batch is dropped.
    sizes: the fractions the split was made with, to suggest larger ones
      (None: a fixed split, nothing to suggest).

  Raises:
    SplitSizeError: naming the counts and what to change.

  Examples:
    >>> five = Split(np.arange(5), np.arange(0), np.arange(0))
    >>> check_split(five, 2, sizes=(0.8, 0.1, 0.1))
    Traceback (most recent call last):
    ...
    models.splits.SplitSizeError: 5 molecules split 0.8/0.1/0.1 give 5 \
training, 0 validation and 0 test molecules, and every part needs one: use \
more molecules, or split_sizes=(0.6, 0.2, 0.2)
  """
  counts = [len(p) for p in split]
  n = sum(counts)
  if min(counts) == 0:
    what = (
      f"{n} molecules split {_fractions(sizes)}"
      if sizes is not None
      else f"the split of {n} molecules"
    )
    fix = "use more molecules"
    if sizes is not None:
      share = math.ceil(100 / max(n, 1)) / 100
      share = max(share, *sizes[1:])
      if n >= 3 and 1 - 2 * share > 0:
        fix += f", or split_sizes=({1 - 2 * share:.2g}, {share:g}, {share:g})"
      else:
        fix = "use 3 molecules or more"
    else:
      fix += ", or list some in every part"
    raise SplitSizeError(
      f"{what} give{'s' * (sizes is None)} {counts[0]} training, "
      f"{counts[1]} validation and {counts[2]} test molecules, and every "
      f"part needs one: {fix}"
    )
  if drop_last and counts[0] < batch_size:
    raise SplitSizeError(
      f"the {counts[0]} training molecules make no whole batch of "
      f"{batch_size} (the last partial batch is dropped): batch_size="
      f"{counts[0]} or less, or more molecules"
    )


def describe_subset(
  before: Split,
  after: Split,
  n_atoms: np.ndarray,
  max_atoms: int | None,
  max_molecules: int | None,
) -> str:
  """What a config's caps left out, in a line; "" when nothing.

  Args:
    before: the split of every molecule.
    after: the parts used (``max_atoms`` applied, then ``max_molecules``).
    n_atoms: i32[M] atoms per molecule.
    max_atoms: the cap on atoms per molecule (None: none).
    max_molecules: the cap on molecules per part (None: none).

  Examples:
    >>> full = Split(np.arange(240), np.arange(240, 270), np.arange(270, 300))
    >>> kept = Split(np.arange(160), np.arange(240, 270), np.arange(270, 298))
    >>> n_atoms = np.where(np.arange(300) < 298, 20, 40)
    >>> describe_subset(full, kept, n_atoms, 32, 160)
    'using 160/30/28 of 240/30/30 molecules (at most 160 per part); 2 \
molecules over 32 atoms left out'
  """
  used = [len(p) for p in after]
  total = [len(p) for p in before]
  if used == total:
    return ""
  line = f"using {'/'.join(map(str, used))} of {'/'.join(map(str, total))} "
  line += "molecules"
  if max_molecules is not None:
    line += f" (at most {max_molecules} per part)"
  if max_atoms is not None:
    large = sum(int((n_atoms[p] > max_atoms).sum()) for p in before)
    if large:
      line += f"; {large} molecules over {max_atoms} atoms left out"
  return line
