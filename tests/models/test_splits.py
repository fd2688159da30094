"""Random, scaffold and balanced scaffold splits."""

import random

import numpy as np
import pytest
from rdkit import Chem

from models import splits as S

# 10 molecules, 4 scaffolds: benzene x5, pyridine x3, cyclohexane x1, none x1.
TOY = [
  "Cc1ccccc1",
  "Oc1ccccc1",
  "Nc1ccccc1",
  "Clc1ccccc1",
  "CCc1ccccc1",
  "Cc1ccncc1",
  "Oc1ccncc1",
  "Nc1ccncc1",
  "CC1CCCCC1",
  "CCCCO",
]


def _check_partition(split, n):
  parts = [np.asarray(p) for p in split]
  for p in parts:
    assert p.dtype == np.int64 and np.all(np.diff(p) > 0)  # sorted, unique
  joined = np.concatenate(parts)
  np.testing.assert_array_equal(np.sort(joined), np.arange(n))


def test_split_sizes():
  assert S.split_sizes(2039) == (1633, 203, 203)
  assert S.split_sizes(10, (0.6, 0.2, 0.2)) == (6, 2, 2)
  for bad in [(0.8, 0.1), (0.8, 0.3, 0.1), (1.1, -0.05, -0.05)]:
    with pytest.raises(ValueError, match="sizes"):
      S.split_sizes(10, bad)


def test_random_split_deterministic_disjoint_complete():
  a = S.random_split(1000, seed=3)
  b = S.random_split(1000, seed=3)
  c = S.random_split(1000, seed=4)
  _check_partition(a, 1000)
  assert [len(p) for p in a] == [800, 100, 100]
  for x, y in zip(a, b, strict=True):
    np.testing.assert_array_equal(x, y)
  assert not np.array_equal(a.test, c.test)


def test_murcko_scaffold():
  assert S.murcko_scaffold("Cc1ccccc1") == "c1ccccc1"
  assert S.murcko_scaffold("CCCCO") == ""
  with pytest.raises(ValueError, match="scaffold"):
    S.murcko_scaffold("C1CC")
  sets = S.scaffold_sets(TOY)
  assert sets == [[0, 1, 2, 3, 4], [5, 6, 7], [8], [9]]


def test_scaffold_split_by_hand():
  # Sizes 6/2/2, sets largest first: benzene (5) -> train; pyridine (3) fits
  # neither train (8 > 6) nor valid (3 > 2) -> test; cyclohexane -> train;
  # the acyclic molecule -> valid.
  split = S.scaffold_split(TOY, (0.6, 0.2, 0.2))
  assert [p.tolist() for p in split] == [[0, 1, 2, 3, 4, 8], [9], [5, 6, 7]]
  # Deterministic: the seed is unused without balancing.
  other = S.scaffold_split(TOY, (0.6, 0.2, 0.2), seed=7)
  assert [p.tolist() for p in other] == [p.tolist() for p in split]


def _reference_balanced(sets, n_train, n_valid, n_test, seed):
  """The GraphSAM code's scaffold_split(balanced=True), restated."""
  big = [s for s in sets if len(s) > n_valid / 2 or len(s) > n_test / 2]
  small = [s for s in sets if s not in big]
  rng = random.Random(seed)
  rng.seed(seed)
  rng.shuffle(big)
  rng.shuffle(small)
  train, valid, test = [], [], []
  for s in big + small:
    if len(train) + len(s) <= n_train:
      train += s
    elif len(valid) + len(s) <= n_valid:
      valid += s
    else:
      test += s
  return sorted(train), sorted(valid), sorted(test)


@pytest.fixture(scope="module")
def nci_smiles():
  # Offline, realistic: 600 NCI molecules shipped with RDKit.
  from rdkit import RDConfig

  path = f"{RDConfig.RDDataDir}/NCI/first_5K.smi"
  smiles = []
  with open(path) as f:
    for line in f:
      s = line.split("\t")[0]
      if Chem.MolFromSmiles(s) is not None:
        smiles.append(s)
      if len(smiles) == 600:
        break
  return smiles


def _scaffold_sides(split, smiles):
  sides = {}
  for side, part in zip("tvs", split, strict=True):
    for i in part:
      sides.setdefault(S.murcko_scaffold(smiles[i]), set()).add(side)
  return sides


@pytest.mark.parametrize("balanced", [False, True])
def test_scaffold_split_never_shares_a_scaffold(nci_smiles, balanced):
  split = S.scaffold_split(nci_smiles, balanced=balanced, seed=1)
  _check_partition(split, len(nci_smiles))
  assert all(len(s) == 1 for s in _scaffold_sides(split, nci_smiles).values())
  n_train, n_valid, n_test = S.split_sizes(len(nci_smiles))
  assert len(split.train) <= n_train and len(split.valid) <= n_valid


def test_balanced_matches_the_paper_code_and_depends_on_seed(nci_smiles):
  sets = S.scaffold_sets(nci_smiles)
  sizes = S.split_sizes(len(nci_smiles))
  for seed in (0, 1):
    split = S.scaffold_split(nci_smiles, balanced=True, seed=seed)
    expected = _reference_balanced(sets, *sizes, seed)
    assert [p.tolist() for p in split] == [list(p) for p in expected]
  a = S.scaffold_split(nci_smiles, balanced=True, seed=0)
  b = S.scaffold_split(nci_smiles, balanced=True, seed=0)
  c = S.scaffold_split(nci_smiles, balanced=True, seed=1)
  np.testing.assert_array_equal(a.test, b.test)
  assert not np.array_equal(a.test, c.test)


def test_split_dataset_dispatch():
  assert [len(p) for p in S.split_dataset(TOY, "random", seed=0)] == [8, 1, 1]
  scaffold = S.split_dataset(TOY, "scaffold", (0.6, 0.2, 0.2))
  assert scaffold.test.tolist() == [5, 6, 7]
  _check_partition(S.split_dataset(TOY, "scaffold_balanced"), len(TOY))
  with pytest.raises(ValueError, match="unknown split method"):
    S.split_dataset(TOY, "stratified")


def test_random_split_keeps_duplicates_together():
  smiles = [f"C{'C' * (i % 40)}O" for i in range(100)]  # 40 distinct, 2-3x
  plain = S.random_split(len(smiles), seed=5)
  for seed in range(5):
    split = S.split_dataset(smiles, "random", seed=seed)
    _check_partition(split, len(smiles))
    sides = {}
    for side, part in enumerate(split):
      for i in part:
        sides.setdefault(smiles[i], set()).add(side)
    assert all(len(s) == 1 for s in sides.values())
    n_train, _, _ = S.split_sizes(len(smiles))
    assert abs(len(split.train) - n_train) < 3  # off by less than a group
  # Without duplicates the split is the plain permutation split.
  distinct = [f"C{'C' * i}O" for i in range(100)]
  same = S.split_dataset(distinct, "random", seed=5)
  for a, b in zip(plain, same, strict=True):
    np.testing.assert_array_equal(a, b)


def test_split_file_round_trip(tmp_path):
  rows = np.array([0, 1, 3, 4, 5, 6], np.int64)  # data row 2 was dropped
  path = tmp_path / "split.json"
  path.write_text('{"train": [0, 1, 2, 3], "val": [4], "test": [5]}')
  split, skipped, unused = S.read_split_file(path, rows, num_rows=7)
  assert [p.tolist() for p in split] == [[0, 1, 2], [3], [4]]
  assert (skipped, unused) == (1, 1)  # row 2 dropped, row 6 unlisted
  assert S.split_rows(split, rows) == {
    "train": [0, 1, 3],
    "valid": [4],
    "test": [5],
  }


@pytest.mark.parametrize(
  "content, message",
  [
    ("[0, 1]", "expected an object"),
    ('{"train": [0], "valid": [1], "tset": [2]}', "unexpected key 'tset'"),
    ('{"train": [0], "valid": [1]}', "no 'test' list"),
    ('{"train": [0], "valid": [1], "test": [9]}', r"\[0, 7\).*got 9"),
    ('{"train": [0], "valid": [1], "test": [1.0]}', "got 1.0"),
    ('{"train": [0, 1], "valid": [1], "test": [3]}', "row 1 is in 'train'"),
    ('{"train": [0], "valid": [2], "test": [3]}', "no loadable molecule"),
    ("{", "cannot read"),
  ],
)
def test_bad_split_files_are_named(tmp_path, content, message):
  path = tmp_path / "split.json"
  path.write_text(content)
  with pytest.raises(S.SplitFileError, match=message) as info:
    S.read_split_file(path, np.array([0, 1, 3, 4, 5, 6]), num_rows=7)
  assert str(path) in str(info.value)
