"""Tests of models/predict.py: loading runs, predicting, graphsam-predict.

The fast tests build finished-looking runs from initialized weights (no
training); the slow ones train tiny runs and check that prediction
reproduces their own test metric.
"""

import csv
import json
import shutil
import types
from pathlib import Path

import jax
import numpy as np
import pytest

from models import engine
from models import featurization
from models import input_pipeline
from models import predict
from models import run_dir
from models import train
from models.configs import test as test_config
from tests.models import synthetic

DATA = Path(__file__).parents[1] / "data"
OWN = DATA / "own_molecules.csv"
NEW = DATA / "new_molecules.csv"
SMILES = ["CCO", "c1ccccc1O", "not a smiles", "CC(=O)Nc1ccc(O)cc1"]
TRAIN = ["CCO", "CCCO", "CCCCO", "c1ccccc1O", "Cc1ccccc1O", "CC(=O)Nc1ccccc1"]
TRAIN += ["CC(=O)Nc1ccc(O)cc1", "CCN", "CCCN", "OCC(O)CO", "c1ccncc1"]
VALID = ["CCCCCO", "CCc1ccccc1O", "CCCCN", "CC(=O)Nc1ccc(C)cc1"]


def make_run(directory: Path, seed: int, task_type="regression", targets=2):
  """A run directory as graphsam-train leaves it, from initialized weights."""
  names = ("logp", "tpsa")[:targets]
  config = test_config.get_config("bbbp").replace(
    seed=seed, task_type=task_type
  )
  graphs = featurization.featurize_smiles(["CCO", "CCN"]).graphs
  budgets = input_pipeline.padding_budgets(graphs.n_atoms, 2)
  batch = input_pipeline.make_batch(
    graphs, np.zeros((2, targets), np.float32), [0, 1], budgets
  )
  model = engine.create_model(config, targets)
  blocks = input_pipeline.shape_of(batch, budgets).blocks
  init = jax.jit(
    model.init, static_argnums=2, compiler_options=engine.FAST_COMPILE
  )
  params = init(jax.random.key(seed), batch.graphs, blocks)["params"]
  scaler = None
  if task_type == "regression":
    scaler = input_pipeline.TargetScaler(
      np.array([3.0, 40.0][:targets], np.float32),
      np.array([1.5, 25.0][:targets], np.float32),
    )
  spec = types.SimpleNamespace(
    task_type=task_type,
    metric="rmse" if task_type == "regression" else "roc_auc",
    target_columns=names,
    smiles_column="smiles",
  )
  # The domain's training and validation molecules (models.domain).
  featurized = featurization.featurize_smiles(TRAIN + VALID)
  data = types.SimpleNamespace(
    dataset=types.SimpleNamespace(
      spec=spec, smiles=TRAIN + VALID, graphs=featurized.graphs
    ),
    scaler=scaler,
    split=types.SimpleNamespace(
      train=np.arange(len(TRAIN)),
      valid=np.arange(len(TRAIN), len(TRAIN) + len(VALID)),
    ),
  )
  directory.mkdir(parents=True)
  record = json.loads(json.dumps(run_dir.config_record(config)))
  (directory / run_dir.CONFIG).write_text(json.dumps(record))
  run_dir.save_model(directory, data, params, best_epoch=1)
  return directory


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  root = tmp_path_factory.mktemp("ensemble")
  for seed in (0, 1):
    make_run(root / f"seed{seed}", seed)
  return root


def test_ensemble_predicts_means_stds_and_nan_for_bad_smiles(runs):
  ensemble = predict.load(runs)  # a directory of runs
  assert [r.directory.name for r in ensemble.runs] == ["seed0", "seed1"]
  assert ensemble.targets == ("logp", "tpsa")
  per_run, dropped = ensemble.predict_runs(SMILES)
  assert per_run.shape == (2, 4, 2)
  assert [(d.index, d.reason) for d in dropped] == [(2, "SMILES syntax error")]
  assert (
    np.isnan(per_run[:, 2]).all() and np.isfinite(per_run[:, [0, 1, 3]]).all()
  )
  mean, std = ensemble.predict(SMILES, return_std=True)
  np.testing.assert_allclose(mean, per_run.mean(0))
  np.testing.assert_allclose(std, per_run.std(0))
  assert (std[[0, 1, 3]] > 0).all()  # two different initializations
  # One run alone: its own predictions, in original units (the scaler).
  single = predict.load(runs / "seed1")
  np.testing.assert_allclose(single.predict(SMILES), per_run[1])
  assert np.all(np.abs(per_run[1, [0, 1, 3], 1] - 40.0) < 25.0 * 10)


def test_predictions_do_not_depend_on_batching_or_order(runs):
  ensemble = predict.load(runs / "seed0")
  many = SMILES + ["CCCC", "c1ccncc1", "OCC(O)CO"]
  whole = ensemble.predict(many)
  one_by_one = np.concatenate(
    [ensemble.predict_runs([s], batch_size=1)[0][0] for s in many]
  )
  np.testing.assert_allclose(one_by_one, whole, rtol=1e-5, atol=1e-5)
  reverse = ensemble.predict(many[::-1])[::-1]
  np.testing.assert_allclose(reverse, whole, rtol=1e-5, atol=1e-5)


def test_classification_gives_probabilities(tmp_path):
  run = make_run(tmp_path / "cls", 0, "classification", targets=1)
  probabilities = predict.load(run).predict(SMILES)
  present = probabilities[[0, 1, 3]]
  assert ((present > 0) & (present < 1)).all()


def test_predict_compiles_once_per_shape(runs, monkeypatch):
  monkeypatch.setattr(engine, "_PREDICTS", {})
  ensemble = predict.load(runs)
  ensemble.predict(SMILES)
  # Both runs share one jitted function, the engine's for their model.
  (steps,) = engine._PREDICTS.values()
  fn = steps.jitted
  compiled = fn._cache_size()
  ensemble.predict(list(reversed(SMILES)))
  assert fn._cache_size() == compiled


def read_csv(path):
  with open(path, newline="") as f:
    return list(csv.DictReader(f))


def test_cli_writes_one_row_per_input_row(runs, tmp_path, capsys):
  out = tmp_path / "preds.csv"
  argv = ["--run", str(runs / "seed0"), str(runs / "seed1")]
  assert predict.main(argv + ["--smiles", str(NEW), "--out", str(out)]) == 0
  captured = capsys.readouterr()
  assert (
    "1 of 13 rows" in captured.err and "line 7: 'c1ccccc1('" in captured.err
  )
  assert captured.out.strip().endswith(f"-> {out}")
  rows = read_csv(out)
  inputs = read_csv(NEW)
  assert [(r["id"], r["smiles"]) for r in rows] == [
    (r["id"], r["smiles"]) for r in inputs
  ]
  assert list(rows[0]) == [
    "id",
    "smiles",
    "logp",
    "tpsa",
    "logp_std",
    "tpsa_std",
    "logp_model_0",
    "tpsa_model_0",
    "logp_model_1",
    "tpsa_model_1",
    "in_domain",
    "domain_reason",
    "prediction_error",
  ]
  bad = rows[5]
  assert bad["id"] == "typo" and bad["logp"] == "" and bad["tpsa_std"] == ""
  assert bad["prediction_error"] == "SMILES not parsed: SMILES syntax error"
  good = [r for r in rows if r["id"] != "typo"]
  assert all(r["prediction_error"] == "" for r in good)
  mean, std = predict.load(runs).predict(
    [r["smiles"] for r in good], return_std=True
  )
  got = np.array([[float(r["logp"]), float(r["tpsa_std"])] for r in good])
  np.testing.assert_allclose(got, np.stack([mean[:, 0], std[:, 1]], 1), 1e-6)


def test_cli_keeps_input_columns_and_renames_clashing_ones(
  runs, tmp_path, capsys
):
  source = tmp_path / "labelled.csv"
  source.write_text(
    "molecule,logp,note\nCCO,-0.1,  padded  \n\nc1ccccc1O,1.4,\n"
  )
  out = tmp_path / "preds.csv"
  argv = ["--run", str(runs / "seed0"), "--smiles", str(source)]
  argv += ["--smiles-column", "molecule"]  # the runs' 'smiles' is not there
  assert predict.main(argv + ["--out", str(out)]) == 0
  rows = read_csv(out)
  assert list(rows[0]) == [
    "molecule",
    "logp",
    "note",
    "logp_pred",
    "tpsa",
    "in_domain",
    "domain_reason",
    "prediction_error",
  ]
  assert [r["logp"] for r in rows] == ["-0.1", "1.4"]  # labels untouched
  assert rows[0]["note"] == "  padded  " and rows[1]["logp_pred"] != ""
  assert "renamed" in capsys.readouterr().out


@pytest.mark.parametrize(
  "change, code, message",
  [
    ("missing run", 1, "no such run directory"),
    ("unfinished", 1, "has not finished"),
    ("other featurizer", 1, "featurizer version 0"),
    ("other targets", 1, "an ensemble needs runs of the same targets"),
    ("no column", 2, "argument --smiles-column: "),
    ("no smiles column", 2, "has no column 'smiles'"),
    ("two smiles columns", 2, "'Smiles' and 'SMILES' both match"),
    ("nothing predicted", 1, "none of the 2 rows"),
    ("no smiles file", 2, "argument --smiles: "),
    ("empty file", 1, "is empty"),
  ],
)
def test_cli_errors_are_one_line(runs, tmp_path, capsys, change, code, message):
  run = tmp_path / "run"
  shutil.copytree(runs / "seed0", run)
  paths = [run]
  smiles, extra = NEW, []
  if change == "missing run":
    paths = [tmp_path / "nope"]
  elif change == "unfinished":
    (run / run_dir.MODEL).unlink()
  elif change == "other featurizer":
    meta = json.loads((run / run_dir.MODEL).read_text())
    meta["featurizer_version"] = 0
    (run / run_dir.MODEL).write_text(json.dumps(meta))
  elif change == "other targets":
    paths.append(make_run(tmp_path / "one_target", 0, targets=1))
  elif change == "no column":
    extra = ["--smiles-column", "smi"]
  elif change == "no smiles column":
    smiles = tmp_path / "ids.csv"
    smiles.write_text("id,structure\na,CCO\nb,CCN\n")
  elif change == "two smiles columns":
    smiles = tmp_path / "two.csv"
    smiles.write_text("Smiles,SMILES\nCCO,CCO\n")
  elif change == "nothing predicted":
    smiles = tmp_path / "names.csv"
    smiles.write_text("smiles,note\naspirin,x\nethanol,y\n")
  elif change == "no smiles file":
    smiles = tmp_path / "missing.csv"
  elif change == "empty file":
    smiles = tmp_path / "empty.csv"
    smiles.write_text("")
  argv = ["--run", *map(str, paths), "--smiles", str(smiles)]
  assert run_cli(argv + ["--out", str(tmp_path / "p.csv"), *extra]) == code
  err = capsys.readouterr().err
  assert message in err
  if code == 2:
    assert "--smiles-column" in err
  if code == 1:
    assert err.count("\n") == 1 and err.startswith("graphsam-predict: error: ")
  assert not (tmp_path / "p.csv").exists()


def run_cli(argv) -> int:
  """graphsam-predict's exit status, argparse's errors included."""
  try:
    return predict.main(argv)
  except SystemExit as e:
    return e.code


@pytest.mark.slow
@pytest.mark.parametrize("task", ["regression", "classification"])
def test_predict_reproduces_the_runs_test_metric(tmp_path, task):
  source, targets = OWN, ("logp", "tpsa")
  if task == "classification":  # tpsa above 60: a 0/1 label
    source = tmp_path / "polar.csv"
    lines = OWN.read_text().splitlines()
    out = ["name,smiles,polar"]
    for line in lines[1:]:
      name, smiles, _, tpsa = line.split(",")
      label = "" if tpsa in ("", "inf") else str(int(float(tpsa) > 60))
      out.append(f"{name},{smiles},{label}")
    source.write_text("\n".join(out) + "\n")
    targets = ("polar",)
  config = test_config.get_config("bbbp").replace(
    epochs=2,
    data_file=str(source),
    target_columns=targets,
    task_type=task,
    split_sizes=(0.6, 0.2, 0.2),  # both classes in a test set of 15
  )
  summary = train.train_and_evaluate(
    config,
    tmp_path / "run",
    cache_dir=synthetic.TEST_CACHE,
    progress=False,
    log=lambda _: None,
  )
  metric = summary["metric"]
  assert metric == ("rmse" if task == "regression" else "roc_auc")
  reproduced = predict.evaluate(tmp_path / "run")
  assert np.isfinite(summary[f"test_{metric}"])
  assert reproduced[metric] == pytest.approx(
    summary[f"test_{metric}"], rel=1e-6, abs=1e-6
  )
  saved = run_dir.load_model(tmp_path / "run")
  assert saved.meta["best_epoch"] == summary["best_epoch"]
  jax.tree.map(lambda x: np.testing.assert_(np.isfinite(x).all()), saved.params)


# Issue 25: predictions that say when they are out of their depth.


def test_ensemble_repr_is_short(runs):
  ensemble = predict.load(runs)
  assert repr(ensemble) == (
    f"Ensemble(2 runs of {runs}: regression, targets ('logp', 'tpsa'))"
  )
  assert "params" not in repr(ensemble.runs[0])


def test_predict_warns_of_the_smiles_it_could_not_use(runs):
  ensemble = predict.load(runs / "seed0")
  with pytest.warns(predict.UnusedSmilesWarning) as caught:
    mean = ensemble.predict(SMILES)
  message = str(caught[0].message)
  assert message.startswith("1 of 4 SMILES cannot be used; their rows are NaN")
  assert "index 2: 'not a smiles' (SMILES syntax error)" in message
  assert np.isnan(mean[2]).all()


def test_applicability_domain(runs, tmp_path):
  ensemble = predict.load(runs / "seed0")
  queries = [
    "CCO",  # a training molecule
    "CCCCCCCCCCCCCCCCCCCCCCCCCCCCCCO",  # larger than any
    "CC[Se]C",  # an element never seen
    "C#N",  # a triple bond never seen
    "not a smiles",
  ]
  with pytest.warns(predict.UnusedSmilesWarning):
    _, domain = ensemble.predict(queries, return_domain=True)
  assert domain.in_domain.tolist() == ["yes", "no", "no", "no", ""]
  assert domain.similarity[0] == 1.0 and np.isnan(domain.similarity[4])
  assert domain.reason[1].startswith(
    "31 atoms, more than any training molecule (11)"
  )
  assert "element Se never seen in training" in domain.reason[2]
  assert "bond triple never seen in training" in domain.reason[3]
  assert "nearest training molecule's similarity" in domain.reason[3]
  record = json.loads((runs / "seed0" / "domain.json").read_text())
  assert record["max_atoms"] == 11 and 0 < record["similarity_threshold"] < 1
  # A run from before the domain record still predicts: "unknown".
  old = tmp_path / "old"
  shutil.copytree(runs / "seed0", old)
  (old / "domain.json").unlink()
  _, domain = predict.load(old).predict(["CCO"], return_domain=True)
  assert domain.in_domain.tolist() == ["unknown"]
  assert "no domain record" in domain.reason[0]


def test_cli_flags_molecules_outside_the_domain(runs, tmp_path, capsys):
  source = tmp_path / "new.csv"
  source.write_text("smiles\nCCO\nCC[Se]C\n")
  out = tmp_path / "preds.csv"
  argv = ["--run", str(runs), "--smiles", str(source), "--out", str(out)]
  assert predict.main(argv) == 0
  rows = read_csv(out)
  assert [r["in_domain"] for r in rows] == ["yes", "no"]
  reason = rows[1]["domain_reason"]
  assert "element Se never seen in training" in reason
  assert reason.endswith("(2 of 2 runs)")
  last = capsys.readouterr().out.strip().splitlines()[-1]
  assert "1 outside the training domain (column in_domain)" in last


@pytest.mark.parametrize(
  "name, text",
  [
    ("case.csv", "id,SMILES\na,CCO\nb,c1ccccc1O\n"),
    ("mols.smi", "CCO ethanol\nc1ccccc1O phenol\n"),
    ("bare.csv", "CCO\nc1ccccc1O\n"),
    ("semi.csv", "id;smiles\na;CCO\nb;c1ccccc1O\n"),
    ("tab.txt", "smiles\tid\nCCO\ta\nc1ccccc1O\tb\n"),
  ],
)
def test_cli_reads_the_files_chemists_have(runs, tmp_path, capsys, name, text):
  source = tmp_path / name
  source.write_text(text)
  out = tmp_path / "preds.csv"
  argv = ["--run", str(runs / "seed0"), "--smiles", str(source)]
  assert predict.main(argv + ["--out", str(out)]) == 0
  rows = read_csv(out)
  assert len(rows) == 2 and all(r["logp"] for r in rows)
  assert "2 of 2 molecules predicted" in capsys.readouterr().out


def test_cli_no_header_keeps_the_first_molecule(runs, tmp_path):
  source = tmp_path / "odd.csv"
  source.write_text("C\nCCO\n")  # 'C' could be a column name
  out = tmp_path / "preds.csv"
  argv = ["--run", str(runs / "seed0"), "--smiles", str(source)]
  assert predict.main(argv + ["--out", str(out), "--no-header"]) == 0
  assert [r["smiles"] for r in read_csv(out)] == ["C", "CCO"]


def test_cli_missing_smiles_marker_is_said(runs, tmp_path):
  source = tmp_path / "gaps.csv"
  source.write_text("smiles,id\nCCO,a\nNA,b\n-,c\n")
  out = tmp_path / "preds.csv"
  argv = ["--run", str(runs / "seed0"), "--smiles", str(source)]
  assert predict.main(argv + ["--out", str(out)]) == 0
  errors = [r["prediction_error"] for r in read_csv(out)]
  assert errors == [
    "",
    "no SMILES (missing value 'NA')",
    ("no SMILES (missing value '-')"),
  ]
