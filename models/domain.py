"""The applicability domain of a run: is a molecule like its training set?

A prediction is an interpolation from the molecules a model trained on; a
molecule unlike all of them gets a number all the same. When a run
finishes, :func:`fit` records what its training molecules span, and
:func:`check` flags a new molecule that is outside it, for any of three
reasons:

* **size**: more atoms than any training molecule (the attention and the
  padding budgets never saw such a graph);
* **unseen features**: an element, a hybridization, a formal charge or a
  bond (type, stereo, conjugation, ring) that no training molecule has, so
  its embedding weights were never trained;
* **dissimilarity**: the Tanimoto similarity of its Morgan fingerprint
  (radius 2, 2048 bits, RDKit's ``rdFingerprintGenerator``) to the nearest
  training molecule is below a threshold fitted on the validation part:
  the 5th percentile of the validation molecules' nearest-training
  similarities (:data:`PERCENTILE`). The validation molecules are new to
  the model but drawn like its training set, so a molecule below the
  threshold is further from the training set than 95 % of them.

The record is ``domain.json`` (sizes, seen values, threshold) and
``domain_fingerprints.npz`` (the training fingerprints' on-bits) in the run
directory (:mod:`models.run_dir`). A flag is a warning, not a verdict: a
molecule inside the domain can be mispredicted, one outside it can be right.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np

from models import featurization

RECORD = "domain.json"
FINGERPRINTS = "domain_fingerprints.npz"
FORMAT_VERSION = 1
RADIUS = 2
BITS = 2048
PERCENTILE = 5.0
"""The similarity threshold is this percentile of the validation molecules'
similarities to their nearest training molecule."""
IN, OUT, UNKNOWN = "yes", "no", "unknown"


def _generator():
  from rdkit.Chem import rdFingerprintGenerator

  return rdFingerprintGenerator.GetMorganGenerator(radius=RADIUS, fpSize=BITS)


def fingerprints(smiles: Sequence[str]) -> list:
  """Morgan fingerprints (``ExplicitBitVect``) of parseable SMILES."""
  generator = _generator()
  out = []
  for s in smiles:
    mol, reason = featurization.parse_smiles(s)
    if mol is None:
      raise ValueError(f"cannot fingerprint {s!r}: {reason}")
    out.append(generator.GetFingerprint(mol))
  return out


def nearest_similarity(queries: Sequence, references: Sequence) -> np.ndarray:
  """f64[N] each query's Tanimoto similarity to its nearest reference."""
  from rdkit import DataStructs

  if not references:
    return np.zeros(len(queries))
  return np.array(
    [max(DataStructs.BulkTanimotoSimilarity(q, references)) for q in queries],
    np.float64,
  )


def _atom_values(graphs: featurization.MolecularGraphs, atoms) -> dict:
  """Seen categorical values of the given atom rows, by feature."""
  charges = np.rint(graphs.atom_scalars[atoms, 2] * 8).astype(int)
  types = graphs.atom_type[atoms].astype(int)
  return {
    "atomic_numbers": sorted(
      {featurization.AtomFeaturizer.atomic_numbers[t] for t in types if t < 100}
      | ({0} if (types >= 100).any() else set())
    ),
    "hybridizations": sorted(set(graphs.atom_hybridization[atoms].tolist())),
    "formal_charges": sorted(set(charges.tolist())),
  }


def _molecule_rows(graphs, molecules: np.ndarray) -> tuple[np.ndarray, ...]:
  """Masks of the atom and pair rows of the given molecules."""
  chosen = np.zeros(len(graphs), bool)
  chosen[molecules] = True
  n = graphs.n_atoms.astype(np.int64)
  return np.repeat(chosen, n), np.repeat(chosen, n * n)


@dataclasses.dataclass(frozen=True)
class Domain:
  """What a run's training molecules span (see the module docstring).

  Attributes:
    max_atoms: the most atoms of a training molecule.
    atomic_numbers: elements seen in training (0: beyond element 100).
    hybridizations: hybridization indices seen (``AtomFeaturizer``).
    formal_charges: formal charges seen.
    bonds: bond vocabulary ids seen (``BondFeaturizer``).
    threshold: the similarity threshold (None: no validation molecule).
    train_fingerprints: the training molecules' Morgan fingerprints.
  """

  max_atoms: int
  atomic_numbers: frozenset
  hybridizations: frozenset
  formal_charges: frozenset
  bonds: frozenset
  threshold: float | None
  train_fingerprints: tuple = dataclasses.field(repr=False, default=())


def fit(
  smiles: Sequence[str],
  graphs: featurization.MolecularGraphs,
  train: np.ndarray,
  valid: np.ndarray,
) -> Domain:
  """The domain of the molecules ``train`` (indices into ``smiles`` and
  ``graphs``), its similarity threshold fitted on ``valid``."""
  train = np.asarray(train, np.int64)
  atoms, pairs = _molecule_rows(graphs, train)
  values = _atom_values(graphs, atoms)
  bonds = set(np.unique(graphs.pair_bond[pairs]).tolist()) - {0}
  references = fingerprints([smiles[i] for i in train])
  threshold = None
  if len(valid):
    queries = fingerprints([smiles[i] for i in valid])
    similarity = nearest_similarity(queries, references)
    threshold = float(np.percentile(similarity, PERCENTILE))
  return Domain(
    max_atoms=int(graphs.n_atoms[train].max()) if len(train) else 0,
    atomic_numbers=frozenset(values["atomic_numbers"]),
    hybridizations=frozenset(values["hybridizations"]),
    formal_charges=frozenset(values["formal_charges"]),
    bonds=frozenset(bonds),
    threshold=threshold,
    train_fingerprints=tuple(references),
  )


def save(directory: Path, domain: Domain, write_text) -> None:
  """Writes ``domain.json`` and ``domain_fingerprints.npz``."""
  bits = [list(fp.GetOnBits()) for fp in domain.train_fingerprints]
  offsets = np.cumsum([0] + [len(b) for b in bits])
  np.savez_compressed(
    directory / FINGERPRINTS,
    bits=np.array([b for on in bits for b in on], np.uint16),
    offsets=offsets.astype(np.int64),
  )
  record = {
    "format": FORMAT_VERSION,
    "max_atoms": domain.max_atoms,
    "atomic_numbers": sorted(domain.atomic_numbers),
    "hybridizations": sorted(domain.hybridizations),
    "formal_charges": sorted(domain.formal_charges),
    "bonds": sorted(domain.bonds),
    "fingerprint": {"kind": "morgan", "radius": RADIUS, "bits": BITS},
    "similarity_threshold": domain.threshold,
    "threshold_rule": f"percentile {PERCENTILE:g} of the validation "
    "molecules' Tanimoto similarity to their nearest training molecule",
    "train_molecules": len(domain.train_fingerprints),
    "fingerprints": FINGERPRINTS,
  }
  write_text(directory / RECORD, json.dumps(record, indent=1))


def load(directory: Path) -> Domain | None:
  """The domain a run recorded; None for a run that predates the record."""
  from rdkit import DataStructs

  path = Path(directory) / RECORD
  if not path.exists():
    return None
  record = json.loads(path.read_text(encoding="utf-8"))
  arrays = np.load(Path(directory) / record["fingerprints"])
  bits, offsets = arrays["bits"].tolist(), arrays["offsets"]
  references = []
  for start, stop in zip(offsets[:-1], offsets[1:], strict=True):
    fp = DataStructs.ExplicitBitVect(record["fingerprint"]["bits"])
    fp.SetBitsFromList(bits[start:stop])
    references.append(fp)
  return Domain(
    max_atoms=record["max_atoms"],
    atomic_numbers=frozenset(record["atomic_numbers"]),
    hybridizations=frozenset(record["hybridizations"]),
    formal_charges=frozenset(record["formal_charges"]),
    bonds=frozenset(record["bonds"]),
    threshold=record["similarity_threshold"],
    train_fingerprints=tuple(references),
  )


def _signed(charge: int) -> str:
  return f"{charge:+d}"


def _element(z: int) -> str:
  from rdkit import Chem

  return Chem.GetPeriodicTable().GetElementSymbol(z) if z else "beyond Fm"


def _bond(bond_id: int) -> str:
  """A bond id in words: ``'double E conjugated'``."""
  bonds = featurization.BondFeaturizer
  k = bond_id - 1
  ring, arom, conj = k % 2, k // 2 % 2, k // 4 % 2
  stereo = bonds.stereos[k // 8 % len(bonds.stereos)]
  kind = bonds.bond_types[k // 8 // len(bonds.stereos)]
  words = [kind.name.lower()]
  if stereo.name != "STEREONONE":
    words.append(stereo.name.removeprefix("STEREO"))
  words += ["conjugated"] * conj + ["aromatic"] * arom + ["in a ring"] * ring
  return " ".join(words)


def _unseen(what: str, values: Sequence[str]) -> str:
  return f"{what} {', '.join(values)} never seen in training"


class Applicability(NamedTuple):
  """Whether molecules are inside a run's (or an ensemble's) domain.

  Attributes:
    in_domain: str[N] ``"yes"``, ``"no"``, ``"unknown"`` (a run without a
      domain record), or ``""`` for a SMILES that could not be used.
    reason: str[N] why not (``""`` when inside).
    similarity: f64[N] Tanimoto similarity to the nearest training molecule
      (NaN where unknown).
  """

  in_domain: np.ndarray
  reason: np.ndarray
  similarity: np.ndarray


def check(
  domain: Domain | None,
  smiles: Sequence[str],
  graphs: featurization.MolecularGraphs,
) -> Applicability:
  """Each molecule against a domain; ``graphs`` are its featurized
  ``smiles`` (all parseable). A None domain gives ``"unknown"``."""
  n = len(smiles)
  if domain is None:
    return Applicability(
      np.full(n, UNKNOWN, object),
      np.full(
        n, "the run has no domain record (trained before it existed)", object
      ),
      np.full(n, np.nan),
    )
  similarity = nearest_similarity(
    fingerprints(smiles), domain.train_fingerprints
  )
  in_domain = np.full(n, IN, object)
  reasons = np.full(n, "", object)
  hybridizations = featurization.AtomFeaturizer.hybridizations
  for k in range(n):
    atoms = slice(graphs.atom_offsets[k], graphs.atom_offsets[k + 1])
    pairs = slice(graphs.pair_offsets[k], graphs.pair_offsets[k + 1])
    values = _atom_values(graphs, atoms)
    why = []
    if graphs.n_atoms[k] > domain.max_atoms:
      why.append(
        f"{graphs.n_atoms[k]} atoms, more than any training molecule "
        f"({domain.max_atoms})"
      )
    elements = [
      _element(z)
      for z in values["atomic_numbers"]
      if z not in domain.atomic_numbers
    ]
    if elements:
      why.append(_unseen("element", elements))
    hybrid = [
      hybridizations[h].name if h < len(hybridizations) else "other"
      for h in values["hybridizations"]
      if h not in domain.hybridizations
    ]
    if hybrid:
      why.append(_unseen("hybridization", hybrid))
    charges = [
      _signed(c)
      for c in values["formal_charges"]
      if c not in domain.formal_charges
    ]
    if charges:
      why.append(_unseen("formal charge", charges))
    bonds = sorted(set(graphs.pair_bond[pairs].tolist()) - {0} - domain.bonds)
    if bonds:
      why.append(_unseen("bond", [_bond(b) for b in bonds]))
    if domain.threshold is not None and similarity[k] < domain.threshold:
      why.append(
        f"nearest training molecule's similarity {similarity[k]:.2f} < "
        f"{domain.threshold:.2f}"
      )
    if why:
      in_domain[k], reasons[k] = OUT, "; ".join(why)
  return Applicability(in_domain, reasons, similarity)


def combine(checks: Sequence[Applicability]) -> Applicability:
  """An ensemble's view: outside if any run's domain excludes a molecule
  (with the first such run's reasons, and how many runs agree), unknown if
  a run has no record, else inside; the highest similarity of the runs."""
  first = checks[0]
  if len(checks) == 1:
    return first
  status = np.stack([c.in_domain for c in checks])
  reasons = np.stack([c.reason for c in checks])
  in_domain = np.where(
    (status == OUT).any(0),
    OUT,
    np.where((status == UNKNOWN).any(0), UNKNOWN, first.in_domain),
  ).astype(object)
  reason = np.full(len(in_domain), "", object)
  for k in np.flatnonzero(in_domain != IN):
    hits = np.flatnonzero(status[:, k] == in_domain[k])
    reason[k] = f"{reasons[hits[0], k]} ({len(hits)} of {len(checks)} runs)"
  with np.errstate(all="ignore"):
    similarity = np.stack([c.similarity for c in checks])
    best = np.where(
      np.isnan(similarity).all(0),
      np.nan,
      np.nanmax(np.where(np.isnan(similarity), -np.inf, similarity), 0),
    )
  return Applicability(in_domain, reason, best)
