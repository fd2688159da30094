"""Featurization checked by hand on a few molecules, and its disk cache."""

import numpy as np
import pytest
from rdkit import Chem

from models import featurization as F

ATOM = F.AtomFeaturizer()
BOND = F.BondFeaturizer()
HYB = ATOM.hybridization_offset  # 101
SCALARS = ATOM.scalar_offset  # 107


def _mol(smiles):
  mol, reason = F.parse_smiles(smiles)
  assert mol is not None, reason
  return mol


def test_len():
  assert len(ATOM) == F.ATOM_DIM == 115
  assert len(ATOM.feature_names()) == 115
  assert (HYB, SCALARS) == (101, 107)
  assert len(BOND) == F.BOND_DIM == 13
  assert len(BOND.feature_names()) == 13
  assert BOND.vocabulary_size == F.BOND_VOCABULARY_SIZE == 1 + 4 * 6 * 8


def test_golden_atom_vector_ethanol_carbon():
  atom = _mol("CCO").GetAtomWithIdx(0)
  expected = np.zeros(115, np.float32)
  expected[6 - 1] = 1  # carbon
  expected[HYB + 2] = 1  # SP3
  expected[SCALARS:] = [
    3 / 8,  # total H
    1 / 4,  # degree
    0,  # formal charge
    4 / 8,  # total valence
    -0.041838486154772384,  # Gasteiger charge (RDKit 2026.09)
    0.07611987477706995,  # Gasteiger charge of the implicit H
    0,  # aromatic
    0,  # in ring
  ]
  np.testing.assert_allclose(ATOM(atom), expected, atol=1e-6)


def test_atom_features_by_hand():
  g = F.featurize_mol(_mol("c1ccccc1O"))  # phenol
  assert g.nodes.shape == (7, 115)
  assert g.nodes[:6, 5].all() and g.nodes[6, 7]  # 6 C, then O
  assert g.nodes[:, HYB + 1].all()  # all SP2 (the O is conjugated)
  np.testing.assert_array_equal(g.nodes[:, SCALARS + 6], [1] * 6 + [0])
  np.testing.assert_array_equal(g.nodes[:, SCALARS + 7], [1] * 6 + [0])
  np.testing.assert_allclose(g.nodes[5, SCALARS + 1], 3 / 4)  # ipso C
  np.testing.assert_allclose(g.nodes[6, SCALARS], 1 / 8)  # OH
  # Every atom has one atomic-number bit and one hybridization bit.
  np.testing.assert_array_equal(g.nodes[:, :HYB].sum(1), 1)
  np.testing.assert_array_equal(g.nodes[:, HYB:SCALARS].sum(1), 1)


def test_unknown_bits_charges_and_nan_gasteiger():
  g = F.featurize_mol(_mol("[Na+].[Cl-]"))
  assert g.nodes[0, 10] == 1 and g.nodes[1, 16] == 1
  assert g.nodes[0, HYB + 5] == 1  # Na is "S": the unknown bit
  np.testing.assert_allclose(g.nodes[:, SCALARS + 2], [1 / 8, -1 / 8])
  g = F.featurize_mol(_mol("C[Se]C"))  # RDKit gives NaN Gasteiger charges
  assert np.isfinite(g.nodes).all()
  np.testing.assert_array_equal(g.nodes[:, SCALARS + 4], 0)
  g = F.featurize_mol(_mol("[U]"))  # uranium, 92
  assert g.nodes[0, 91] == 1
  g = F.featurize_mol(_mol("*C"))  # dummy atom 0: unknown atomic number
  assert g.nodes[0, 100] == 1


def _bond_vector(type_index, stereo_name, conj, arom, ring):
  x = np.zeros(13, np.float32)
  x[type_index] = 1
  names = [s.name for s in BOND.stereos]
  x[4 + names.index(stereo_name)] = 1
  x[10:] = conj, arom, ring
  return x


@pytest.mark.parametrize(
  "smiles, bond_index, expected",
  [
    ("CCO", 0, _bond_vector(0, "STEREONONE", 0, 0, 0)),
    ("c1ccccc1", 0, _bond_vector(3, "STEREONONE", 1, 1, 1)),
    ("CC#N", 1, _bond_vector(2, "STEREONONE", 0, 0, 0)),
    ("F/C=C/F", 1, _bond_vector(1, "STEREOE", 0, 0, 0)),
    ("F/C=C\\F", 1, _bond_vector(1, "STEREOZ", 0, 0, 0)),
    ("C1CCCCC1", 2, _bond_vector(0, "STEREONONE", 0, 0, 1)),
    ("N->[Pt]", 0, _bond_vector(0, "STEREONONE", 0, 0, 0)),  # dative: single
  ],
)
def test_bond_features_by_hand(smiles, bond_index, expected):
  bond = _mol(smiles).GetBondWithIdx(bond_index)
  np.testing.assert_array_equal(BOND(bond), expected)
  np.testing.assert_array_equal(BOND.vocabulary()[BOND.bond_id(bond)], expected)


def test_vocabulary():
  vocab = BOND.vocabulary()
  assert vocab.shape == (193, 13) and vocab.dtype == np.float32
  np.testing.assert_array_equal(vocab[0], 0)
  assert len(np.unique(vocab, axis=0)) == 193
  np.testing.assert_array_equal(vocab[1:, :4].sum(1), 1)
  np.testing.assert_array_equal(vocab[1:, 4:10].sum(1), 1)


def test_pairs_and_distances_by_hand():
  g = F.featurize_mol(_mol("CC(=O)O"))  # acetic acid: C0-C1(=O2)-O3
  vocab = BOND.vocabulary()
  single = _bond_vector(0, "STEREONONE", 0, 0, 0)
  conjugated_single = _bond_vector(0, "STEREONONE", 1, 0, 0)
  conjugated_double = _bond_vector(1, "STEREONONE", 1, 0, 0)
  assert g.bond[0, 1] == g.bond[1, 0]
  np.testing.assert_array_equal(vocab[g.bond[0, 1]], single)
  np.testing.assert_array_equal(vocab[g.bond[3, 1]], conjugated_single)
  np.testing.assert_array_equal(vocab[g.bond[1, 2]], conjugated_double)
  assert g.bond[0, 2] == g.bond[0, 0] == g.bond[2, 3] == 0
  np.testing.assert_array_equal(
    g.distance, [[0, 1, 2, 2], [1, 0, 1, 1], [2, 1, 0, 2], [2, 1, 2, 0]]
  )
  g = F.featurize_mol(_mol("c1ccccc1"))
  assert g.distance.max() == 3
  assert (g.bond != 0).sum() == 12  # 6 bonds, both directions


def test_disconnected_fragments():
  g = F.featurize_mol(_mol("CC(=O)[O-].[Na+]"))
  assert F.DISCONNECTED_DISTANCE == 1e4
  np.testing.assert_array_equal(g.distance[4, :4], F.DISCONNECTED_DISTANCE)
  np.testing.assert_array_equal(g.distance[:4, 4], F.DISCONNECTED_DISTANCE)
  assert g.distance[4, 4] == 0 and g.distance[:4, :4].max() == 2
  np.testing.assert_array_equal(g.bond[4], 0)
  assert np.exp(-0.1 * g.distance).min() == 0.0  # underflows, no inf


def test_parse_smiles_reasons():
  assert F.parse_smiles("C1CC")[1] == "SMILES syntax error"
  assert "valence" in F.parse_smiles("C[N](C)(C)(C)C")[1]
  assert F.parse_smiles("")[1] == "no atoms"
  mol, reason = F.parse_smiles("CCO")
  assert mol.GetNumAtoms() == 3 and reason == ""


SMILES = ["CCO", "C1CC", "c1ccccc1O", "[Na+].[Cl-]", "C[N](C)(C)(C)C", "CC#N"]


def test_featurize_smiles_reports_and_concatenates():
  result = F.featurize_smiles(SMILES)
  np.testing.assert_array_equal(result.kept, [0, 2, 3, 5])
  assert [(d.index, d.smiles) for d in result.dropped] == [
    (1, "C1CC"),
    (4, "C[N](C)(C)(C)C"),
  ]
  graphs = result.graphs
  np.testing.assert_array_equal(graphs.n_atoms, [3, 7, 2, 3])
  assert graphs.pair_bond.dtype == np.uint8
  assert graphs.pair_distance.dtype == np.uint16
  for k, i in enumerate(result.kept):
    expected = F.featurize_mol(_mol(SMILES[i]))
    got = graphs.molecule(k)
    np.testing.assert_array_equal(got.nodes, expected.nodes)
    np.testing.assert_array_equal(got.bond, expected.bond)
    np.testing.assert_array_equal(got.distance, expected.distance)
  assert [d.index for d in F.find_invalid_smiles(SMILES)] == [1, 4]


def test_strict_raises_with_rows():
  with pytest.raises(F.InvalidSmilesError, match=r"row 1: 'C1CC'.*row 4"):
    F.featurize_smiles(SMILES, strict=True)


def test_empty_input():
  result = F.featurize_smiles([])
  assert len(result.graphs) == 0 and len(result.kept) == 0


def test_cache_round_trip(tmp_path, monkeypatch):
  first = F.featurize_cached(SMILES, tmp_path, "toy-0123")
  path = tmp_path / F.cache_filename("toy-0123")
  assert path.exists()
  assert f"-f{F.FEATURIZER_VERSION}-" in path.name

  def fail(*args, **kwargs):
    raise AssertionError("featurized again instead of reading the cache")

  monkeypatch.setattr(F, "featurize_smiles", fail)
  second = F.featurize_cached(SMILES, tmp_path, "toy-0123")
  for name, value in first.graphs.arrays().items():
    np.testing.assert_array_equal(getattr(second.graphs, name), value)
  np.testing.assert_array_equal(second.kept, first.kept)
  assert second.dropped == first.dropped
  with pytest.raises(F.InvalidSmilesError):
    F.featurize_cached(SMILES, tmp_path, "toy-0123", strict=True)
  monkeypatch.undo()
  # Same key, other SMILES: the digest does not match and it is recomputed.
  other = F.featurize_cached(SMILES[:1], tmp_path, "toy-0123")
  np.testing.assert_array_equal(other.graphs.n_atoms, [3])


def test_corrupt_cache_is_recomputed(tmp_path):
  path = tmp_path / F.cache_filename("bad")
  path.write_bytes(b"not an npz file")
  result = F.featurize_cached(SMILES, tmp_path, "bad")
  assert len(result.graphs) == 4


def test_atom_featurizer_matches_rdkit_atom_by_atom():
  mol = Chem.MolFromSmiles("CN1C=NC2=C1C(=O)N(C(=O)N2C)C")  # caffeine
  nodes = F.featurize_mol(mol).nodes
  for atom in mol.GetAtoms():
    np.testing.assert_array_equal(nodes[atom.GetIdx()], ATOM(atom))
