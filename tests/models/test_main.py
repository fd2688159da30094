"""Tests of the graphsam-train command line (models/main.py).

Every failure a user can meet ends in ``graphsam-train: error: <one line>``
and exit status 1, or in argparse's usage error and status 2; the tests
marked slow train tiny runs on tests/data/own_molecules.csv.
"""

import inspect
import json
import os
import re
import shutil
import subprocess
import sys
import urllib.error
from pathlib import Path

import pytest

from models import dataset_files
from models import engine
from models import input_pipeline
from models import main
from models import optim
from models import run_dir
from models import train
from tests.models import synthetic

DATA = Path(__file__).parents[1] / "data"
OWN = DATA / "own_molecules.csv"


@pytest.fixture
def no_work(monkeypatch):
  """Fails the test if a run starts (arguments must be checked first)."""

  def fail(*args, **kwargs):
    raise AssertionError("training started despite a bad argument")

  monkeypatch.setattr(train, "train_and_evaluate", fail)
  monkeypatch.setattr(input_pipeline, "data_for", fail)


@pytest.mark.parametrize(
  "argv, flag",
  [
    (["--dataset", "nope"], "--dataset"),
    (["--dataset", "bbbp", "--optimizer", "adamw"], "--optimizer"),
    (["--dataset", "bbbp", "--optimizer", "sam", "--rho", "-1"], "--rho"),
    (["--dataset", "bbbp", "--optimizer", "graphsam", "--beta", "2"], "--beta"),
    (["--dataset", "bbbp", "--optimizer", "sam", "--alpha", "0.2"], "--alpha"),
    (["--dataset", "bbbp", "--optimizer", "looksam", "--k", "x"], "--k"),
    (["--dataset", "bbbp", "--epochs", "0"], "--epochs"),
    (["--dataset", "bbbp", "--data-dir", "/no/such/dir"], "--data-dir"),
    (["--dataset", "bbbp", "--optimizer", "sam", "--rho", "nan"], "--rho"),
    (["--dataset", "bbbp", "--optimizer", "sam", "--rho", "inf"], "--rho"),
    (["--dataset", "bbbp", "--optimizer", "sam_k", "--k", "0"], "--k"),
    (["--dataset", "bbbp", "--optimizer", "msam", "--alpha", "0.2"], "--alpha"),
    (
      ["--dataset", "bbbp", "--optimizer", "fsam", "--ema-decay", "1"],
      "--ema-decay",
    ),
    (
      ["--dataset", "bbbp", "--optimizer", "late_sam", "--start", "2"],
      "--start",
    ),
    (
      ["--dataset", "bbbp", "--optimizer", "gsam", "--rho-min", "-1"],
      "--rho-min",
    ),
    (["--dataset", "bbbp", "--seed", "1", "--seeds", "1", "2"], "--seeds"),
    (["--dataset", "bbbp", "--data", str(OWN)], "--data"),
    (["--dataset", "bbbp", "--target-columns", "a"], "--target-columns"),
    (["--data", "/no/such.csv"], "--data"),
    (["--data", str(OWN), "--smiles-column", "SMILES"], "--smiles-column"),
    (["--data", str(OWN), "--target-columns", "logP"], "--target-columns"),
    (["--dataset", "bbbp", "--split-sizes", ".5", ".5", ".5"], "--split-sizes"),
    (["--dataset", "bbbp", "--split-file", "/no/split.json"], "--split-file"),
    (
      ["--dataset", "bbbp", "--split", "random", "--split-file", "x"],
      "--split",
    ),
  ],
)
def test_bad_arguments_fail_before_any_work(argv, flag, no_work, capsys):
  with pytest.raises(SystemExit) as exit_info:
    main.main(argv)
  assert exit_info.value.code == 2
  assert f"argument {flag}" in capsys.readouterr().err


def test_errors_of_registry_values_name_their_flag(no_work, capsys):
  # sam_k's registry message is about anchor_every; it is --k's value.
  with pytest.raises(SystemExit):
    main.main(["--dataset", "bbbp", "--optimizer", "sam_k", "--k", "0"])
  err = capsys.readouterr().err
  assert "argument --k: invalid value 0 for --optimizer sam_k" in err
  assert "argument --optimizer" not in err


def test_help_lists_every_optimizer(capsys):
  with pytest.raises(SystemExit):
    main.main(["--help"])
  out = capsys.readouterr().out
  assert main.optimizers() == optim.OPTIMIZERS
  for name in optim.OPTIMIZERS:
    assert f"\n{name}: " in out
  assert "--data" in out and "--seeds" in out and "--split-file" in out
  # graphsam_optax's public API only, not its _registry module (a word
  # boundary, so that models.dataset_registry is allowed).
  assert not re.search(r"\b_registry\b", inspect.getsource(main))


def test_help_imports_nothing_heavy():
  """--help needs graphsam_optax (jax, optax) and nothing else heavy."""
  code = (
    "import sys, models.main as m; m.make_parser().format_help(); "
    "print(sorted(k for k in ('orbax', 'flax', 'sklearn', 'pandas', "
    "'rdkit', 'jraph', 'tqdm') if k in sys.modules))"
  )
  out = subprocess.run(
    [sys.executable, "-c", code], capture_output=True, text=True, check=True
  ).stdout
  assert out.strip() == "[]"


def run_cli(argv) -> int:
  """graphsam-train's exit status, argparse's errors included."""
  try:
    return main.main([*argv, "--compile-cache", ""])
  except SystemExit as e:
    return e.code


def one_line_error(capsys) -> str:
  err = capsys.readouterr().err
  last = err.strip().splitlines()[-1]
  assert last.startswith("graphsam-train: error: "), err
  return last


def test_output_directory_that_is_a_file(tmp_path, capsys):
  (tmp_path / "out").write_text("")
  argv = ["--dataset", "nci5k-tpsa", "--config", "test"]
  assert run_cli(argv + ["--out", str(tmp_path / "out" / "run")]) == 1
  assert "out is a file, not a directory" in one_line_error(capsys)


def test_output_directory_without_permission(tmp_path, capsys, monkeypatch):
  # Root may write anywhere: make the check see a read-only folder.
  monkeypatch.setattr(run_dir.os, "access", lambda *args: False)
  argv = ["--dataset", "nci5k-tpsa", "--config", "test"]
  assert run_cli(argv + ["--out", str(tmp_path / "run")]) == 1
  assert "permission denied" in one_line_error(capsys)
  assert not (tmp_path / "run").exists()


def test_dataset_not_found_offline_leaves_nothing(
  tmp_path, capsys, monkeypatch
):
  monkeypatch.delenv(dataset_files.DATA_DIR_ENV, raising=False)

  def offline(spec, target, timeout):
    raise urllib.error.URLError("no network")

  monkeypatch.setattr(dataset_files, "_download", offline)
  out = tmp_path / "run"
  argv = ["--dataset", "bbbp", "--cache-dir", str(tmp_path / "cache")]
  assert run_cli(argv + ["--out", str(out)]) == 1
  err = capsys.readouterr().err
  assert err.startswith("graphsam-train: error: no copy of dataset 'bbbp'")
  assert "GRAPHSAM_DATA_DIR" in err and "Traceback" not in err
  assert not out.exists()  # no config.json left behind


def test_changed_registry_file_points_to_data(tmp_path, capsys):
  (tmp_path / "bbbp.csv").write_text("num,name,p_np,smiles\n1,x,1,CCO\n")
  argv = ["--dataset", "bbbp", "--data-dir", str(tmp_path)]
  assert run_cli(argv + ["--out", str(tmp_path / "run")]) == 1
  line = one_line_error(capsys)
  assert "has SHA-256" in line and "--data <file>" in line
  assert "--target-columns 'p_np'" in line


@pytest.mark.parametrize(
  "content, message",
  [
    (b"", "is empty"),
    (b"smiles,y\n", "has a header but no data rows"),
    ("smiles,y\nCCO,caf\u00e9\n".encode("latin-1"), "is not UTF-8 text"),
    (b"smiles,y\nCCO,1\n\nCCN,high\n", "line 4, column 'y': 'high'"),
  ],
)
def test_unreadable_csv_is_named(tmp_path, capsys, content, message):
  path = tmp_path / "mine.csv"
  path.write_bytes(content)
  argv = ["--data", str(path), "--target-columns", "y", "--task", "regression"]
  assert run_cli(argv + ["--out", str(tmp_path / "run")]) == 1
  line = one_line_error(capsys)
  assert str(path) in line and message in line


def test_unexpected_errors_are_one_line_unless_debug(capsys, monkeypatch):
  def boom(*args, **kwargs):
    raise RuntimeError("boom\nsecond line")

  monkeypatch.setattr(train, "train_and_evaluate", boom)
  argv = ["--dataset", "nci5k-tpsa", "--config", "test"]
  assert run_cli(argv) == 1
  line = one_line_error(capsys)
  assert line.endswith(
    "RuntimeError: boom (rerun with --debug to see the traceback)"
  )
  with pytest.raises(RuntimeError, match="boom"):
    run_cli(argv + ["--debug"])


@pytest.mark.slow
def test_trains_and_ends_with_a_summary_line(tmp_path, capsys):
  out = tmp_path / "run"
  argv = ["--dataset", "nci5k-tpsa", "--config", "test", "--out", str(out)]
  argv += ["--cache-dir", str(synthetic.TEST_CACHE), "--epochs", "2"]
  assert run_cli(argv) == 0  # run_cli: leave the session's JAX config alone
  last = capsys.readouterr().out.strip().splitlines()[-1]
  assert last.startswith("nci5k-tpsa graphsam seed 0: test rmse ")
  assert "2 epochs" in last and "graphs/s" in last
  summary = json.loads((out / "summary.json").read_text())
  assert f"{summary['test_rmse']:.4f}" in last
  assert len(json.loads((out / "metrics.json").read_text())) == 2


OWN_ARGS = ["--data", str(OWN), "--target-columns", "logp", "tpsa"]
OWN_ARGS += ["--config", "test", "--cache-dir", str(synthetic.TEST_CACHE)]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
  """A 2-epoch run on own_molecules.csv (copy it before changing it)."""
  out = tmp_path_factory.mktemp("finished") / "run"
  assert run_cli(OWN_ARGS + ["--epochs", "2", "--out", str(out)]) == 0
  return out


def copy_run(finished_run, tmp_path) -> Path:
  out = tmp_path / "run"
  shutil.copytree(finished_run, out)
  return out


@pytest.mark.slow
def test_own_csv_run_records_what_prediction_needs(finished_run):
  files = {p.name for p in finished_run.iterdir()}
  assert {"config.json", "data.json", "split.json", "dropped_rows.csv"} <= files
  assert {"model.json", "params.msgpack", "summary.json"} <= files
  data = json.loads((finished_run / "data.json").read_text())
  assert (
    data["sha256"] == dataset_files.file_sha256(OWN) and not data["registry"]
  )
  assert (data["rows"], data["molecules"], data["dropped"]) == (78, 76, 2)
  dropped = (finished_run / "dropped_rows.csv").read_text().splitlines()
  assert dropped[0] == "line,row,smiles,reason" and dropped[1].startswith("13,")
  split = json.loads((finished_run / "split.json").read_text())
  sides = [k for k, rows in split.items() if {3, 32} & set(rows)]
  assert len(sides) == 1  # data rows 3 and 32: the duplicate, one side
  config = json.loads((finished_run / "config.json").read_text())
  assert config["task_type"] == "regression"  # inferred, then recorded
  assert config["target_columns"] == ["logp", "tpsa"]


@pytest.mark.slow
def test_split_file_reproduces_a_runs_split(finished_run, tmp_path):
  argv = OWN_ARGS + ["--epochs", "1", "--out", str(tmp_path / "again")]
  argv += ["--split-file", str(finished_run / "split.json")]
  assert run_cli(argv) == 0
  assert (tmp_path / "again" / "split.json").read_text() == (
    finished_run / "split.json"
  ).read_text()


@pytest.mark.slow
def test_finished_run_extends_with_more_epochs(finished_run, tmp_path, capsys):
  out = copy_run(finished_run, tmp_path)
  assert run_cli(OWN_ARGS + ["--epochs", "3", "--out", str(out)]) == 0
  assert f"continuing {out} with epochs 2 -> 3" in capsys.readouterr().out
  history = json.loads((out / "metrics.json").read_text())
  assert [row["epoch"] for row in history] == [1, 2, 3]
  assert json.loads((out / "config.json").read_text())["epochs"] == 3
  assert run_cli(OWN_ARGS + ["--epochs", "2", "--out", str(out)]) == 1
  assert "has trained 3 epochs already; pass --epochs 3 or more" in (
    one_line_error(capsys)
  )


@pytest.mark.slow
def test_other_configuration_is_refused_by_name(finished_run, tmp_path, capsys):
  out = copy_run(finished_run, tmp_path)
  argv = OWN_ARGS + ["--epochs", "2", "--batch-size", "8", "--out", str(out)]
  assert run_cli(argv) == 1
  line = one_line_error(capsys)
  assert "another configuration (batch_size 16 there, 8 here)" in line


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["truncated", "corrupt metadata"])
def test_unreadable_checkpoint_is_named(finished_run, tmp_path, capsys, damage):
  out = copy_run(finished_run, tmp_path)
  step = out / "checkpoints" / "2" / "default"
  if damage == "truncated":
    for path in step.rglob("*"):
      if path.is_file() and path.parent.name == "d":
        os.truncate(path, 10)
  else:
    (step / "_METADATA").write_text("garbage")
  assert run_cli(OWN_ARGS + ["--epochs", "3", "--out", str(out)]) == 1
  line = one_line_error(capsys)
  assert f"cannot read the checkpoint in {out / 'checkpoints'}" in line
  assert "to restart the run from its first epoch" in line
  assert len(line) - 2 * len(str(out)) < 320  # no TensorStore dump


@pytest.mark.slow
def test_missing_metrics_is_named(finished_run, tmp_path, capsys):
  out = copy_run(finished_run, tmp_path)
  (out / "metrics.json").unlink()
  assert run_cli(OWN_ARGS + ["--epochs", "3", "--out", str(out)]) == 1
  line = one_line_error(capsys)
  assert f"{out / 'metrics.json'} is missing" in line
  assert "delete" in line and "checkpoints" in line


@pytest.mark.slow
def test_changed_data_file_is_refused(finished_run, tmp_path, capsys):
  out = copy_run(finished_run, tmp_path)
  changed = tmp_path / "own_molecules.csv"
  changed.write_text(OWN.read_text() + "extra,CCCCCC,3.1,0\n")
  data = json.loads((out / "data.json").read_text())
  data["file"] = str(changed)  # as if the run had been trained on it
  (out / "data.json").write_text(json.dumps(data))
  config = json.loads((out / "config.json").read_text())
  config["data_file"] = str(changed)
  (out / "config.json").write_text(json.dumps(config))
  argv = ["--data", str(changed), *OWN_ARGS[2:], "--epochs", "2"]
  assert run_cli(argv + ["--out", str(out)]) == 1
  assert f"{changed} has changed since {out} started" in one_line_error(capsys)


@pytest.mark.slow
@pytest.mark.parametrize(
  "flags",
  [
    ["--optimizer", "msam", "--rho", "1.0"],
    ["--optimizer", "gsam", "--rho-min", "0.02", "--alpha", "0.3"],
    ["--optimizer", "fsam", "--sigma", "0.5", "--ema-decay", "0.9"],
    ["--optimizer", "late_sam", "--start", "0.5"],
  ],
  ids=lambda flags: flags[1],
)
def test_efficient_sam_family_trains_from_the_command_line(
  flags, tmp_path, capsys
):
  out = tmp_path / "run"
  assert run_cli(OWN_ARGS + flags + ["--epochs", "2", "--out", str(out)]) == 0
  config = json.loads((out / "config.json").read_text())
  assert config["optimizer"] == flags[1]
  given = dict(zip(flags[2::2], flags[3::2], strict=True))
  for flag, value in given.items():
    key = flag[2:].replace("-", "_")
    assert config["hyperparameters"][key] == float(value)


@pytest.mark.slow
def test_diverging_run_stops_with_epoch_and_step(tmp_path, capsys):
  out = tmp_path / "run"
  argv = OWN_ARGS + ["--optimizer", "sam", "--rho", "1e9", "--epochs", "2"]
  assert run_cli(argv + ["--out", str(out)]) == 1
  line = one_line_error(capsys)
  assert "at epoch 1, step " in line and "lower --rho" in line
  assert "Input contains NaN" not in line
  assert not list((out / "checkpoints").glob("[0-9]*"))  # none written


@pytest.mark.slow
def test_seeds_train_an_ensemble(tmp_path, capsys):
  out = tmp_path / "ens"
  argv = OWN_ARGS + ["--epochs", "1", "--seeds", "0", "1", "--out", str(out)]
  assert run_cli(argv) == 0
  lines = capsys.readouterr().out.strip().splitlines()
  assert lines[-1].startswith(f"2 runs in {out}: test rmse ")
  assert f"graphsam-predict --run {out}" in lines[-1]
  for seed in (0, 1):
    summary = json.loads((out / f"seed{seed}" / "summary.json").read_text())
    assert summary["seed"] == seed


# Issue 25: own data without surprises.


def write(path: Path, text: str) -> Path:
  path.write_text(text)
  return path


def test_sparse_regression_file_is_inferred_as_regression(
  tmp_path, no_work, capsys
):
  path = write(tmp_path / "sparse.csv", "smiles,a,b\nCCO,-0.54,\nCCN,,1.5\n")
  run_cli(["--data", str(path), "--out", str(tmp_path / "run")])
  out = capsys.readouterr().out
  assert f"{path}: task regression, inferred from the labels" in out


def test_mixed_tasks_are_refused_in_flags(tmp_path, capsys):
  path = write(tmp_path / "mixed.csv", "smiles,active,logS\nCCO,1,\nCCN,,-2\n")
  assert run_cli(["--data", str(path), "--out", str(tmp_path / "run")]) == 1
  line = one_line_error(capsys)
  assert "'active' holds only 0/1 labels" in line
  assert "--target-columns active" in line and "--task regression" in line
  assert "task_type=" not in line and "target_columns=" not in line


def test_semicolon_file_trains_and_says_so(tmp_path, no_work, capsys):
  path = write(tmp_path / "semi.csv", "smiles;logS\nCCO;-0.5\nCCN;1.2\n")
  run_cli(["--data", str(path), "--out", str(tmp_path / "run")])
  out = capsys.readouterr().out
  assert f"{path}: semicolon-separated; task regression" in out


def test_text_column_is_named_with_the_flag(tmp_path, capsys):
  path = write(
    tmp_path / "named.csv", "name,smiles,logp\naspirin,CCO,0.1\nx,CCN,2\n"
  )
  assert run_cli(["--data", str(path), "--out", str(tmp_path / "run")]) == 1
  line = one_line_error(capsys)
  assert "column 'name': 'aspirin' is not a number" in line
  assert line.endswith("name the label columns: --target-columns logp")


def test_duplicate_seeds_are_refused(no_work, capsys):
  argv = ["--dataset", "bbbp", "--seeds", "0", "0", "1"]
  with pytest.raises(SystemExit) as exit_info:
    main.main(argv)
  assert exit_info.value.code == 2
  err = capsys.readouterr().err
  assert "argument --seeds: seed 0 is given twice" in err


def test_missing_data_hint_names_the_flag(tmp_path, capsys, monkeypatch):
  monkeypatch.delenv(dataset_files.DATA_DIR_ENV, raising=False)
  argv = ["--dataset", "freesolv", "--cache-dir", str(tmp_path)]
  monkeypatch.setattr(
    dataset_files, "_download", lambda *a: (_ for _ in ()).throw(OSError("off"))
  )
  assert run_cli(argv + ["--out", str(tmp_path / "run")]) == 1
  err = capsys.readouterr().err
  assert "pass --data-dir <that directory>" in err and "data_dir=" not in err


def test_small_data_is_refused_before_training(tmp_path, capsys, monkeypatch):
  path = write(
    tmp_path / "five.csv",
    "smiles,y\nCCO,1.0\nCCN,2.0\nCCC,3.0\nCCCl,4.0\nCCBr,5.0\n",
  )
  monkeypatch.setattr(
    engine, "build", lambda *a: pytest.fail("training started")
  )
  argv = ["--data", str(path), "--batch-size", "2", "--cache-dir"]
  argv += [str(tmp_path / "cache"), "--out", str(tmp_path / "run")]
  assert run_cli(argv) == 1
  line = one_line_error(capsys)
  assert (
    "5 molecules split 0.8/0.1/0.1 give 5 training, 0 validation and 0 "
    "test molecules" in line
  )
  assert "--batch-size" not in line and "--split-sizes 0.6 0.2 0.2" in line
  assert not (tmp_path / "run" / "checkpoints").exists()


def test_test_config_says_what_its_caps_leave_out(tmp_path):
  from models.configs import test as test_config

  big = "C" * 40  # a 40-atom chain, over the test config's 32 atoms
  rows = [f"{'C' * (1 + i % 12)}{'O' * (i // 12)},{i}" for i in range(200)]
  path = write(tmp_path / "many.csv", "smiles,y\n" + "\n".join(rows))
  path.write_text(path.read_text() + f"\n{big},1\n{big}N,2\n")
  config = test_config.get_config().replace(
    dataset="many", data_file=str(path), target_columns=("y",)
  )
  with pytest.warns(UserWarning) as caught:
    data = input_pipeline.data_for(config, cache_dir=tmp_path)
  (line,) = [str(w.message) for w in caught if "using" in str(w.message)]
  used = "/".join(str(len(p)) for p in data.split)
  assert line == (
    f"many: using {used} of 162/20/20 molecules (at most 160 per part); "
    "2 molecules over 32 atoms left out"
  )
  assert len(data.split.train) == 160


def test_output_file_error_shows_the_path_as_given(
  tmp_path, capsys, monkeypatch
):
  monkeypatch.chdir(tmp_path)
  Path("out").write_text("")
  argv = ["--dataset", "nci5k-tpsa", "--config", "test", "--out", "out/run"]
  assert run_cli(argv) == 1
  assert one_line_error(capsys).endswith(
    "error: out is a file, not a directory; choose another output directory"
  )
