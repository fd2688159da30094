"""The dataset registry: every benchmark dataset's spec, by name.

The registry holds the MoleculeNet sets and the 30 MoleculeACE activity-cliff
sets (``moleculeace/<set>``: a fixed train/test split and a per-molecule
cliff flag, see :data:`MOLECULEACE_SETS`). A :class:`DatasetSpec` says where
a dataset's file comes from, its SHA-256 and which of its columns to read;
finding the file is :mod:`models.dataset_files`' job, reading it
:mod:`models.tables`' and loading it :mod:`models.datasets`'.

Only the standard library is imported with this module, so that a command
line can list the registry quickly.
"""

from __future__ import annotations

import dataclasses

_BUCKET = "https://deepchemdata.s3-us-west-1.amazonaws.com/datasets/"


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
  """Everything needed to find, check and read one dataset.

  Attributes:
    name: registry key.
    filename: file name looked for in data directories and the cache.
    url: canonical download URL (None: no download); ``.gz`` is decompressed.
    sha256: SHA-256 of the decompressed CSV (None: not checked).
    smiles_column: column holding the SMILES.
    target_columns: label columns, in task order.
    task_type: ``"classification"`` (binary, possibly multi-task) or
      ``"regression"``.
    metric: ``"roc_auc"`` or ``"rmse"``.
    leaky_columns: columns that encode the label or another model's
      prediction of it; never used (documented here so nobody adds them).
    header: whether the CSV has a header row; if not, ``column_names``.
    column_names: column names of a headerless CSV.
    skiprows: lines to skip before the header or data (comments).
    builtin: read from RDKit's installed data directory, never downloaded.
    path: a user's CSV (:func:`~models.tables.csv_spec`), read from this
      path: never searched for, downloaded or checked against a checksum.
    collection: the folder of the data directory it is kept in
      (``"moleculenet"`` or ``"moleculeace"``).
    split_column: a column naming each row's part, ``train`` or ``test``:
      a benchmark's fixed test part (the ``"fixed"`` split method); None
      when the dataset has none.
    subset_columns: 0/1 columns marking subsets of molecules on which the
      test metric is reported too (MoleculeACE's ``cliff_mol``).
    delimiter: the character between cells: ``","``, ``";"``, a tab, or
      ``" "`` for runs of spaces (:func:`~models.tables.sniff_delimiter`
      finds a user file's).
  """

  name: str
  filename: str
  url: str | None
  sha256: str | None
  smiles_column: str
  target_columns: tuple[str, ...]
  task_type: str
  metric: str
  leaky_columns: tuple[str, ...] = ()
  header: bool = True
  column_names: tuple[str, ...] | None = None
  skiprows: int = 0
  builtin: bool = False
  path: str | None = None
  collection: str = "moleculenet"
  split_column: str | None = None
  subset_columns: tuple[str, ...] = ()
  delimiter: str = ","

  @property
  def num_tasks(self) -> int:
    return len(self.target_columns)


_TOX21_TASKS = (
  "NR-AR",
  "NR-AR-LBD",
  "NR-AhR",
  "NR-Aromatase",
  "NR-ER",
  "NR-ER-LBD",
  "NR-PPAR-gamma",
  "SR-ARE",
  "SR-ATAD5",
  "SR-HSE",
  "SR-MMP",
  "SR-p53",
)
_SIDER_TASKS = (
  "Hepatobiliary disorders",
  "Metabolism and nutrition disorders",
  "Product issues",
  "Eye disorders",
  "Investigations",
  "Musculoskeletal and connective tissue disorders",
  "Gastrointestinal disorders",
  "Social circumstances",
  "Immune system disorders",
  "Reproductive system and breast disorders",
  "Neoplasms benign, malignant and unspecified (incl cysts and polyps)",
  "General disorders and administration site conditions",
  "Endocrine disorders",
  "Surgical and medical procedures",
  "Vascular disorders",
  "Blood and lymphatic system disorders",
  "Skin and subcutaneous tissue disorders",
  "Congenital, familial and genetic disorders",
  "Infections and infestations",
  "Respiratory, thoracic and mediastinal disorders",
  "Psychiatric disorders",
  "Renal and urinary disorders",
  "Pregnancy, puerperium and perinatal conditions",
  "Ear and labyrinth disorders",
  "Cardiac disorders",
  "Nervous system disorders",
  "Injury, poisoning and procedural complications",
)


def _spec(name, filename, url, sha256, targets, task, **kw) -> DatasetSpec:
  metric = "roc_auc" if task == "classification" else "rmse"
  return DatasetSpec(
    name, filename, url, sha256, "smiles", targets, task, metric, **kw
  )


DATASETS: dict[str, DatasetSpec] = {
  s.name: s
  for s in (
    _spec(
      "bbbp",
      "bbbp.csv",
      _BUCKET + "BBBP.csv",
      "d07a38487aeac5cee5508413e468043ef3097451d2a112701c2d60be9ec6b662",
      ("p_np",),
      "classification",
    ),
    _spec(
      "tox21",
      "tox21.csv",
      _BUCKET + "tox21.csv.gz",
      "7d7e7facd853a63e79ddce4e9c3fcb7a0d83a1c300b603031c0f2c64fbe77761",
      _TOX21_TASKS,
      "classification",
    ),
    _spec(
      "sider",
      "sider.csv",
      _BUCKET + "sider.csv.gz",
      "71efc6ac4ca82d6545bc512509863281be0f17234afd7adaf71a71899988302e",
      _SIDER_TASKS,
      "classification",
    ),
    _spec(
      "clintox",
      "clintox.csv",
      _BUCKET + "clintox.csv.gz",
      "9999816e760dd838358b5d88e81cea2fc062be4458ffa412ceecdba4f88a67b6",
      ("FDA_APPROVED", "CT_TOX"),
      "classification",
    ),
    _spec(
      "esol",
      "esol.csv",
      _BUCKET + "delaney-processed.csv",
      "8c06a76f0c6487d29ab0f903e6a7a7139f189ab3c1178f159c8be8964602f189",
      ("measured log solubility in mols per litre",),
      "regression",
      leaky_columns=("ESOL predicted log solubility in mols per litre",),
    ),
    _spec(
      "lipophilicity",
      "lipophilicity.csv",
      _BUCKET + "Lipophilicity.csv",
      "aed41590cb30609d51d8e08ad3ff06495a76e80e211358801f596b10da69bacd",
      ("exp",),
      "regression",
    ),
    _spec(
      "freesolv",
      "freesolv.csv",
      _BUCKET + "SAMPL.csv",
      "ab5895d914ee87cb563bd7b9611e869527bba45bec6b014d34dc495a0f9dcb72",
      ("expt",),
      "regression",
      leaky_columns=("calc",),
    ),
    _spec(
      "hiv",
      "hiv.csv",
      _BUCKET + "HIV.csv",
      "9ffa7fe57dc86c342627ee1d5255e937e2ab812393c73c4d16c697022f6e1d22",
      ("HIV_active",),
      "classification",
      leaky_columns=("activity",),
    ),
    _spec(
      "nci5k-tpsa",
      "NCI/first_5k.tpsa.csv",
      None,
      None,
      ("tpsa",),
      "regression",
      header=False,
      column_names=("smiles", "tpsa"),
      skiprows=1,
      builtin=True,
    ),
  )
}

# MoleculeACE (van Tilborg, Alenicheva and Grisoni, J. Chem. Inf. Model. 2022,
# 62, 5938-5951; MIT licence): the files of the MoleculeACE 3.0.0 wheel, by
# set name with their SHA-256.
MOLECULEACE_SETS: dict[str, str] = {
  "CHEMBL1862_Ki": (
    "72a750426976bf5c17ca9129e86dff20962332f92a8ce16028d9fbcf152ca412"
  ),
  "CHEMBL1871_Ki": (
    "62d05aa76d096fd5bd3575dcfd30dcab24873dc010de47b478b6617fbd95985e"
  ),
  "CHEMBL2034_Ki": (
    "476668f39aae0e29a1ab8fa83a7087b179dc705b68cdc060c9958a0eed2048d4"
  ),
  "CHEMBL2047_EC50": (
    "ea1bacf43377aac288840f2d2e37df7705a0d2d1f93bb52b0ce85e499e311f6e"
  ),
  "CHEMBL204_Ki": (
    "6ccf17a5f1aa6322f2d68f24b923f2efb5779ff73d33035bb889bb922b18dba5"
  ),
  "CHEMBL2147_Ki": (
    "5cbf4deba3e6312aff3a77ac3c70eb39a3cd58c9d8686a19a8b56c4a73377d02"
  ),
  "CHEMBL214_Ki": (
    "68bffa3069340c51204ba23395626622559a10c3d39b1111cb9c47f9d9960962"
  ),
  "CHEMBL218_EC50": (
    "9133aefc69efa92403107f78f747d4acbd370255ac0a2949cc5f86a30b5ebd11"
  ),
  "CHEMBL219_Ki": (
    "f0d13b1bd8086e3fed746215b0ff8c4399518547bbba2146a0f235f1a9a59fa8"
  ),
  "CHEMBL228_Ki": (
    "17158facfdc5788e22e020e398acd3bbf99edc9d66f7b323da778cd551d9796f"
  ),
  "CHEMBL231_Ki": (
    "9e1c0a22c37e446d37d63e7b39d92cb022774333b4fa430e9f948b748215afb0"
  ),
  "CHEMBL233_Ki": (
    "4d8aff053b3d1c12e8cc13102958bb4f3dce4ac7715452265231e5b68d1c9362"
  ),
  "CHEMBL234_Ki": (
    "7a86fc3552953bb1ea727f4119b844ff3eadb33d7a79413b1f417cf236f5615a"
  ),
  "CHEMBL235_EC50": (
    "a99b1d18870cc4d83da5fbedfee4504f8c46bb96e71ea7964b84ae7682d4963f"
  ),
  "CHEMBL236_Ki": (
    "28227a570694a24325a3206bee2a1623e14949d54abe13e490402fb2f5a8c74e"
  ),
  "CHEMBL237_EC50": (
    "37dce21b9ef158ac7d3075997e58896bb0083162c9c820d1996d898dfb0701f5"
  ),
  "CHEMBL237_Ki": (
    "8bc5f0f4e512923d7878390f9c6336682dfd638e90d8110f44bfd3af77d605c3"
  ),
  "CHEMBL238_Ki": (
    "5ca1bb99ea9123dc0369f19c1269fec3f9fc3eae3bf9a2b781419b268913761a"
  ),
  "CHEMBL239_EC50": (
    "1985b2137bd64396ec980e8c6e1f234f6f9aa989c49a20aef71dd22bda68ed9c"
  ),
  "CHEMBL244_Ki": (
    "aafc2e81810767397c8b5b3161b9eed3b33b6e9a827ed176336f388bef274a36"
  ),
  "CHEMBL262_Ki": (
    "c438e8e18bc444890246607be107d9afb8c64012608a8a73838acad3eacfce21"
  ),
  "CHEMBL264_Ki": (
    "6b380b5cf61b6985179779a9b9d0d1d3b197773fc3df5079d8932108f75e2bbf"
  ),
  "CHEMBL2835_Ki": (
    "a6ff0b8c3df2c452a9210af5c3d57495846ed16978c339b463c7a4b90c73c66c"
  ),
  "CHEMBL287_Ki": (
    "7f448c29138242dd64ec2a07742e33a1e186129ca4e794e287b67e5ffaea171e"
  ),
  "CHEMBL2971_Ki": (
    "2fe0c20bab93c58f824fdb7f35b1c327e987b76e8403ededb0075cb7649651d3"
  ),
  "CHEMBL3979_EC50": (
    "7e455ec476c0683414404b527d0bb98bf76671f7bd3748507aad505c21a6b44b"
  ),
  "CHEMBL4005_Ki": (
    "183b163b6820d2c0db3190500e3a58cdda1f72d148f36605d7c2e2071d69c03e"
  ),
  "CHEMBL4203_Ki": (
    "28d7139fdba99657584430ef793bf2850aaf806651930fc062d50f3f847f032d"
  ),
  "CHEMBL4616_EC50": (
    "7b79538464cf4a811a9bd593d867d985b3f19d65302f241a7fba409b16230b0a"
  ),
  "CHEMBL4792_Ki": (
    "088219b5b08fa90962f00e80d7ed66fe7a71e223b18b874fb000d0babc343659"
  ),
}
MOLECULEACE_PREFIX = "moleculeace/"
for _set, _sha in MOLECULEACE_SETS.items():
  DATASETS[MOLECULEACE_PREFIX + _set] = DatasetSpec(
    name=MOLECULEACE_PREFIX + _set,
    filename=f"{_set}.csv",
    url=None,
    sha256=_sha,
    smiles_column="smiles",
    target_columns=("y",),
    task_type="regression",
    metric="rmse",
    leaky_columns=("exp_mean [nM]",),
    collection="moleculeace",
    split_column="split",
    subset_columns=("cliff_mol",),
  )
"""The registry: 8 MoleculeNet datasets, the offline ``nci5k-tpsa`` and the
30 MoleculeACE sets (``moleculeace/<set>``, looked up case-insensitively).

``nci5k-tpsa`` is RDKit's ``Data/NCI/first_5k.tpsa.csv``: 4,999 NCI molecules
(the same as ``first_5K.smi``) with their topological polar surface area
computed by Daylight tools, a regression target for demos and tests.

A MoleculeACE set's label ``y`` is ``-log10`` of the measured Ki or EC50 in
nM (``exp_mean [nM]``, which is never used); its column ``split`` fixes the
test part and ``cliff_mol`` marks the molecules that form an activity cliff
(the test RMSE over them is the benchmark's "cliff RMSE").
"""


def get_spec(name: str | DatasetSpec) -> DatasetSpec:
  """The DatasetSpec of a registered name (a spec is returned unchanged)."""
  if isinstance(name, DatasetSpec):
    return name
  by_lower_name = {key.lower(): spec for key, spec in DATASETS.items()}
  try:
    return by_lower_name[name.lower()]
  except KeyError:
    raise ValueError(
      f"unknown dataset {name!r}; known: {', '.join(dataset_names())}"
    ) from None


def dataset_names() -> list[str]:
  """The registry's names, the MoleculeACE sets as one
  ``moleculeace/<set>`` entry (their names are in :data:`MOLECULEACE_SETS`).
  """
  names = [n for n in DATASETS if not n.startswith(MOLECULEACE_PREFIX)]
  return [*names, MOLECULEACE_PREFIX + "<set>"]
