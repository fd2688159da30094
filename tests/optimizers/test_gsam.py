"""GSAM against a NumPy loop of its rule, limiting cases, ρ tie, errors."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from graphsam_optax import get_optimizer
from graphsam_optax import gsam
from graphsam_optax import lr_proportional_schedule
from graphsam_optax import sam
from tests.optimizers import efficient_sam_reference as eref
from tests.optimizers import family_reference as ref

STEPS = 8
HYPERPARAMETERS = {"rho": 0.3, "alpha": 0.7}


@pytest.mark.parametrize("base", ["sgd", "adam"])
def test_matches_numpy_loop_with_two_passes(base):
  got, passes, state = ref.run_family(gsam, base, STEPS, **HYPERPARAMETERS)
  want, want_passes = eref.gsam(
    ref.W0, ref.BASES[base][1](), STEPS, **HYPERPARAMETERS
  )
  ref.assert_history_close(got, want)
  assert passes == want_passes == [2] * STEPS
  assert int(state.count) == STEPS


def test_alpha_zero_is_sam():
  got, _, _ = ref.run_family(gsam, "sgd", STEPS, rho=0.3, alpha=0.0)
  want, _, _ = ref.run_family(
    sam, "sgd", STEPS, rho=0.3, adaptive=False, adaptive_eta=0.01
  )
  ref.assert_history_close(got, want, rtol=1e-6, atol=1e-7)


def test_rho_zero_is_the_base_optimizer_in_one_pass():
  got, passes, _ = ref.run_family(gsam, "sgd", STEPS, rho=0.0, alpha=0.7)
  want, _, _ = ref.base_run("sgd", STEPS)
  ref.assert_history_close(got, want, rtol=1e-6, atol=1e-7)
  assert passes == [1] * STEPS


def test_registry_ties_rho_to_the_learning_rate():
  # Warm-up then decay: rho follows the learning rate between its extremes.
  lr = optax.join_schedules(
    [
      optax.linear_schedule(0.1, 0.5, 4),
      optax.linear_schedule(0.5, 0.2, 6),
    ],
    [4],
  )
  tx = get_optimizer(
    "gsam",
    optax.sgd(lr),
    learning_rate=lr,
    total_steps=10,
    rho=0.3,
    rho_min=0.1,
    alpha=0.7,
  )
  want_rho = lambda t: 0.1 + 0.2 * (float(lr(t)) - 0.1) / 0.4
  got, passes, _ = ref.run(tx, 10)
  want, want_passes = eref.gsam(
    ref.W0, _ScheduledSGD(lr), 10, want_rho, alpha=0.7
  )
  ref.assert_history_close(got, want)
  assert passes == want_passes == [2] * 10
  rho = lr_proportional_schedule(
    lr, rho_max=0.3, rho_min=0.1, lr_max=0.5, lr_min=0.1
  )
  np.testing.assert_allclose(
    [float(rho(t)) for t in (0, 4, 10)], [0.1, 0.3, 0.15], rtol=1e-6
  )


class _ScheduledSGD:
  def __init__(self, lr):
    self.lr, self.t = lr, 0

  def step(self, w, g):
    lr = float(self.lr(self.t))
    self.t += 1
    return {k: w[k] - lr * g[k] for k in w}


def test_without_a_learning_rate_rho_is_constant():
  tx = get_optimizer("gsam", optax.sgd(0.5), total_steps=10, rho=0.3)
  want = gsam(optax.sgd(0.5), rho=0.3, alpha=0.2)
  got, passes, _ = ref.run(tx, 4)
  expected, _, _ = ref.run(want, 4)
  ref.assert_history_close(got, expected, rtol=1e-6, atol=1e-7)
  assert passes == [2] * 4


def test_orthogonal_part_is_orthogonal_to_the_perturbed_gradient():
  # With a zero base step the update is -(g_p - alpha g_perp): its part
  # along g_p is g_p itself.
  params = {"w": jnp.array([1.0, -2.0, 0.5])}
  loss = lambda p: jnp.sum(jnp.sin(p["w"]) * p["w"] ** 2)
  grad_fn = jax.grad(loss)
  tx = gsam(optax.sgd(1.0), rho=0.2, alpha=0.5)
  updates, _ = tx.update(
    grad_fn(params), tx.init(params), params, grad_fn=grad_fn
  )
  g = grad_fn(params)["w"]
  g_p = grad_fn({"w": params["w"] + 0.2 * g / jnp.linalg.norm(g)})["w"]
  g_perp = (-updates["w"] - g_p) / -0.5
  np.testing.assert_allclose(jnp.vdot(g_perp, g_p), 0.0, atol=1e-5)


@pytest.mark.parametrize(
  "kwargs, match",
  [({"rho": -1.0}, "rho=-1.0"), ({"alpha": -0.1}, "alpha=-0.1")],
)
def test_bad_hyperparameters_raise_naming_them(kwargs, match):
  with pytest.raises(ValueError, match=match):
    gsam(optax.sgd(0.1), **kwargs)


def test_registry_refuses_rho_min_above_rho():
  with pytest.raises(ValueError, match="rho_min must be <= rho"):
    get_optimizer("gsam", optax.sgd(0.1), rho=0.01, rho_min=0.05)


def test_update_requires_grad_fn():
  tx = gsam(optax.sgd(0.1))
  params = jnp.ones(2)
  with pytest.raises(ValueError, match="gsam needs grad_fn"):
    tx.update(params, tx.init(params), params)
