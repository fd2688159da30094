"""SAM and ASAM against NumPy loops of their rules, limiting cases, errors."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from graphsam_optax import sam
from graphsam_optax._common import ascent_point
from tests.optimizers import family_reference as ref

STEPS = 8


# SGD hands the SAM gradient to the weights unscaled (the strictest check);
# Adam checks the plumbing of a stateful inner optimizer.
COMBINATIONS = [("sgd", False), ("sgd", True), ("adam", False)]


@pytest.mark.parametrize("base, adaptive", COMBINATIONS)
def test_matches_numpy_loop_and_takes_two_passes(base, adaptive):
  rho = 0.5 if adaptive else 0.3
  got, passes, state = ref.run_family(
    sam, base, STEPS, rho=rho, adaptive=adaptive, adaptive_eta=0.05
  )
  want, want_passes = ref.sam(
    ref.W0, ref.BASES[base][1](), STEPS, rho, adaptive=adaptive, eta=0.05
  )
  ref.assert_history_close(got, want)
  assert passes == want_passes == [2] * STEPS
  assert int(state.count) == STEPS


@pytest.mark.parametrize("base, adaptive", COMBINATIONS[:2])
def test_rho_zero_is_the_base_optimizer(base, adaptive):
  got, _, _ = ref.run_family(
    sam, base, STEPS, rho=0.0, adaptive=adaptive, adaptive_eta=0.05
  )
  want, _, _ = ref.base_run(base, STEPS)
  ref.assert_history_close(got, want, rtol=1e-6, atol=1e-7)


def test_rho_schedule_is_evaluated_on_the_count():
  schedule = optax.join_schedules(
    [optax.constant_schedule(0.0), optax.constant_schedule(0.3)], [3]
  )
  got, _, _ = ref.run_family(sam, "sgd", 6, rho=schedule)
  want, _ = ref.sam(ref.W0, ref.SGD(0.5), 6, lambda t: 0.0 if t < 3 else 0.3)
  ref.assert_history_close(got, want)


def test_asam_perturbation_scales_with_the_weights():
  params = {"a": jnp.array([2.0, 0.0]), "b": jnp.array(-1.0)}
  grads = {"a": jnp.array([1.0, 3.0]), "b": jnp.array(2.0)}
  point = jax.jit(
    lambda g, p: ascent_point(g, p, 0.1, adaptive=True, adaptive_eta=0.5)
  )(grads, params)
  t = {"a": np.array([2.5, 0.5]), "b": np.array(1.5)}
  tg = {k: t[k] * np.asarray(grads[k]) for k in t}
  norm = np.sqrt(sum(np.sum(v**2) for v in tg.values()))
  for k in params:
    want = np.asarray(params[k]) + 0.1 * t[k] * tg[k] / norm
    np.testing.assert_allclose(point[k], want, rtol=1e-6)


@pytest.mark.parametrize("adaptive", [False, True])
def test_zero_gradient_gives_no_perturbation(adaptive):
  params = {"a": jnp.ones(3), "b": jnp.zeros((), jnp.bfloat16)}
  zeros = jax.tree.map(jnp.zeros_like, params)
  point = jax.jit(lambda g, p: ascent_point(g, p, 0.1, adaptive=adaptive))(
    zeros, params
  )
  jax.tree.map(np.testing.assert_array_equal, point, params)
  assert point["b"].dtype == jnp.bfloat16


def test_jit_and_no_jit_agree():
  jitted, jitted_passes, _ = ref.run_family(
    sam, "sgd", 3, rho=0.3, adaptive=False, adaptive_eta=0.05
  )
  with jax.disable_jit():
    eager, eager_passes, _ = ref.run(sam(optax.sgd(0.5), 0.3), 3, jit=False)
  ref.assert_history_close(eager, jitted, rtol=1e-6, atol=1e-7)
  assert eager_passes == jitted_passes == [2] * 3


def test_update_requires_params_and_grad_fn():
  tx = sam(optax.sgd(0.1))
  params = jnp.ones(2)
  state = tx.init(params)
  with pytest.raises(ValueError, match="needs params"):
    tx.update(params, state, None, grad_fn=lambda p: p)
  with pytest.raises(ValueError, match="needs grad_fn"):
    tx.update(params, state, params)


@pytest.mark.parametrize(
  "kwargs, match",
  [
    ({"rho": -0.1}, "rho=-0.1"),
    ({"adaptive_eta": -1.0}, "adaptive_eta=-1.0"),
  ],
)
def test_bad_hyperparameters_raise_naming_them(kwargs, match):
  with pytest.raises(ValueError, match=match):
    sam(optax.sgd(0.1), **kwargs)


def test_extra_args_reach_the_inner_optimizer():
  # polyak_sgd consumes the loss value as the extra argument `value`.
  polyak = optax.polyak_sgd(max_learning_rate=0.5)
  params = ref.as_jax(ref.W0)
  tx = sam(polyak, 0.0)

  @jax.jit
  def updates(params):
    value, grads = jax.value_and_grad(ref.loss)(params, 0)
    got, _ = tx.update(
      grads,
      tx.init(params),
      params,
      grad_fn=lambda q: jax.grad(ref.loss)(q, 0),
      value=value,
    )
    want, _ = polyak.update(grads, polyak.init(params), params, value=value)
    return got, want

  got, want = updates(params)
  jax.tree.map(np.testing.assert_allclose, got, want)
