"""RDKit featurization of molecules into CoMPT atom and atom-pair features.

A molecule becomes three NumPy arrays: atom features ``f32[n, 115]``
(:class:`AtomFeaturizer`), and for every ordered atom pair ``(i, j)`` a bond id
(a row of :meth:`BondFeaturizer.vocabulary`, 0 = not bonded) and the
topological distance ``D_ij``. Fragments that are not connected (salts,
mixtures) are :data:`DISCONNECTED_DISTANCE` apart.

Many molecules are stored concatenated in a :class:`MolecularGraphs` (CSR
layout, compact dtypes) that :mod:`models.input_pipeline` gathers batches from,
and that :func:`featurize_cached` keeps on disk.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import rdkit
from rdkit import Chem
from rdkit import rdBase
from rdkit.Chem import rdPartialCharges
from tqdm.auto import tqdm

from models import files

FEATURIZER_VERSION = 1
"""Bumped whenever a feature changes; part of every cache key."""

DISCONNECTED_DISTANCE = 1e4
"""Topological distance between atoms of different fragments.

Finite, so ``exp(-lambda * D)`` underflows to 0 without ``inf * 0`` NaNs."""

_log = logging.getLogger(__name__)


class AtomFeaturizer:
  """The 115 CoMPT atom features of an RDKit atom.

  Feature order (``feature_names()`` spells out every column):

  * ``[0, 101)`` atomic number one-hot over 1..100, then an unknown bit;
  * ``[101, 107)`` hybridization one-hot over SP, SP2, SP3, SP3D, SP3D2, then
    an unknown bit (S, SP2D, UNSPECIFIED, OTHER);
  * ``[107, 115)`` total H count / 8, degree / 4, formal charge / 8, total
    valence / 8, Gasteiger charge, Gasteiger charge of the implicit H (both
    0 where RDKit gives NaN or inf), aromatic, in ring.

  Gasteiger charges are computed on the atom's molecule when missing.
  ``compact`` and ``expand`` store the same features as two small integer
  codes and eight floats per atom.

  Examples:
    >>> featurizer = AtomFeaturizer()
    >>> len(featurizer)
    115
    >>> x = featurizer(Chem.MolFromSmiles("CCO").GetAtomWithIdx(2))
    >>> [featurizer.feature_names()[i] for i in x.nonzero()[0][:2]]
    ['atomic_num=8', 'hybridization=SP3']
  """

  atomic_numbers = tuple(range(1, 101))
  hybridizations = (
    Chem.HybridizationType.SP,
    Chem.HybridizationType.SP2,
    Chem.HybridizationType.SP3,
    Chem.HybridizationType.SP3D,
    Chem.HybridizationType.SP3D2,
  )
  scalar_names = (
    "total_num_hs/8",
    "degree/4",
    "formal_charge/8",
    "total_valence/8",
    "gasteiger_charge",
    "gasteiger_h_charge",
    "is_aromatic",
    "is_in_ring",
  )

  def __init__(self):
    self._z_index = {z: i for i, z in enumerate(self.atomic_numbers)}
    self._h_index = {h: i for i, h in enumerate(self.hybridizations)}
    self.num_atom_types = len(self.atomic_numbers) + 1
    self.num_hybridizations = len(self.hybridizations) + 1
    self.hybridization_offset = self.num_atom_types
    self.scalar_offset = self.num_atom_types + self.num_hybridizations
    self._size = self.scalar_offset + len(self.scalar_names)

  def __len__(self) -> int:
    return self._size

  def feature_names(self) -> list[str]:
    """Column names, in feature order."""
    names = [f"atomic_num={z}" for z in self.atomic_numbers]
    names.append("atomic_num=unknown")
    names += [f"hybridization={h.name}" for h in self.hybridizations]
    names.append("hybridization=unknown")
    return names + list(self.scalar_names)

  def codes(self, atom: Chem.Atom) -> tuple[int, int, list[float]]:
    """(atom type index, hybridization index, 8 scalars) of one atom."""
    if not atom.HasProp("_GasteigerCharge"):
      rdPartialCharges.ComputeGasteigerCharges(atom.GetOwningMol())
    return self._codes(atom)

  def _codes(self, atom: Chem.Atom) -> tuple[int, int, list[float]]:
    return (
      self._z_index.get(atom.GetAtomicNum(), len(self.atomic_numbers)),
      self._h_index.get(atom.GetHybridization(), len(self.hybridizations)),
      [
        atom.GetTotalNumHs(includeNeighbors=True) / 8,
        atom.GetDegree() / 4,
        atom.GetFormalCharge() / 8,
        atom.GetTotalValence() / 8,
        _finite_or_zero(atom.GetDoubleProp("_GasteigerCharge")),
        _finite_or_zero(atom.GetDoubleProp("_GasteigerHCharge")),
        float(atom.GetIsAromatic()),
        float(atom.IsInRing()),
      ],
    )

  def compact(self, mol: Chem.Mol) -> tuple[np.ndarray, ...]:
    """(u8[n] type, u8[n] hybridization, f32[n, 8] scalars) of all atoms."""
    rdPartialCharges.ComputeGasteigerCharges(mol)
    codes = [
      self._codes(mol.GetAtomWithIdx(i)) for i in range(mol.GetNumAtoms())
    ]
    n = len(codes)
    atom_type = np.fromiter((c[0] for c in codes), np.uint8, n)
    hybridization = np.fromiter((c[1] for c in codes), np.uint8, n)
    scalars = np.array([c[2] for c in codes], np.float32).reshape(n, -1)
    return atom_type, hybridization, scalars

  def expand(
    self, atom_type: np.ndarray, hybridization: np.ndarray, scalars: np.ndarray
  ) -> np.ndarray:
    """f32[n, 115] features from the codes of ``compact``."""
    n = len(atom_type)
    out = np.zeros((n, self._size), np.float32)
    rows = np.arange(n)
    out[rows, atom_type] = 1.0
    out[rows, self.hybridization_offset + hybridization.astype(np.intp)] = 1.0
    out[:, self.scalar_offset :] = scalars
    return out

  def __call__(self, atom: Chem.Atom) -> np.ndarray:
    """f32[115] features of one atom."""
    t, h, scalars = self.codes(atom)
    return self.expand(
      np.array([t]), np.array([h]), np.array([scalars], np.float32)
    )[0]


class BondFeaturizer:
  """The 13 CoMPT bond features of an RDKit bond, and their vocabulary.

  Feature order: bond type one-hot (single, double, triple, aromatic); stereo
  one-hot (any, cis, E, none, trans, Z); conjugated; aromatic; in ring. Other
  bond types (dative and the like: 8 bonds in ClinTox, 2 in HIV) count as
  single, and atropisomer stereo counts as "any", so every bond has exactly
  one type bit and one stereo bit.

  The features of a bond take one of ``4 * 6 * 2**3 = 192`` values. A bond is
  stored as its id in ``1..192``; ``vocabulary()[id]`` is its 13-vector and
  row 0 (all zeros) means "no bond".

  Examples:
    >>> featurizer = BondFeaturizer()
    >>> len(featurizer), featurizer.vocabulary().shape
    (13, (193, 13))
    >>> bond = Chem.MolFromSmiles("c1ccccc1").GetBondWithIdx(0)
    >>> vector = featurizer.vocabulary()[featurizer.bond_id(bond)]
    >>> vector.nonzero()[0].tolist()  # aromatic, no stereo, conj, arom, ring
    [3, 7, 10, 11, 12]
  """

  bond_types = (
    Chem.BondType.SINGLE,
    Chem.BondType.DOUBLE,
    Chem.BondType.TRIPLE,
    Chem.BondType.AROMATIC,
  )
  stereos = (
    Chem.BondStereo.STEREOANY,
    Chem.BondStereo.STEREOCIS,
    Chem.BondStereo.STEREOE,
    Chem.BondStereo.STEREONONE,
    Chem.BondStereo.STEREOTRANS,
    Chem.BondStereo.STEREOZ,
  )
  flag_names = ("is_conjugated", "is_aromatic", "is_in_ring")

  def __init__(self):
    self._t_index = {t: i for i, t in enumerate(self.bond_types)}
    self._s_index = {s: i for i, s in enumerate(self.stereos)}
    self._any = self._s_index[Chem.BondStereo.STEREOANY]
    self._size = len(self.bond_types) + len(self.stereos) + len(self.flag_names)
    self.vocabulary_size = 1 + (
      len(self.bond_types) * len(self.stereos) * 2 ** len(self.flag_names)
    )

  def __len__(self) -> int:
    return self._size

  def feature_names(self) -> list[str]:
    """Column names, in feature order."""
    return (
      [f"bond_type={t.name}" for t in self.bond_types]
      + [f"stereo={s.name}" for s in self.stereos]
      + list(self.flag_names)
    )

  def codes(self, bond: Chem.Bond) -> tuple[int, int, int, int, int]:
    """(type index, stereo index, conjugated, aromatic, in ring)."""
    return (
      self._t_index.get(bond.GetBondType(), 0),
      self._s_index.get(bond.GetStereo(), self._any),
      int(bond.GetIsConjugated()),
      int(bond.GetIsAromatic()),
      int(bond.IsInRing()),
    )

  def _id(self, t: int, s: int, conj: int, arom: int, ring: int) -> int:
    return 1 + (((t * len(self.stereos) + s) * 2 + conj) * 2 + arom) * 2 + ring

  def bond_id(self, bond: Chem.Bond) -> int:
    """Row of ``vocabulary()`` holding this bond's features (>= 1)."""
    return self._id(*self.codes(bond))

  def _vector(self, t: int, s: int, conj: int, arom: int, ring: int):
    x = np.zeros(self._size, np.float32)
    x[t] = 1.0
    x[len(self.bond_types) + s] = 1.0
    x[-3:] = conj, arom, ring
    return x

  def __call__(self, bond: Chem.Bond) -> np.ndarray:
    """f32[13] features of one bond."""
    return self._vector(*self.codes(bond))

  def vocabulary(self) -> np.ndarray:
    """f32[V, 13]: row 0 zeros ("no bond"), row ``bond_id(b)`` = ``self(b)``."""
    vocab = np.zeros((self.vocabulary_size, self._size), np.float32)
    for t in range(len(self.bond_types)):
      for s in range(len(self.stereos)):
        for flags in np.ndindex(2, 2, 2):
          vocab[self._id(t, s, *flags)] = self._vector(t, s, *flags)
    return vocab


def _finite_or_zero(x: float) -> float:
  return x if math.isfinite(x) else 0.0


ATOM_FEATURIZER = AtomFeaturizer()
BOND_FEATURIZER = BondFeaturizer()
ATOM_DIM = len(ATOM_FEATURIZER)  # 115
BOND_DIM = len(BOND_FEATURIZER)  # 13
BOND_VOCABULARY_SIZE = BOND_FEATURIZER.vocabulary_size  # 193


@dataclasses.dataclass(frozen=True)
class DroppedMolecule:
  """A SMILES that was not featurized.

  Attributes:
    index: position in the input list (for a loaded dataset: the 0-based data
      row of the CSV).
    smiles: the SMILES string.
    reason: why, as RDKit says it (e.g. a valence error).
  """

  index: int
  smiles: str
  reason: str


def parse_smiles(smiles: str) -> tuple[Chem.Mol | None, str]:
  """RDKit molecule (default sanitization) and "" or, on failure, None and why.

  RDKit's own log lines are silenced; the reason is returned instead.
  """
  with rdBase.BlockLogs():
    mol = Chem.MolFromSmiles(smiles)
    if mol is not None:
      return (mol, "") if mol.GetNumAtoms() else (None, "no atoms")
    raw = Chem.MolFromSmiles(smiles, sanitize=False)
    if raw is None:
      return None, "SMILES syntax error"
    try:
      Chem.SanitizeMol(raw)
    except Exception as e:  # noqa: BLE001 - RDKit raises several types
      return None, f"sanitization failed: {e}"
    return None, "RDKit could not build the molecule"


def distance_matrix(mol: Chem.Mol) -> np.ndarray:
  """f32[n, n] topological distances, DISCONNECTED_DISTANCE across fragments."""
  d = Chem.GetDistanceMatrix(mol)
  d[d > mol.GetNumAtoms()] = DISCONNECTED_DISTANCE
  return d.astype(np.float32)


def bond_id_matrix(mol: Chem.Mol) -> np.ndarray:
  """i32[n, n] bond vocabulary ids of all ordered pairs (0: not bonded)."""
  n = mol.GetNumAtoms()
  ids = np.zeros((n, n), np.int32)
  for k in range(mol.GetNumBonds()):
    bond = mol.GetBondWithIdx(k)
    i, j = bond.GetBeginAtomIdx(), bond.GetEndAtomIdx()
    ids[i, j] = ids[j, i] = BOND_FEATURIZER.bond_id(bond)
  return ids


@dataclasses.dataclass(frozen=True)
class MolGraph:
  """One featurized molecule.

  Attributes:
    nodes: f32[n, 115] atom features.
    bond: i32[n, n] bond vocabulary id of the pair (i, j), 0 if not bonded.
    distance: f32[n, n] topological distance (0 on the diagonal).
  """

  nodes: np.ndarray
  bond: np.ndarray
  distance: np.ndarray


def featurize_mol(mol: Chem.Mol) -> MolGraph:
  """Atom features, pair bond ids and distances of one RDKit molecule.

  Examples:
    >>> g = featurize_mol(Chem.MolFromSmiles("CCO.[Na+]"))
    >>> g.nodes.shape, g.bond.shape
    ((4, 115), (4, 4))
    >>> g.distance[0].tolist()
    [0.0, 1.0, 2.0, 10000.0]
  """
  return MolGraph(
    ATOM_FEATURIZER.expand(*ATOM_FEATURIZER.compact(mol)),
    bond_id_matrix(mol),
    distance_matrix(mol),
  )


@dataclasses.dataclass(frozen=True, eq=False)
class MolecularGraphs:
  """Many featurized molecules, concatenated (CSR layout, compact dtypes).

  Molecule ``k`` owns atoms ``atom_offsets[k]:atom_offsets[k+1]`` and pairs
  ``pair_offsets[k]:pair_offsets[k+1]``; its ``n * n`` pairs are stored row
  major, pair ``i * n + j`` being (receiver i <- sender j).

  Attributes:
    n_atoms: i32[M] atoms per molecule.
    atom_type: u8[A] atomic-number index (AtomFeaturizer columns 0..100).
    atom_hybridization: u8[A] hybridization index (0..5).
    atom_scalars: f32[A, 8] the eight scalar atom features.
    pair_bond: u8[P] bond vocabulary id (0: not bonded or i == j).
    pair_distance: u16[P] topological distance (DISCONNECTED_DISTANCE across
      fragments).
  """

  n_atoms: np.ndarray
  atom_type: np.ndarray
  atom_hybridization: np.ndarray
  atom_scalars: np.ndarray
  pair_bond: np.ndarray
  pair_distance: np.ndarray

  def __post_init__(self):
    n = self.n_atoms.astype(np.int64)
    atom_offsets = np.concatenate([[0], np.cumsum(n)])
    pair_offsets = np.concatenate([[0], np.cumsum(n * n)])
    if atom_offsets[-1] != len(self.atom_type):
      raise ValueError("n_atoms does not match the number of atom rows")
    if pair_offsets[-1] != len(self.pair_bond):
      raise ValueError("n_atoms**2 does not match the number of pair rows")
    object.__setattr__(self, "atom_offsets", atom_offsets)
    object.__setattr__(self, "pair_offsets", pair_offsets)

  def __len__(self) -> int:
    return len(self.n_atoms)

  def atom_features(self, rows: np.ndarray | slice = slice(None)) -> np.ndarray:
    """f32[len(rows), 115] features of the given atom rows."""
    return ATOM_FEATURIZER.expand(
      self.atom_type[rows],
      self.atom_hybridization[rows],
      self.atom_scalars[rows],
    )

  def molecule(self, k: int) -> MolGraph:
    """The MolGraph of molecule k."""
    n = int(self.n_atoms[k])
    atoms = slice(self.atom_offsets[k], self.atom_offsets[k + 1])
    pairs = slice(self.pair_offsets[k], self.pair_offsets[k + 1])
    return MolGraph(
      self.atom_features(atoms),
      self.pair_bond[pairs].astype(np.int32).reshape(n, n),
      self.pair_distance[pairs].astype(np.float32).reshape(n, n),
    )

  _FIELDS = (
    "n_atoms",
    "atom_type",
    "atom_hybridization",
    "atom_scalars",
    "pair_bond",
    "pair_distance",
  )

  @classmethod
  def from_parts(cls, parts: Sequence[tuple[np.ndarray, ...]]):
    """Concatenates per-molecule (type, hybridization, scalars, bond, dist)."""
    if not parts:
      return cls(
        np.zeros(0, np.int32),
        np.zeros(0, np.uint8),
        np.zeros(0, np.uint8),
        np.zeros((0, len(AtomFeaturizer.scalar_names)), np.float32),
        np.zeros(0, np.uint8),
        np.zeros(0, np.uint16),
      )
    t, h, s, b, d = zip(*parts, strict=True)
    return cls(
      np.array([len(x) for x in t], np.int32),
      np.concatenate(t),
      np.concatenate(h),
      np.concatenate(s),
      np.concatenate([x.ravel() for x in b]).astype(np.uint8),
      np.concatenate([x.ravel() for x in d]).astype(np.uint16),
    )

  def arrays(self) -> dict[str, np.ndarray]:
    return {name: getattr(self, name) for name in self._FIELDS}


def _mol_parts(mol: Chem.Mol) -> tuple[np.ndarray, ...]:
  if mol.GetNumAtoms() >= DISCONNECTED_DISTANCE:
    raise ValueError("molecules of 10,000 atoms or more are not supported")
  return (
    *ATOM_FEATURIZER.compact(mol),
    bond_id_matrix(mol),
    distance_matrix(mol),
  )


@dataclasses.dataclass(frozen=True, eq=False)
class FeaturizedSmiles:
  """Result of featurizing a list of SMILES.

  Attributes:
    graphs: the featurized molecules that RDKit could parse, in input order.
    kept: i64[M] input positions of those molecules.
    dropped: the SMILES that were skipped, with the reason.
  """

  graphs: MolecularGraphs
  kept: np.ndarray
  dropped: tuple[DroppedMolecule, ...]


class InvalidSmilesError(ValueError):
  """Raised in strict mode when some SMILES cannot be parsed."""


def describe_dropped(
  dropped: Sequence[DroppedMolecule], limit: int = 20
) -> str:
  """One line per dropped molecule (at most ``limit``): index, SMILES, why."""
  lines = [f"row {d.index}: {d.smiles!r} ({d.reason})" for d in dropped[:limit]]
  if len(dropped) > limit:
    lines.append(f"... and {len(dropped) - limit} more")
  return "; ".join(lines)


def find_invalid_smiles(
  smiles: Sequence[str], *, progress: bool | None = None
) -> tuple[DroppedMolecule, ...]:
  """Parses every SMILES (no featurization) and lists those that fail."""
  dropped = []
  for i, s in enumerate(_progress(smiles, progress, "parsing SMILES")):
    mol, reason = parse_smiles(s)
    if mol is None:
      dropped.append(DroppedMolecule(i, s, reason))
  return tuple(dropped)


def featurize_smiles(
  smiles: Sequence[str],
  *,
  strict: bool = False,
  progress: bool | None = None,
) -> FeaturizedSmiles:
  """Featurizes SMILES strings, skipping (or, if strict, rejecting) bad ones.

  Args:
    smiles: SMILES strings.
    strict: raise InvalidSmilesError listing every SMILES that RDKit cannot
      parse, instead of skipping them.
    progress: tqdm progress bar; None shows one on a terminal only.

  Returns:
    A FeaturizedSmiles; ``dropped`` lists skipped inputs with reasons.
  """
  parts, kept, dropped = [], [], []
  for i, s in enumerate(_progress(smiles, progress, "featurizing")):
    mol, reason = parse_smiles(s)
    if mol is None:
      dropped.append(DroppedMolecule(i, s, reason))
      continue
    with rdBase.BlockLogs():
      parts.append(_mol_parts(mol))
    kept.append(i)
  if strict and dropped:
    raise InvalidSmilesError(
      f"{len(dropped)} of {len(smiles)} SMILES cannot be parsed by RDKit: "
      + describe_dropped(dropped)
    )
  return FeaturizedSmiles(
    MolecularGraphs.from_parts(parts), np.array(kept, np.int64), tuple(dropped)
  )


def _progress(items, progress: bool | None, desc: str):
  disable = None if progress is None else not progress
  if progress is None and len(items) < 5000:
    disable = True
  return tqdm(items, desc=desc, disable=disable, leave=False)


def _smiles_digest(smiles: Sequence[str]) -> str:
  h = hashlib.sha256()
  for s in smiles:
    h.update(s.encode())
    h.update(b"\n")
  return h.hexdigest()


def cache_filename(key: str) -> str:
  """Cache file name: the key, the featurizer and the RDKit version."""
  return f"{key}-f{FEATURIZER_VERSION}-rdkit{rdkit.__version__}.npz"


def featurize_cached(
  smiles: Sequence[str],
  cache_dir: str | os.PathLike | None,
  key: str,
  *,
  strict: bool = False,
  progress: bool | None = None,
) -> FeaturizedSmiles:
  """``featurize_smiles`` with a cache file ``cache_dir/cache_filename(key)``.

  ``key`` should identify the input (a dataset name plus the checksum of its
  file); the file also records a digest of the SMILES and is recomputed when
  that does not match. ``cache_dir=None`` disables the cache.
  """
  if cache_dir is None:
    return featurize_smiles(smiles, strict=strict, progress=progress)
  path = Path(cache_dir) / cache_filename(key)
  digest = _smiles_digest(smiles)
  result = _read_cache(path, digest)
  if result is None:
    result = featurize_smiles(smiles, progress=progress)
    _write_cache(path, result, digest, len(smiles))
  else:
    _log.info("loaded featurized molecules from %s", path)
  if strict and result.dropped:
    raise InvalidSmilesError(
      f"{len(result.dropped)} of {len(smiles)} SMILES cannot be parsed by "
      "RDKit: " + describe_dropped(result.dropped)
    )
  return result


def _read_cache(path: Path, digest: str) -> FeaturizedSmiles | None:
  if not path.exists():
    return None
  try:
    with np.load(path, allow_pickle=False) as f:
      meta = json.loads(str(f["meta"]))
      if meta["smiles_digest"] != digest:
        _log.warning("cache %s is for other SMILES; recomputing", path)
        return None
      graphs = MolecularGraphs(**{k: f[k] for k in MolecularGraphs._FIELDS})
      kept = f["kept"]
  except (OSError, KeyError, ValueError) as e:
    _log.warning("unreadable cache %s (%s); recomputing", path, e)
    return None
  dropped = tuple(DroppedMolecule(*d) for d in meta["dropped"])
  return FeaturizedSmiles(graphs, kept, dropped)


def _write_cache(path: Path, result: FeaturizedSmiles, digest: str, n: int):
  meta = {
    "smiles_digest": digest,
    "num_smiles": n,
    "featurizer_version": FEATURIZER_VERSION,
    "rdkit_version": rdkit.__version__,
    "dropped": [dataclasses.astuple(d) for d in result.dropped],
  }
  arrays = result.graphs.arrays()
  try:
    path.parent.mkdir(parents=True, exist_ok=True)
    with files.atomic_write(path, "wb") as f:
      np.savez_compressed(f, meta=json.dumps(meta), kept=result.kept, **arrays)
    _log.info("cached featurized molecules in %s", path)
  except OSError as e:
    _log.warning("could not write cache %s: %s", path, e)
