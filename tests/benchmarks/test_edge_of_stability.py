"""Smoke run of benchmarks/edge_of_stability.py (tiny data, seconds)."""

import json

import numpy as np
import pytest

from tests.benchmarks import scripts

pytest.importorskip("rdkit")
pytest.importorskip("matplotlib")


@pytest.mark.slow
def test_smoke_run_writes_consistent_records(tmp_path):
  done = scripts.run_script(
    "edge_of_stability", "--smoke", "--out", str(tmp_path)
  )
  assert done.returncode == 0, done.stderr[-2000:]
  assert "command:" in done.stdout and "machine:" in done.stdout
  assert "||H||/SAM-edge" in done.stdout
  assert (tmp_path / "edge_of_stability.png").stat().st_size > 0
  result = json.loads((tmp_path / "edge_of_stability.json").read_text())
  config = result["config"]
  assert result["data"]["molecules"] == config["molecules"]
  assert set(result["summary"]) == set(result["runs"])
  measurements = config["steps"] // config["every"] + 1
  for label, run in result["runs"].items():
    assert len(run["step"]) == measurements
    sharpness = np.asarray(run["sharpness"])
    gd_edge, sam_edge = np.asarray(run["gd_edge"]), np.asarray(run["sam_edge"])
    assert np.all(np.isfinite(sharpness)) and np.all(sharpness > 0)
    np.testing.assert_allclose(gd_edge, 2 / config["lr"], rtol=1e-6)
    if run["rho"] == 0:
      np.testing.assert_allclose(sam_edge, gd_edge, rtol=1e-6)
    else:
      assert np.all(sam_edge < gd_edge)
    for name in ("grad_alignment", "sam_grad_alignment"):
      assert np.all((np.asarray(run[name]) >= 0) & (np.asarray(run[name]) <= 1))
    ratio = result["summary"][label]["median_sharpness_over_sam_edge"]
    assert np.isfinite(ratio) and ratio > 0
