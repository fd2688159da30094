"""Dataset registry, file resolution, download and loading.

The download path is exercised against an HTTP server on 127.0.0.1. Tests
marked ``data`` read the shared MoleculeNet CSVs from $GRAPHSAM_DATA_DIR.
"""

import dataclasses
import functools
import gzip
import http.server
import os
import shutil
import threading
import warnings
from pathlib import Path

import numpy as np
import pytest

from models import dataset_files
from models import dataset_registry
from models import datasets
from models import featurization as F
from models import tables

TINY = Path(__file__).parents[1] / "data" / "tiny_molecules.csv"
SHARED = os.environ.get(dataset_files.DATA_DIR_ENV)
requires_shared = pytest.mark.skipif(
  not SHARED, reason=f"${dataset_files.DATA_DIR_ENV} is not set"
)


def tiny_spec(**changes) -> dataset_registry.DatasetSpec:
  spec = dataset_registry.DatasetSpec(
    name="tiny",
    filename="tiny_molecules.csv",
    url=None,
    sha256=dataset_files.file_sha256(TINY),
    smiles_column="smiles",
    target_columns=("label_a", "label_b"),
    task_type="regression",
    metric="rmse",
    leaky_columns=("leaky",),
  )
  return dataclasses.replace(spec, **changes)


@pytest.fixture(autouse=True)
def no_shared_dir(monkeypatch):
  """Resolution tests must not see the real $GRAPHSAM_DATA_DIR."""
  monkeypatch.delenv(dataset_files.DATA_DIR_ENV, raising=False)


def test_registry():
  expected = {
    "bbbp",
    "tox21",
    "sider",
    "clintox",
    "esol",
    "lipophilicity",
    "freesolv",
    "hiv",
    "nci5k-tpsa",
  } | {f"moleculeace/{name}" for name in dataset_registry.MOLECULEACE_SETS}
  assert set(dataset_registry.DATASETS) == expected and len(expected) == 39
  for name, spec in dataset_registry.DATASETS.items():
    assert spec.name == name and spec.num_tasks >= 1
    assert spec.task_type in ("classification", "regression")
    assert spec.metric == (
      "roc_auc" if spec.task_type == "classification" else "rmse"
    )
    assert not set(spec.leaky_columns) & set(spec.target_columns)
    assert spec.smiles_column not in spec.target_columns
    if not spec.builtin:
      assert len(spec.sha256) == 64
    if spec.collection == "moleculenet" and not spec.builtin:
      assert spec.url.startswith("https://")
  assert dataset_registry.get_spec("BBBP") is dataset_registry.DATASETS["bbbp"]
  assert dataset_registry.DATASETS["hiv"].leaky_columns == ("activity",)
  with pytest.raises(ValueError, match="unknown dataset 'qm9'"):
    dataset_registry.get_spec("qm9")


def test_read_table_quirks():
  table = tables.read_table(tiny_spec(), TINY)
  assert list(table.columns) == ["smiles", "label_a", "label_b", "line"]
  assert len(table) == 5  # CRLF and blank lines handled, no leaky column
  assert table.line.tolist() == [2, 3, 5, 6, 8]  # the file's lines
  assert table.smiles[1] == "c1ccccc1O"  # trailing whitespace stripped
  assert np.isnan(table.label_b[1]) and np.isnan(table.label_a[3])


def test_load_reports_dropped_rows(tmp_path):
  # Line 5 of the file (header = line 1, blank line 4), data row 2.
  with pytest.warns(datasets.InvalidSmilesWarning, match=r"line 5: 'C\[N\]"):
    ds = datasets.load_dataset(tiny_spec(), TINY.parent, cache_dir=tmp_path)
  assert (ds.num_rows, len(ds), ds.num_tasks) == (5, 4, 2)
  assert [(d.row, d.line, d.smiles) for d in ds.dropped] == [
    (2, 5, "C[N](C)(C)(C)C")
  ]
  assert "valence" in ds.dropped[0].reason
  np.testing.assert_array_equal(ds.row_index, [0, 1, 3, 4])
  np.testing.assert_array_equal(ds.lines, [2, 3, 6, 8])
  assert ds.smiles == ("CCO", "c1ccccc1O", "CC#N", "[Na+].[Cl-]")
  np.testing.assert_array_equal(
    np.isnan(ds.labels), [[0, 0], [0, 1], [1, 0], [0, 0]]
  )
  np.testing.assert_array_equal(ds.n_atoms, [3, 7, 3, 2])
  assert ds.sha256 == dataset_files.file_sha256(TINY)
  with pytest.raises(F.InvalidSmilesError, match=r"line 5"):
    datasets.load_dataset(
      tiny_spec(), TINY.parent, cache_dir=tmp_path, strict=True
    )
  with pytest.raises(F.InvalidSmilesError, match=r"line 5"):
    datasets.load_dataset(
      tiny_spec(), TINY.parent, featurize=False, strict=True, cache_dir=tmp_path
    )


def test_second_load_reads_the_cache(tmp_path, monkeypatch):
  with pytest.warns(datasets.InvalidSmilesWarning):
    first = datasets.load_dataset(tiny_spec(), TINY.parent, cache_dir=tmp_path)
  files = list((tmp_path / "features").iterdir())
  assert len(files) == 1 and files[0].name.startswith("tiny-")
  monkeypatch.setattr(F, "featurize_smiles", None)  # would fail if called
  with pytest.warns(datasets.InvalidSmilesWarning, match="line 5"):
    second = datasets.load_dataset(tiny_spec(), TINY.parent, cache_dir=tmp_path)
  np.testing.assert_array_equal(second.graphs.pair_bond, first.graphs.pair_bond)
  assert second.dropped == first.dropped


def test_resolution_order(tmp_path, monkeypatch):
  spec = tiny_spec(sha256=None)
  dirs = {k: tmp_path / k for k in ("explicit", "env", "cache")}
  for key, d in dirs.items():
    target = d / "moleculenet" if key == "cache" else d
    target.mkdir(parents=True)
    shutil.copy(TINY, target / spec.filename)
  monkeypatch.setenv(dataset_files.DATA_DIR_ENV, str(dirs["env"]))
  resolve = functools.partial(
    dataset_files.resolve_csv, spec, cache_dir=dirs["cache"]
  )
  assert resolve(dirs["explicit"]) == dirs["explicit"] / spec.filename
  assert resolve(tmp_path / "missing") == dirs["env"] / spec.filename
  monkeypatch.delenv(dataset_files.DATA_DIR_ENV)
  expected = dirs["cache"] / "moleculenet" / spec.filename
  assert resolve(None) == expected


def test_local_checksum_mismatch(tmp_path):
  shutil.copy(TINY, tmp_path / "tiny_molecules.csv")
  with open(tmp_path / "tiny_molecules.csv", "ab") as f:
    f.write(b"CC,1,1,1\r\n")
  with pytest.raises(dataset_files.ChecksumError, match="verify=False"):
    dataset_files.resolve_csv(tiny_spec(), tmp_path, cache_dir=tmp_path / "c")
  path = dataset_files.resolve_csv(
    tiny_spec(), tmp_path, cache_dir=tmp_path, verify=False
  )
  assert path == tmp_path / "tiny_molecules.csv"


def test_not_found_lists_what_was_tried(tmp_path, monkeypatch):
  monkeypatch.setenv(dataset_files.DATA_DIR_ENV, str(tmp_path / "env"))
  spec = tiny_spec(url="http://127.0.0.1:9/tiny.csv")
  with pytest.raises(dataset_files.DatasetNotFoundError) as info:
    dataset_files.resolve_csv(
      spec, tmp_path / "x", cache_dir=tmp_path, download=False
    )
  message = str(info.value)
  for place in ("x", "env", "moleculenet", "download: disabled", "data_dir="):
    assert place in message


@pytest.fixture(scope="module")
def http_root(tmp_path_factory):
  """Serves a directory holding tiny.csv and tiny.csv.gz on 127.0.0.1."""
  root = tmp_path_factory.mktemp("www")
  shutil.copy(TINY, root / "tiny.csv")
  with open(TINY, "rb") as src, gzip.open(root / "tiny.csv.gz", "wb") as dst:
    dst.write(src.read())

  class Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
      pass

  handler = functools.partial(Quiet, directory=str(root))
  server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
  thread = threading.Thread(target=server.serve_forever, daemon=True)
  thread.start()
  yield f"http://127.0.0.1:{server.server_address[1]}"
  server.shutdown()
  server.server_close()
  thread.join()


@pytest.mark.parametrize("name", ["tiny.csv", "tiny.csv.gz"])
def test_download_good_checksum(http_root, tmp_path, name):
  spec = tiny_spec(url=f"{http_root}/{name}")
  path = dataset_files.resolve_csv(spec, cache_dir=tmp_path)
  assert path == tmp_path / "moleculenet" / spec.filename
  assert path.read_bytes() == TINY.read_bytes()  # decompressed
  assert sorted(p.name for p in path.parent.iterdir()) == [spec.filename]
  # Now cached: found again without the server.
  assert (
    dataset_files.resolve_csv(
      tiny_spec(url="http://127.0.0.1:9/x"), cache_dir=tmp_path
    )
    == path
  )


def test_download_bad_checksum(http_root, tmp_path):
  spec = tiny_spec(url=f"{http_root}/tiny.csv.gz", sha256="0" * 64)
  with pytest.raises(dataset_files.ChecksumError, match="discarded"):
    dataset_files.resolve_csv(spec, cache_dir=tmp_path)
  assert list((tmp_path / "moleculenet").iterdir()) == []


def test_download_404(http_root, tmp_path):
  spec = tiny_spec(url=f"{http_root}/missing.csv")
  with pytest.raises(dataset_files.DatasetNotFoundError, match="404") as info:
    dataset_files.resolve_csv(spec, cache_dir=tmp_path)
  assert "data_dir=" in str(info.value) and "GRAPHSAM_DATA_DIR" in str(
    info.value
  )
  assert list((tmp_path / "moleculenet").iterdir()) == []


def test_builtin_nci5k_tpsa_offline(tmp_path):
  with pytest.warns(datasets.InvalidSmilesWarning, match="8 of 4999") as caught:
    ds = datasets.load_dataset(
      "nci5k-tpsa", cache_dir=tmp_path, featurize=False
    )
  # A short report: a summary line, the first three rows, a count.
  (report,) = [
    str(w.message).splitlines()
    for w in caught
    if w.category is datasets.InvalidSmilesWarning
  ]
  assert len(report) == 5 and report[-1] == "  ... and 5 more"
  assert report[1].startswith("  line 2099: ") and max(map(len, report)) < 160
  assert ds.path.parts[-2:] == ("NCI", "first_5k.tpsa.csv")
  assert (ds.num_rows, len(ds), ds.num_tasks) == (4999, 4991, 1)
  assert [d.row for d in ds.dropped] == [
    2097,
    2897,
    3226,
    3369,
    4508,
    4595,
    4596,
    4780,
  ]
  assert ds.task_type == "regression" and not np.isnan(ds.labels).any()
  assert "#" in "".join(ds.smiles)  # triple bonds survive (no comment char)
  assert ds.labels[0, 0] == pytest.approx(34.14)  # CC1=CC(=O)C=CC1=O


# Rows, tasks, dropped rows (RDKit 2026.09) and missing label cells, from
# the data README.
SHARED_COUNTS = {
  "bbbp": (2050, 1, [59, 61, 391, 614, 642, 645, 646, 647, 648, 649, 685], 0),
  "tox21": (7831, 12, [1322, 2290, 2297, 3558, 4565, 4649, 5538, 6723], 16026),
  "sider": (1427, 27, [], 0),
  "clintox": (1484, 2, [7, 302, 1219, 1220], 0),
  "esol": (1128, 1, [], 0),
  "lipophilicity": (4200, 1, [], 0),
  "freesolv": (642, 1, [], 0),
  "hiv": (41127, 1, [137, 987, 12882, 18293, 30784, 30785, 35728], 0),
}
FEATURIZED = {"bbbp", "clintox", "esol", "freesolv"}  # fast enough to featurize


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory):
  return tmp_path_factory.mktemp("cache")


@pytest.mark.data
@requires_shared
@pytest.mark.parametrize("name", sorted(SHARED_COUNTS))
def test_shared_csv_counts(name, shared_cache):
  rows, tasks, dropped, missing = SHARED_COUNTS[name]
  spec = dataset_registry.get_spec(name)
  path = dataset_files.resolve_csv(
    name, SHARED, download=False
  )  # SHA-256 checked
  table = tables.read_table(spec, path)
  assert len(table) == rows and spec.num_tasks == tasks
  assert int(table[list(spec.target_columns)].isna().sum().sum()) == missing
  assert not table.smiles.str.contains(r"\s").any()
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", datasets.InvalidSmilesWarning)
    ds = datasets.load_dataset(
      name,
      SHARED,
      cache_dir=shared_cache,
      download=False,
      featurize=name in FEATURIZED,
    )
  assert [d.row for d in ds.dropped] == dropped
  assert len(ds) == rows - len(dropped) == len(ds.labels)
  assert ds.labels.shape == (len(ds), tasks)
  if name in FEATURIZED:
    assert len(ds.graphs) == len(ds)
    assert ds.graphs.atom_scalars.shape[1] == 8


@pytest.mark.data
@requires_shared
def test_shared_csv_quirks():
  raw = {
    n: (Path(SHARED) / f"{n}.csv").read_bytes() for n in ("bbbp", "hiv", "esol")
  }
  assert b"\r\n" in raw["bbbp"] and b"\r\n\n" in raw["hiv"]
  esol = tables.read_table("esol", Path(SHARED) / "esol.csv")
  assert esol.smiles.str.len().sum() < len(raw["esol"])
  assert not esol.smiles.str.endswith(" ").any()


OWN = TINY.parent / "own_molecules.csv"


def test_csv_spec_of_your_own_file():
  spec = tables.csv_spec(OWN, target_columns=["logp", "tpsa"])
  assert (spec.name, spec.task_type, spec.metric) == ("own_molecules",) + (
    "regression",
    "rmse",
  )
  assert Path(spec.path).is_absolute() and spec.sha256 is None
  assert dataset_files.resolve_csv(spec) == Path(spec.path)  # read where it is
  # Without target columns: every column but the SMILES ("name" fails).
  with pytest.raises(tables.DataFileError, match="line 2, column 'name'"):
    tables.csv_spec(OWN)


def test_csv_spec_infers_the_task(tmp_path):
  path = tmp_path / "active.csv"
  path.write_text("smiles,active,note\nCCO,1,\nCCN,0,x\nCCC,,y\n")
  spec = tables.csv_spec(path, target_columns=["active"])
  assert (spec.task_type, spec.metric) == ("classification", "roc_auc")
  assert (
    tables.csv_spec(path, "smiles", ["active"], "regression").metric == "rmse"
  )
  with pytest.raises(
    tables.MissingColumnError, match="no column 'smi'"
  ) as info:
    tables.csv_spec(path, "smi", ["active"])
  assert info.value.role == "smiles"
  with pytest.raises(tables.MissingColumnError) as info:
    tables.csv_spec(path, target_columns=["activ"])
  assert (info.value.column, info.value.role) == ("activ", "target")
  with pytest.raises(dataset_files.DatasetNotFoundError, match="no such file"):
    tables.csv_spec(tmp_path / "missing.csv")


@pytest.mark.parametrize(
  "content, message",
  [
    (b"", "is empty"),
    (b"smiles,y\n", "a header but no data rows"),
    (b"smiles,y\n\n\n", "a header but no data rows"),
    ("smiles,y\nCCO,caf\u00e9\n".encode("latin-1"), "not UTF-8 text"),
    (b"smiles,y\nCCO,1\n\nCCN,high\nCCC,low\n", "line 4, column 'y'"),
    (b'smiles,y\nCCO,1\nCC"N,1,2\n', "not a readable CSV"),
  ],
)
def test_unreadable_files_name_the_file(tmp_path, content, message):
  path = tmp_path / "mine.csv"
  path.write_bytes(content)
  with pytest.raises(tables.DataFileError, match=message) as info:
    # csv_spec reads the whole file, so most errors come from it.
    spec = (
      tables.csv_spec(path, target_columns=["y"], task_type="regression")
      if (content)
      else None
    )
    datasets.load_dataset(spec or tiny_spec(path=str(path)), cache_dir=tmp_path)
  assert str(path) in str(info.value)
  if "high" in message:
    assert "'high' is not a number (nor are 1 more cells)" in str(info.value)


def test_infinite_labels_are_dropped_and_reported(tmp_path):
  path = tmp_path / "inf.csv"
  path.write_text("smiles,a,b\nCCO,1,2\n\nCCN,inf,1\nCCC,3,-inf\nCO,,4\n")
  spec = tables.csv_spec(path, target_columns=["a", "b"])
  with pytest.warns(
    datasets.InvalidSmilesWarning, match="dropped 2 of 4"
  ) as caught:
    ds = datasets.load_dataset(spec, cache_dir=tmp_path)
  assert "line 4: 'CCN' (label 'a' is inf)" in str(caught[0].message)
  assert [(d.line, d.reason) for d in ds.dropped] == [
    (4, "label 'a' is inf"),
    (5, "label 'b' is -inf"),
  ]
  assert ds.smiles == ("CCO", "CO") and np.isnan(ds.labels[1, 0])
  with pytest.raises(F.InvalidSmilesError, match="line 4"):
    datasets.load_dataset(spec, cache_dir=tmp_path, strict=True)


def test_classification_labels_must_be_0_or_1(tmp_path):
  path = tmp_path / "cls.csv"
  path.write_text("smiles,y\nCCO,1\nCCN,2\n")
  spec = tables.csv_spec(path, task_type="classification")
  with pytest.raises(
    tables.DataFileError, match="line 3, column 'y': 2 is not 0"
  ):
    datasets.load_dataset(spec, cache_dir=tmp_path)


def test_your_own_file_loads_with_every_quirk_reported(tmp_path):
  spec = tables.csv_spec(OWN, target_columns=["logp", "tpsa"])
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    ds = datasets.load_dataset(spec, cache_dir=tmp_path)
  by_kind = {type(w.message): str(w.message) for w in caught}
  dropped = by_kind[datasets.InvalidSmilesWarning]
  assert "dropped 2 of 78" in dropped
  assert "line 13: 'C[N](C)(C)(C)C'" in dropped and "line 23:" in dropped
  duplicate = by_kind[datasets.DuplicateSmilesWarning]
  assert "1 SMILES occur more than once (2 rows)" in duplicate
  assert "line 5: 'N=c1[nH]cc([N+](=O)[O-])s1' (also on line 34)" in duplicate
  assert ds.duplicates() == [("N=c1[nH]cc([N+](=O)[O-])s1", [5, 34])]
  assert len(ds) == 76 and np.isnan(ds.labels[ds.lines.tolist().index(7), 1])


# Issue 25: the files chemists really have.


def test_task_is_inferred_per_column_from_every_present_label(tmp_path):
  # No row has both labels: the inference must not look only at full rows.
  path = tmp_path / "sparse.csv"
  path.write_text("smiles,a,b\nCCO,-0.54,\nCCN,,1.5\nCCC,2.1,\n")
  assert tables.csv_spec(path).task_type == "regression"
  path.write_text("smiles,a,b\nCCO,1,\nCCN,,0\nCCC,0,\n")
  assert tables.csv_spec(path).task_type == "classification"
  path.write_text("smiles,active,logS\nCCO,1,\nCCN,,-2.5\nCCC,0,\n")
  with pytest.raises(tables.DataFileError) as info:
    tables.csv_spec(path)
  message = str(info.value)
  assert "'active' holds only 0/1 labels" in message
  assert "'logS' other numbers" in message
  assert "task_type='regression'" in message
  assert tables.column_task_types(np.array([[1, np.nan], [0, 2.5]])) == (
    "classification",
    "regression",
  )


def test_headerless_file_is_refused_not_read_as_column_names(tmp_path):
  path = tmp_path / "mols.smi"
  path.write_text("CCO 1.2\nCCN 0.4\n")
  with pytest.raises(tables.DataFileError, match="no header row") as info:
    tables.csv_spec(path)
  assert "line 1: 'CCO' is a molecule, not a column name" in str(info.value)
  assert tables.has_header(tmp_path / "mols.smi") is False
  (tmp_path / "named.smi").write_text("SMILES Name\nCCO ethanol\n")
  assert tables.has_header(tmp_path / "named.smi") is True


@pytest.mark.parametrize(
  "delimiter, name", [(";", "semicolon"), ("\t", "tab"), (",", "comma")]
)
def test_delimiter_is_sniffed(tmp_path, delimiter, name):
  path = tmp_path / "mine.csv"
  rows = [["name", "smiles", "logS"], ["a,b", "CCO", "-0.5"], ["c", "CCN", "1"]]
  if delimiter != ",":
    rows[1][0] = "ab"
  path.write_text(
    "\n".join(delimiter.join(r) for r in rows).replace("a,b", '"a,b"') + "\n"
  )
  assert tables.sniff_delimiter(path) == delimiter
  assert tables.DELIMITER_NAMES[delimiter] == name
  spec = tables.csv_spec(path, target_columns=["logS"])
  assert spec.delimiter == delimiter
  table = tables.read_table(spec, path)
  assert table.smiles.tolist() == ["CCO", "CCN"]
  assert table.logS.tolist() == [-0.5, 1.0]


def test_text_columns_are_named_with_the_target_columns_advice(tmp_path):
  path = tmp_path / "mine.csv"
  path.write_text("name,smiles,logp,tpsa\naspirin,CCO,0.1,20\nx,CCN,0.2,3\n")
  with pytest.raises(tables.DataFileError) as info:
    tables.csv_spec(path)
  message = str(info.value)
  assert "line 2, column 'name': 'aspirin' is not a number" in message
  assert "target_columns=['logp', 'tpsa']" in message
  assert "leave a cell empty" not in message


def test_duplicate_column_names_are_refused(tmp_path):
  path = tmp_path / "dup.csv"
  path.write_text("smiles,sol,sol\nCCO,1.0,2.0\n")
  with pytest.raises(
    tables.DataFileError, match="line 1: column 'sol' appears 2"
  ):
    tables.csv_spec(path)
  with pytest.raises(tables.DataFileError, match="column 'sol' appears 2"):
    tables.read_rows(path)


@pytest.mark.parametrize(
  "marker", ["", "NA", "n/a", "N/A", "?", "-", "NaN", "null", "None", "#N/A"]
)
def test_missing_value_markers(tmp_path, marker):
  path = tmp_path / "missing.csv"
  path.write_text(f"smiles,y\nCCO,1.5\nCCN,{marker}\nCCC,2.0\n")
  assert tables.is_missing(marker) and not tables.is_missing("0")
  table = tables.read_table(tables.csv_spec(path), path)
  assert np.isnan(table.y[1]) and table.y[0] == 1.5


def test_errors_show_the_path_as_given(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  Path("cls.csv").write_text("smiles,y\nCCO,1\nCCN,2\n")
  spec = tables.csv_spec("cls.csv", task_type="classification")
  with pytest.raises(tables.DataFileError) as info:
    datasets.load_dataset(spec, cache_dir=tmp_path)
  assert str(info.value).startswith("cls.csv, line 3, column 'y'")


def test_missing_file_hint_names_the_python_argument(tmp_path):
  with pytest.raises(
    dataset_files.DatasetNotFoundError, match="data_dir=<that dir"
  ):
    dataset_files.resolve_csv("bbbp", cache_dir=tmp_path, download=False)
