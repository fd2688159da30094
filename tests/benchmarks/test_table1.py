"""benchmarks/table1.py: the report's shape, and a resumable smoke run."""

import json
import math

import pytest

from benchmarks import table1
from tests.benchmarks import scripts


def _record(dataset, optimizer, seed, test, metric):
  return {
    "dataset": dataset,
    "optimizer": optimizer,
    "seed": seed,
    "schedule": {},
    "metric": metric,
    "test": test,
  }


RECORDS = [
  _record("bbbp", "adam", 0, 0.90, "roc_auc"),
  _record("bbbp", "adam", 1, 0.92, "roc_auc"),
  _record("bbbp", "sam", 0, 0.95, "roc_auc"),
  _record("bbbp", "sam", 1, 0.93, "roc_auc"),
  _record("esol", "adam", 0, 1.0, "rmse"),
  _record("esol", "adam", 1, 1.2, "rmse"),
  _record("esol", "sam", 0, 1.3, "rmse"),
]


def test_aggregate_mean_and_sample_std():
  cells = table1.aggregate(RECORDS)
  assert cells[("bbbp", "adam")]["mean"] == pytest.approx(0.91)
  assert cells[("bbbp", "adam")]["std"] == pytest.approx(0.02 / math.sqrt(2))
  assert math.isnan(cells[("esol", "sam")]["std"])


def test_best_follows_the_metric_direction():
  cells = table1.aggregate(RECORDS)
  assert table1.best_optimizers(cells, "bbbp") == {"sam"}  # ROC-AUC: max
  assert table1.best_optimizers(cells, "esol") == {"adam"}  # RMSE: min


def test_markdown_table_shape_bold_and_missing_cells():
  cells = table1.aggregate(RECORDS)
  text = table1.markdown_table(
    cells, ["bbbp", "esol", "tox21"], ["adam", "sam", "graphsam"], num_seeds=2
  )
  lines = text.splitlines()
  assert lines[0] == (
    "| Optimizer | bbbp (ROC-AUC ↑) | esol (RMSE ↓) | tox21 (ROC-AUC ↑) |"
  )
  assert lines[2] == "| Adam | 0.910 ± 0.014 | **1.100 ± 0.141** | — |"
  assert lines[3] == "| SAM | **0.940 ± 0.014** | 1.300 (n=1) | — |"
  assert lines[4] == "| GraphSAM | — | — | — |"


def test_paper_table_quotes_the_reference_numbers():
  text = table1.paper_table(["bbbp", "esol"], ["adam", "graphsam"])
  assert "| Adam | — | — |" in text
  assert "0.961 ± 0.012 (CoMPT); 0.928 (GROVER)" in text
  assert "0.625 (GROVER)" in text


SMOKE_ARGS = [
  "--config",
  "test",
  "--datasets",
  "nci5k-tpsa",
  "--optimizers",
  "graphsam",
  "--seeds",
  "0",
  "1",
  "--epochs",
  "1",
  "--max-molecules",
  "32",
]


def _run(tmp, *extra):
  return scripts.run_script(
    "table1.py",
    *SMOKE_ARGS,
    "--out",
    str(tmp / "out"),
    "--workdir",
    str(tmp / "work"),
    "--cache-dir",
    str(tmp / "cache"),
    *extra,
  )


@pytest.mark.slow
def test_smoke_run_writes_report_and_resumes(tmp_path):
  done = _run(tmp_path)
  assert done.returncode == 0, done.stderr[-3000:]
  assert "command:" in done.stdout and "machine:" in done.stdout
  out = tmp_path / "out"
  lines = (out / "table1.jsonl").read_text().splitlines()
  records = [json.loads(line) for line in lines]
  assert len(records) == 2
  assert {(r["optimizer"], r["seed"]) for r in records} == {
    ("graphsam", 0),
    ("graphsam", 1),
  }
  # Each run in its own process: compiled steps do not pile up in one.
  assert records[0]["pid"] != records[1]["pid"]
  for r in records:
    assert r["dataset"] == "nci5k-tpsa" and r["metric"] == "rmse"
    assert r["epochs"] == 1 and r["schedule"]["epochs"] == 1
    assert math.isfinite(r["test"]) and r["test"] > 0
  report = (out / "table1.md").read_text()
  assert "runs finished: 2 of 2" in report
  assert "| Optimizer | nci5k-tpsa (RMSE ↓) |" in report
  assert "| GraphSAM | **" in report  # the only row is the best
  assert (out / "table1.png").stat().st_size > 0

  again = _run(tmp_path)
  assert again.returncode == 0, again.stderr[-3000:]
  assert "2 of 2 runs done" in again.stdout
  assert (out / "table1.jsonl").read_text().splitlines() == lines
