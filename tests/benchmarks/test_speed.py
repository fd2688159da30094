"""benchmarks/speed.py: the FLOP counter, and a smoke run (seconds)."""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import speed
from tests.benchmarks import scripts

OPTIMIZERS = ("adam", "graphsam", "rst")


def test_matmul_flops_counts_scan_lengths_and_the_costlier_branch():
  def f(x, w):
    def body(h, _):
      return jnp.tanh(h @ w), None  # [4, 8] x [8, 8]: 2 * 4 * 8 * 8 FLOPs

    h, _ = jax.lax.scan(body, x, None, length=5)
    return jax.lax.cond(
      h.sum() > 0, lambda h: h @ w.T @ w, lambda h: h, h
    )  # costlier branch: two products

  jaxpr = jax.make_jaxpr(f)(jnp.ones((4, 8)), jnp.ones((8, 8)))
  assert speed.matmul_flops(jaxpr.jaxpr) == 5 * 512 + 2 * 512


def test_matmul_flops_sees_inside_jit_and_grad():
  w = jnp.ones((3, 5))
  f = jax.jit(lambda w, x: jnp.sum(x @ w))
  forward = speed.matmul_flops(jax.make_jaxpr(f)(w, jnp.ones((2, 3))).jaxpr)
  backward = speed.matmul_flops(
    jax.make_jaxpr(jax.grad(f))(w, jnp.ones((2, 3))).jaxpr
  )
  assert forward == 2 * 2 * 3 * 5
  assert backward >= forward  # the weight gradient is a product too


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
  out = tmp_path_factory.mktemp("speed")
  done = scripts.run_script(
    "speed.py",
    "--smoke",
    "--optimizers",
    *OPTIMIZERS,
    "--out",
    str(out),
    "--cache-dir",
    str(out / "cache"),
  )
  assert done.returncode == 0, done.stderr[-3000:]
  return done.stdout, json.loads((out / "speed.json").read_text()), out


@pytest.mark.slow
def test_smoke_prints_command_machine_and_table(smoke):
  stdout, result, out = smoke
  assert "command:" in stdout and "machine:" in stdout
  text = (out / "speed.md").read_text()
  assert result["machine"]["jax"] == jax.__version__
  for name in OPTIMIZERS:
    assert f"| {name} |" in text
  assert "Targets" in text


@pytest.mark.slow
def test_smoke_records_are_complete_and_finite(smoke):
  _, result, _ = smoke
  steps, rounds = result["steps"], result["rounds"]
  summary = result["summary"]
  assert list(summary) == list(OPTIMIZERS)
  for entry in summary.values():
    assert len(entry["window_s"]) == len(entry["step_s"]) == rounds
    assert all(len(window) == steps for window in entry["step_s"])
    assert len(entry["final_loss"]) == rounds
    assert np.all(np.isfinite(entry["final_loss"]))
    for key in ("graphs_per_s", "ms_per_step", "ratio_to_adam"):
      stats = entry[key]
      assert 0 < stats["min"] <= stats["median"] <= stats["max"] < math.inf
    assert entry["compile_s"] >= 0
  assert summary["adam"]["ratio_to_adam"]["median"] == 1.0
  assert summary["adam"]["step_cost_vs_adam"] == 1.0
  assert "anchor_step_cost_vs_adam" in summary["graphsam"]
  assert "anchor_step_cost_vs_adam" not in summary["rst"]


@pytest.mark.slow
def test_smoke_counts_passes_and_state_bytes(smoke):
  _, result, _ = smoke
  steps = result["steps"]
  summary = result["summary"]
  passes = {n: e["passes_per_epoch"] for n, e in summary.items()}
  assert passes["adam"]["registry"] == steps
  assert passes["graphsam"]["registry"] == steps + 1
  counted = passes["rst"]["counted"]
  assert steps <= counted["min"] <= counted["max"] <= 2 * steps
  # GraphSAM keeps a moving average and the perturbation beside Adam's two
  # moments; RST keeps no tree of its own.
  state = {n: e["state_ratio_to_adam"] for n, e in summary.items()}
  assert state["adam"] == 1.0
  np.testing.assert_allclose(state["graphsam"], 2.0, rtol=1e-3)
  np.testing.assert_allclose(state["rst"], 1.0, rtol=1e-3)


@pytest.mark.slow
def test_smoke_times_pipeline_evaluation_and_flops(smoke):
  _, result, _ = smoke
  assert result["graphs_per_round"] == result["steps"] * result["batch_size"]
  for value in (
    result["pipeline"]["graphs_per_s"]["median"],
    result["evaluation"]["graphs_per_s"]["median"],
    result["flops"]["per_molecule"],
    result["flops"]["achieved_gflops"],
  ):
    assert 0 < value < math.inf
  rss = result["peak_rss_mib"]
  assert 0 < rss["setup"] <= rss["compiled"] <= rss["end"]
  assert len(result["load_before"]) == len(result["load_after"]) == 3


def _group(result, names):
  return {**result, "summary": {n: result["summary"][n] for n in names}}


@pytest.mark.slow
def test_combine_keeps_each_groups_ratios_and_names_the_groups(smoke, tmp_path):
  _, result, _ = smoke
  paths = []
  for i, names in enumerate((("adam", "graphsam"), ("adam", "rst"))):
    path = tmp_path / f"g{i}.json"
    path.write_text(json.dumps(_group(result, names)))
    paths.append(path)
  merged = speed.main(["--combine", *map(str, paths), "--out", str(tmp_path)])
  assert list(merged["summary"]) == ["adam", "graphsam", "rst"]
  assert [e["group"] for e in merged["summary"].values()] == [1, 1, 2]
  for name in ("graphsam", "rst"):
    assert (
      merged["summary"][name]["ratio_to_adam"]
      == result["summary"][name]["ratio_to_adam"]
    )
  assert [g["optimizers"] for g in merged["groups"]] == [
    ["adam", "graphsam"],
    ["adam", "rst"],
  ]
  text = (tmp_path / "speed.md").read_text()
  assert "Measured in 2 processes" in text
  assert "| rst (group 2) |" in text
  assert merged["command"].startswith("python benchmarks/speed.py --combine")


@pytest.mark.slow
def test_combine_rejects_a_group_without_adam_or_another_set_up(
  smoke, tmp_path
):
  _, result, _ = smoke
  good, no_adam, other = (tmp_path / f"{n}.json" for n in "abc")
  good.write_text(json.dumps(result))
  no_adam.write_text(json.dumps(_group(result, ["rst"])))
  other.write_text(json.dumps({**result, "steps": result["steps"] + 1}))
  with pytest.raises(ValueError, match="did not time adam"):
    speed.combine([good, no_adam])
  with pytest.raises(ValueError, match="differs .* in steps"):
    speed.combine([good, other])
