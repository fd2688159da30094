"""Tests of the graphsam-train command line (models/main.py)."""

import json

import pytest

from models import main
from models import train
from tests.models import synthetic


@pytest.fixture
def no_work(monkeypatch):
  """Fails the test if a run starts (arguments must be checked first)."""

  def fail(*args, **kwargs):
    raise AssertionError("training started despite a bad argument")

  monkeypatch.setattr(train, "train_and_evaluate", fail)
  monkeypatch.setattr(train, "prepare_data", fail)


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
  ],
)
def test_bad_arguments_fail_before_any_work(argv, flag, no_work, capsys):
  with pytest.raises(SystemExit) as exit_info:
    main.main(argv)
  assert exit_info.value.code == 2
  assert f"argument {flag}" in capsys.readouterr().err


def test_help_lists_every_optimizer(capsys):
  with pytest.raises(SystemExit):
    main.main(["--help"])
  out = capsys.readouterr().out
  for name in train.OPTIMIZERS:
    assert f"\n{name}: " in out


def test_trains_and_ends_with_a_summary_line(tmp_path, capsys):
  out = tmp_path / "run"
  argv = ["--dataset", "nci5k-tpsa", "--config", "test", "--out", str(out)]
  argv += ["--cache-dir", str(synthetic.TEST_CACHE), "--epochs", "2"]
  argv += ["--compile-cache", ""]  # leave the session's JAX config alone
  assert main.main(argv) == 0
  last = capsys.readouterr().out.strip().splitlines()[-1]
  assert last.startswith("nci5k-tpsa graphsam seed 0: test rmse ")
  assert "2 epochs" in last and "graphs/s" in last
  summary = json.loads((out / "summary.json").read_text())
  assert f"{summary['test_rmse']:.4f}" in last
  assert len(json.loads((out / "metrics.json").read_text())) == 2
