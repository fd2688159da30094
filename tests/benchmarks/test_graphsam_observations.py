"""benchmarks/graphsam_observations.py: observers, SAM capture, smoke run."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from graphsam_optax import sam

pytest.importorskip("rdkit")
pytest.importorskip("matplotlib")

from benchmarks import graphsam_observations as obs  # noqa: E402
from models import engine


def _cos(a, b):
  return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def _unit(x):
  return x / np.linalg.norm(x)


def _as_tree(x):
  return {"a": jnp.asarray(x[:3]), "b": jnp.asarray(x[3:].reshape(2, 2))}


def test_observe_matches_a_numpy_loop_of_the_definitions():
  beta, k, steps_per_epoch, steps = 0.7, 3, 5, 12
  rng = np.random.default_rng(0)
  gs = rng.normal(size=(steps, 7)).astype(np.float32)
  omegas = (gs + 0.5 * rng.normal(size=(steps, 7))).astype(np.float32)
  observers = obs.init_observers(_as_tree(np.zeros(7, np.float32)))
  observe = jax.jit(
    lambda o, g, w, t: obs.observe(
      o, g, w, t, beta=beta, k=k, steps_per_epoch=steps_per_epoch
    )
  )
  eps = eps_raw = anchor_k = anchor_one = None
  for t in range(steps):
    g, omega = gs[t], omegas[t]
    observers, record = observe(
      observers, _as_tree(g), _as_tree(omega), jnp.int32(t)
    )
    if t % steps_per_epoch == 0:
      eps, eps_raw, anchor_one = _unit(g), g, g
    else:
      unit_prev = _unit(omegas[t - 1])
      eps = beta * eps + (1 - beta) * unit_prev
      eps_raw = beta * eps_raw + (1 - beta) * unit_prev
    if t % k == 0:
      anchor_k = g
    expected = {
      "cos_graphsam": _cos(eps, g),
      "cos_graphsam_raw_anchor": _cos(eps_raw, g),
      "cos_sam_k": _cos(anchor_k, g),
      "cos_sam_one": _cos(anchor_one, g),
      "cos_g_omega": _cos(g, omega),
      "grad_norm": np.linalg.norm(g),
      "omega_norm": np.linalg.norm(omega),
    }
    if t:
      expected.update(
        cos_successive_g=_cos(g, gs[t - 1]),
        cos_successive_omega=_cos(omega, omegas[t - 1]),
        cos_prev_omega_g=_cos(omegas[t - 1], g),
        rel_change_g=np.linalg.norm(g - gs[t - 1]) / np.linalg.norm(gs[t - 1]),
      )
    else:
      assert np.isnan(record["cos_successive_g"])
    for name, value in expected.items():
      np.testing.assert_allclose(record[name], value, rtol=1e-5, err_msg=name)
    assert bool(record["epoch_start"]) == (t % steps_per_epoch == 0)
    assert bool(record["sam_k_anchor"]) == (t % k == 0)


def test_observed_step_is_sams_step_and_records_its_two_gradients():
  lr, rho = 0.1, 0.3
  matrix = np.array([[3.0, 1.0], [1.0, 2.0]], np.float32)

  def loss_fn(params, batch, blocks):
    del blocks
    x = params["w"] - batch
    return 0.5 * x @ matrix @ x + jnp.sum(jnp.sin(x))

  def numpy_loss(w, batch):
    x = w - batch
    return 0.5 * x @ matrix @ x + np.sum(np.sin(x))

  def numpy_grad(w, batch):
    x = w - batch
    return matrix @ x + np.cos(x)

  def make_tx(values):  # hyperparameters as arrays, like the engine's
    return sam(optax.sgd(values["lr"]), rho=values["rho"])

  step = obs.make_observed_sam_step(
    loss_fn, make_tx, beta=0.9, k=2, steps_per_epoch=4
  )
  values = {"lr": jnp.float32(lr), "rho": jnp.float32(rho)}
  params = {"w": jnp.array([1.0, -2.0])}
  state, observers = make_tx(values).init(params), obs.init_observers(params)
  totals = engine.EpochTotals.zeros()
  w, loss_sum = np.array([1.0, -2.0]), 0.0
  for t, batch in enumerate(np.array([[0.5, 0.2], [-0.3, 0.1], [0.0, 1.0]])):
    params, state, totals, observers, record = step(
      params,
      state,
      totals,
      observers,
      jnp.int32(t),
      jnp.asarray(batch),
      values,
      None,
    )
    g = numpy_grad(w, batch)
    omega = numpy_grad(w + rho * g / np.linalg.norm(g), batch)
    np.testing.assert_allclose(record["loss"], numpy_loss(w, batch), 1e-5)
    loss_sum += numpy_loss(w, batch)
    w = w - lr * omega
    np.testing.assert_allclose(params["w"], w, rtol=1e-5)
    np.testing.assert_allclose(record["grad_norm"], np.linalg.norm(g), 1e-5)
    np.testing.assert_allclose(
      record["omega_norm"], np.linalg.norm(omega), rtol=1e-5
    )
    np.testing.assert_allclose(record["cos_g_omega"], _cos(g, omega), 1e-5)
  assert int(totals.steps) == 3 and int(totals.first_nonfinite) == -1
  np.testing.assert_allclose(totals.loss_sum, loss_sum, rtol=1e-5)


def test_summary_excludes_each_methods_own_anchor_steps():
  history = {
    "epoch_start": [1, 0, 0, 0],
    "sam_k_anchor": [1, 0, 1, 0],
    "cos_graphsam": [1.0, 0.6, -0.2, 0.4],
    "cos_graphsam_raw_anchor": [1.0, 0.6, -0.2, 0.4],
    "cos_sam_k": [1.0, -0.5, 1.0, 0.2],
    "cos_sam_one": [1.0, 0.1, 0.2, -0.3],
  }
  for name in obs.CHANGES:
    history.setdefault(name, [np.nan, 0.5, 0.25, 0.75])
  summary = obs.summarize_observations(history)
  np.testing.assert_allclose(summary["changes"]["rel_change_g"]["mean"], 0.5)
  summary = summary["approximations"]
  assert summary["graphsam"]["steps"] == 3
  np.testing.assert_allclose(summary["graphsam"]["share_cos_positive"], 2 / 3)
  np.testing.assert_allclose(summary["graphsam"]["share_cos_above_half"], 1 / 3)
  np.testing.assert_allclose(summary["graphsam"]["mean_cos"], 0.8 / 3)
  assert summary["sam_k"]["steps"] == 2
  np.testing.assert_allclose(summary["sam_k"]["share_cos_positive"], 0.5)
  np.testing.assert_allclose(summary["sam_k"]["all_steps"]["mean_cos"], 0.425)
  assert summary["sam_one"]["paper_share"] == 0.401


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::models.datasets.InvalidSmilesWarning")
def test_smoke_run_writes_consistent_results(tmp_path, capsys):
  result = obs.main(["--smoke", "--out", str(tmp_path)])
  out = capsys.readouterr().out
  assert "command:" in out and "machine:" in out
  for suffix in ("json", "png", "md"):
    assert (tmp_path / f"{obs.NAME}.{suffix}").stat().st_size > 0
  saved = json.loads((tmp_path / f"{obs.NAME}.json").read_text())
  assert saved["observations"] == result["observations"]
  history = saved["history"]
  steps = saved["args"]["epochs"] * saved["steps_per_epoch"]
  assert len(history["loss"]) == steps
  starts = np.flatnonzero(history["epoch_start"])
  np.testing.assert_array_equal(
    starts, np.arange(0, steps, saved["steps_per_epoch"])
  )
  for name in ("graphsam", "sam_one"):
    np.testing.assert_allclose(
      np.asarray(history[f"cos_{name}"])[starts], 1.0, rtol=1e-5
    )
  anchors_k = np.arange(0, steps, saved["args"]["k"])
  np.testing.assert_allclose(
    np.asarray(history["cos_sam_k"])[anchors_k], 1.0, rtol=1e-5
  )
  for name in obs.APPROXIMATIONS:
    cosines = np.asarray(history[f"cos_{name}"])
    assert np.all(np.abs(cosines) <= 1 + 1e-5)
    share = saved["observations"]["approximations"][name]["share_cos_positive"]
    assert 0 <= share <= 1
  assert set(saved["sharpness"]) == {"init", "sam", "adam", "graphsam"}
  for values in saved["sharpness"].values():
    assert np.isfinite(values["sharpness"]) and values["sharpness"] > 0
  assert "| graphsam |" in (tmp_path / f"{obs.NAME}.md").read_text()
