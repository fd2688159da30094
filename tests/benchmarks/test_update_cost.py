"""benchmarks/update_cost.py: a smoke run (100k parameters, seconds)."""

import json

import numpy as np
import pytest

import graphsam_optax
from tests.benchmarks import scripts

pytestmark = pytest.mark.slow  # runs a benchmark script

# Parameter-sized trees each method keeps beside Adam's two moments.
EXTRA_TREES = {
  "adam": 0,
  "sam": 0,
  "asam": 0,
  "graphsam": 1,  # the moving average (and a scalar)
  "graphsam_authors": 2,  # the moving average and the perturbation
  "sam_k": 1,
  "sam_one": 1,
  "looksam": 1,  # the sharpness direction
  "ae_sam": 0,
  "rst": 0,
  "msam": 0,  # Adam's own first moment (and a scalar)
  "gsam": 0,
  "fsam": 1,  # the moving average of the gradients
  "late_sam": 0,
}


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
  out = tmp_path_factory.mktemp("update_cost")
  done = scripts.run_script("update_cost.py", "--smoke", "--out", str(out))
  assert done.returncode == 0, done.stderr[-3000:]
  return done.stdout, json.loads((out / "update_cost.json").read_text()), out


def test_every_optimizer_is_timed_with_its_state_size(smoke):
  stdout, result, out = smoke
  summary = result["summary"]
  assert list(summary) == ["adam", *graphsam_optax.optimizer_names()[1:]]
  assert set(EXTRA_TREES) == set(summary)
  for name, entry in summary.items():
    want = 1 + EXTRA_TREES[name] / 2
    np.testing.assert_allclose(entry["state_ratio_to_adam"], want, rtol=1e-3)
    assert entry["ms_per_step"]["median"] > 0
    assert entry["cpu_ms_per_step"]["median"] > 0
    assert entry["bytes_accessed_in_params"] >= 2
  assert summary["adam"]["ratio_to_adam"]["median"] == 1.0
  assert result["command"].startswith("python -m benchmarks.update_cost")
  text = (out / "update_cost.md").read_text()
  assert text in stdout
  assert f"Command: `{result['command']}`" in text
  assert "| graphsam | " in text
