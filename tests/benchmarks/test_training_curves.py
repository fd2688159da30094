"""benchmarks/training_curves.py on finished runs stored as fixture files.

``data/training_curves/`` holds the ``metrics.json`` and ``summary.json`` (all
that the script reads) of three tiny ``graphsam-train`` runs: the test
config on 64 nci5k-tpsa molecules for 2 epochs, graphsam with seeds 0 and 1,
adam with seed 0 (made by ``models.train.train_and_evaluate``).
"""

import json
from pathlib import Path

import numpy as np
import pytest

from tests.benchmarks import scripts

pytestmark = pytest.mark.slow  # runs a benchmark script (matplotlib)

RUNS = Path(__file__).parent / "data" / "training_curves"


@pytest.fixture(scope="module")
def run_dirs():
  return [RUNS / name for name in ("graphsam-s0", "graphsam-s1", "adam-s0")]


def test_report_tables_and_plot(run_dirs, tmp_path):
  out = tmp_path / "report" / "curves"
  done = scripts.run_script(
    "training_curves.py", *map(str, run_dirs), "--out", str(out)
  )
  assert done.returncode == 0, done.stderr[-3000:]
  text = (tmp_path / "report" / "curves.md").read_text()
  assert text in done.stdout
  tests = {
    run_dir.name: json.loads((run_dir / "summary.json").read_text())[
      "test_rmse"
    ]
    for run_dir in run_dirs
  }
  pair = [tests["graphsam-s0"], tests["graphsam-s1"]]
  want = f"{np.mean(pair):.3f} ± {np.std(pair, ddof=1):.3f} | 2 |"
  assert f"| nci5k-tpsa | graphsam | rmse | {want}" in text
  assert f"| nci5k-tpsa | adam | rmse | {tests['adam-s0']:.3f} | 1 |" in text
  assert f"| graphsam | 1 | {tests['graphsam-s1']:.4f} |" in text
  assert (tmp_path / "report" / "curves.png").stat().st_size > 10_000


def test_unfinished_run_is_refused_by_name(run_dirs, tmp_path):
  unfinished = tmp_path / "killed"
  unfinished.mkdir()
  (unfinished / "config.json").write_text("{}")
  done = scripts.run_script(
    "training_curves.py",
    str(run_dirs[0]),
    str(unfinished),
    "--out",
    str(tmp_path / "curves"),
  )
  assert done.returncode == 2
  assert f"{unfinished} is not a finished graphsam-train run" in done.stderr
  assert "metrics.json, summary.json" in done.stderr
  assert not (tmp_path / "curves.md").exists()
