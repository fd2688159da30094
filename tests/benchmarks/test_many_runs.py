"""Twelve training runs in one process: compiled once per family, flat memory.

The issue this guards: every run used to compile its steps again (each
float hyperparameter baked into them) and keep them, so a process died with
LLVM "Cannot allocate memory" after about five CoMPT runs.
"""

import json

import pytest

from tests.benchmarks import scripts
from tests.models import synthetic


@pytest.mark.slow
def test_twelve_runs_compile_once_per_family_and_keep_memory_flat(tmp_path):
  out = tmp_path / "many_runs.json"
  result = scripts.run_script(
    "many_runs",
    "--config",
    "test",
    "--dataset",
    "nci5k-tpsa",
    "--runs",
    "12",
    "--cache-dir",
    str(synthetic.TEST_CACHE),
    "--out",
    str(out),
  )
  assert result.returncode == 0, result.stdout + result.stderr
  summary = json.loads(out.read_text())
  runs = summary["runs"]
  assert len(runs) == 12
  assert {r["optimizer"] for r in runs} == {"adam", "sam", "graphsam"}
  assert len({json.dumps(r["hyperparameters"]) for r in runs}) >= 6
  # One train step per family (one batch shape): Adam, SAM, GraphSAM each
  # compile on their first run; every other rho and beta reuses it.
  assert [r["compiled_train_steps"] for r in runs[:3]] == [1, 1, 1]
  assert all(r["compiled_train_steps"] == 0 for r in runs[3:])
  assert summary["last_compiling_run"] == 3
  # Memory: flat once the three families are compiled (resident memory
  # and the mappings of XLA's code); run 3 is GraphSAM's first.
  assert abs(summary["rss_growth_after_compiling"]) < 0.02
  assert summary["maps_growth_after_compiling"] < 0.01
