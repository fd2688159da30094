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
  assert speed.matmul_flops(jaxpr.jaxpr, while_trips=0) == 5 * 512 + 2 * 512


def test_matmul_flops_counts_while_bodies_by_the_trip_count():
  def f(x, w, steps):  # a dynamic trip count, like the GRU's loops
    return jax.lax.fori_loop(0, steps, lambda _, h: jnp.tanh(h @ w), x)

  jaxpr = jax.make_jaxpr(f)(jnp.ones((4, 8)), jnp.ones((8, 8)), 3)
  assert speed.matmul_flops(jaxpr.jaxpr, while_trips=7) == 7 * 512


def test_matmul_flops_sees_inside_jit_and_grad():
  w = jnp.ones((3, 5))
  f = jax.jit(lambda w, x: jnp.sum(x @ w))
  forward = speed.matmul_flops(
    jax.make_jaxpr(f)(w, jnp.ones((2, 3))).jaxpr, while_trips=0
  )
  backward = speed.matmul_flops(
    jax.make_jaxpr(jax.grad(f))(w, jnp.ones((2, 3))).jaxpr, while_trips=0
  )
  assert forward == 2 * 2 * 3 * 5
  assert backward >= forward  # the weight gradient is a product too


def test_step_profile_names_components():
  from benchmarks import step_profile

  assert step_profile.component(
    "jit(train_step)/jvp(CoMPT)/layer_2/attention/value/dot_general"
  ) == ("attention", "forward")
  assert step_profile.component(
    "jit(train_step)/transpose(jvp(CoMPT))/readout/while/body/dot_general"
  ) == ("GRU readout", "backward")
  assert step_profile.component("jit(train_step)/add") == (
    "optimizer update",
    "forward",
  )


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
  out = tmp_path_factory.mktemp("speed")
  done = scripts.run_script(
    "speed",
    "--smoke",
    "--optimizers",
    *OPTIMIZERS,
    "--cold",
    "adam",
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
  assert "command: python -m benchmarks.speed" in stdout
  assert "machine:" in stdout
  text = (out / "speed.md").read_text()
  assert result["machine"]["jax"] == jax.__version__
  for name in OPTIMIZERS:
    assert f"| {name} |" in text
  assert "Where an Adam step's time goes" in text and "Targets" in text


@pytest.mark.slow
def test_smoke_records_are_complete_and_finite(smoke):
  _, result, _ = smoke
  rounds = result["rounds"]
  summary = result["summary"]
  assert list(summary) == list(OPTIMIZERS)
  for entry in summary.values():
    assert len(entry["train_loss"]) == rounds
    assert np.all(np.isfinite(entry["train_loss"]))
    for key in ("graphs_per_s", "epoch_s", "ratio_to_adam"):
      stats = entry[key]
      assert 0 < stats["min"] <= stats["median"] <= stats["max"] < math.inf
    assert entry["compile_s"] > 0 and entry["compiled_steps"] >= 1
  assert summary["adam"]["ratio_to_adam"]["median"] == 1.0


@pytest.mark.slow
def test_smoke_counts_passes_and_state_bytes(smoke):
  _, result, _ = smoke
  steps = result["steps_per_epoch"]
  summary = result["summary"]
  passes = {n: e["passes_per_epoch"] for n, e in summary.items()}
  assert passes["adam"]["registry"] == steps
  assert passes["graphsam"]["registry"] == steps + 1
  counted = passes["rst"]["counted"]
  assert steps <= counted["min"] <= counted["max"] <= 2 * steps
  # GraphSAM keeps a moving average beside Adam's two moments; RST keeps no
  # tree of its own.
  state = {n: e["state_ratio_to_adam"] for n, e in summary.items()}
  assert state["adam"] == 1.0
  np.testing.assert_allclose(state["graphsam"], 1.5, rtol=1e-3)
  np.testing.assert_allclose(state["rst"], 1.0, rtol=1e-3)


@pytest.mark.slow
def test_smoke_cold_starts_in_fresh_processes(smoke):
  _, result, _ = smoke
  assert list(result["cold"]) == ["adam"]
  for cold in result["cold"].values():
    assert cold["launch_to_first_epoch_s"] > cold["first_epoch_s"] > 0
    assert cold["second_epoch_s"] > 0
    # A fresh process compiles its step; no persistent cache is read.
    assert cold["compiled_train_steps"] >= 1 and cold["compile_s"] > 0


@pytest.mark.slow
def test_smoke_times_pipeline_evaluation_flops_memory_profile(smoke):
  _, result, _ = smoke
  assert result["graphs_per_epoch"] == (
    result["steps_per_epoch"] * result["batch_size"]
  )
  for value in (
    result["pipeline"]["graphs_per_s"],
    result["evaluation"]["seconds"]["median"],
    result["flops"]["per_molecule"],
    result["flops"]["achieved_gflops"],
    *(m["gflops"] for m in result["matmuls"].values()),
  ):
    assert 0 < value < math.inf
  memory = result["memory"]
  assert 0 < memory["compiled"]["rss_mib"] and memory["timed"]["maps"] > 0
  profile = result["profile"]
  assert profile["wall_ms"] > 0 and profile["op_ms"] > 0
  assert set(profile["components"]) == set(step_profile_components())
  assert len(result["load_before"]) == len(result["load_after"]) == 3


def step_profile_components():
  from benchmarks import step_profile

  return step_profile.COMPONENTS
