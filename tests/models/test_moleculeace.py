"""MoleculeACE: the registry's activity-cliff sets, their fixed split, and
the cliff RMSE that a run records beside its test predictions.

Marked ``data``: the sets are read from ``../moleculeace`` beside
$GRAPHSAM_DATA_DIR (the shared MoleculeNet folder), as CI lays them out.
"""

import math
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from models import dataset_files
from models import dataset_registry
from models import input_pipeline
from models import main
from models import splits
from models import train
from models.configs import default

SET = "moleculeace/CHEMBL2835_Ki"  # the smallest: 489 train, 126 test
SHARED = os.environ.get(dataset_files.DATA_DIR_ENV)
pytestmark = [
  pytest.mark.data,
  pytest.mark.skipif(not SHARED, reason=f"${dataset_files.DATA_DIR_ENV} unset"),
]


def shared_csv() -> pd.DataFrame:
  """The set's file as the benchmark ships it, read with plain pandas."""
  path = Path(SHARED).parent / "moleculeace" / "CHEMBL2835_Ki.csv"
  return pd.read_csv(path)


@pytest.fixture(scope="module")
def prepared():
  config = default.get_config(SET)
  return input_pipeline.prepare_data(
    config.dataset,
    split=config.split,
    sizes=config.split_sizes,
    seed=0,
    cache_dir=None,
  )


def test_every_set_is_registered_and_found_beside_the_moleculenet_folder():
  assert len(dataset_registry.MOLECULEACE_SETS) == 30
  for name in dataset_registry.MOLECULEACE_SETS:
    path = dataset_files.resolve_csv(f"moleculeace/{name}", verify=False)
    assert path.name == f"{name}.csv" and path.parent.name == "moleculeace"
  # Checksums match the shared copy, and names are case-insensitive.
  assert dataset_files.resolve_csv("moleculeace/chembl2835_ki").is_file()
  assert dataset_registry.get_spec("MOLECULEACE/chembl2835_KI").name == SET


def test_the_fixed_split_keeps_the_benchmarks_test_part(prepared):
  table = shared_csv()
  data = prepared
  smiles = np.asarray(data.dataset.smiles)
  train_part, valid, test = (smiles[p] for p in data.split)
  # The shared file's counts: 489 train rows, 126 test rows.
  assert (table.split == "train").sum() == 489
  assert len(train_part) + len(valid) == 489 and len(test) == 126
  assert len(valid) == math.floor(0.1 * 489)
  assert set(test) == set(table.smiles[table.split == "test"])
  assert not set(test) & (set(train_part) | set(valid))
  assert not set(train_part) & set(valid)
  # The seed draws validation from the train part; test never moves.
  other = input_pipeline.prepare_data(
    data.dataset, split="fixed", sizes=(0.9, 0.1, 0.0), seed=1
  )
  np.testing.assert_array_equal(other.split.test, data.split.test)
  assert set(other.split.valid.tolist()) != set(data.split.valid.tolist())


def test_cliff_rmse_against_a_hand_computation(prepared, tmp_path):
  data = prepared
  table = shared_csv().set_index("smiles")
  smiles = [data.dataset.smiles[i] for i in data.split.test]
  labels = table.loc[smiles, "y"].to_numpy(np.float64)
  # Predictions off by a known amount per molecule, in original units.
  offsets = np.linspace(-1.0, 1.5, len(smiles))
  predictions = labels + offsets
  scaled = data.scaler.transform(predictions[:, None].astype(np.float32))
  scaled_labels = data.scaler.transform(labels[:, None].astype(np.float32))
  subsets = train.test_predictions(
    tmp_path,
    data,
    scaled,
    scaled_labels,
    np.ones((len(smiles), 1), bool),
  )
  cliff = table.loc[smiles, "cliff_mol"].to_numpy() == 1
  by_hand = math.sqrt(np.mean(offsets[cliff] ** 2))
  assert cliff.sum() == 13 == subsets["cliff_mol"]["molecules"]
  assert subsets["cliff_mol"]["rmse"] == pytest.approx(by_hand, rel=1e-5)
  # The written predictions recompute it with the shared data alone.
  written = pd.read_csv(tmp_path / "test_predictions.csv")
  assert list(written.columns) == [
    "smiles",
    "row",
    "label",
    "prediction",
    "cliff_mol",
  ]
  flags = table.loc[written.smiles, "cliff_mol"].to_numpy() == 1
  again = math.sqrt(
    np.mean(
      (written.prediction - table.loc[written.smiles, "y"].values)[flags] ** 2
    )
  )
  assert again == pytest.approx(by_hand, rel=1e-5)


def test_fixed_split_errors_name_the_problem():
  with pytest.raises(ValueError, match="marks none"):
    splits.split_dataset(["C", "CC"], "fixed")
  with pytest.raises(ValueError, match=r"found \['valid'\]"):
    splits.fixed_split(["C", "CC"], ["train", "valid"])
  with pytest.raises(ValueError, match="0 test"):
    splits.fixed_split(["C", "CC"], ["train", "train"])


def test_the_config_of_a_set_is_lipophilicitys_model_on_the_fixed_split():
  config = default.get_config("moleculeace/chembl2835_ki")
  lipo = default.get_config("lipophilicity")
  assert config.dataset == SET and config.split == "fixed"
  assert (config.num_layers, config.num_heads, config.kernel) == (
    lipo.num_layers,
    lipo.num_heads,
    lipo.kernel,
  )
  assert default.has_config(SET) and not default.has_config("moleculeace/x")


@pytest.mark.slow
def test_a_run_records_the_cliff_rmse_of_its_test_predictions(tmp_path):
  from models.configs import test as test_config

  config = test_config.get_config(SET).replace(epochs=1, max_molecules=None)
  summary = train.train_and_evaluate(config, tmp_path, progress=False)
  written = pd.read_csv(tmp_path / "test_predictions.csv")
  table = shared_csv().set_index("smiles")
  truth = table.loc[written.smiles]
  assert (truth.split == "test").all()
  error = written.prediction.to_numpy() - truth.y.to_numpy()
  assert summary["test_rmse"] == pytest.approx(
    math.sqrt(np.mean(error**2)), rel=1e-5
  )
  cliff = truth.cliff_mol.to_numpy() == 1
  cliff_rmse = summary["test_subsets"]["cliff_mol"]["rmse"]
  assert cliff_rmse == pytest.approx(
    math.sqrt(np.mean(error[cliff] ** 2)), rel=1e-5
  )
  # graphsam-train's last line says it beside the test RMSE.
  line = main._summary_line(summary, tmp_path)
  assert f"cliff_mol rmse {cliff_rmse:.4f} ({cliff.sum()} molecules)" in line
