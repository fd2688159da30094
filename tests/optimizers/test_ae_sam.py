"""AE-SAM against a NumPy loop of its rule, limiting cases, passes, errors."""

import math

import jax
import jax.numpy as jnp
import optax
import pytest

from graphsam_optax import ae_sam
from graphsam_optax import sam
from tests.optimizers import family_reference as ref

# SGD hands the rule's direction d_t to the weights unscaled: the strictest
# check, and one compilation per test; test_registry.py runs Adam.
BASES = ["sgd"]

STEPS = 20
# total_steps < STEPS: the last steps run with the factor held at lambda2.
HYPERPARAMETERS = {
  "total_steps": 16,
  "rho": 0.3,
  "delta": 0.9,
  "lambda1": -1.0,
  "lambda2": 1.0,
}


@pytest.mark.parametrize("base", BASES)
def test_matches_numpy_loop_switching_both_ways(base):
  got, passes, state = ref.run_family(ae_sam, base, STEPS, **HYPERPARAMETERS)
  want, want_passes = ref.ae_sam(
    ref.W0, ref.BASES[base][1](), STEPS, **HYPERPARAMETERS
  )
  ref.assert_history_close(got, want)
  assert passes == want_passes
  pattern = "".join(map(str, passes))
  assert "21" in pattern and "12" in pattern, pattern  # both switches
  assert int(state.sam_steps) == passes.count(2)
  assert int(state.count) == STEPS


def test_statistics_follow_their_moving_averages():
  # Three steps of the ordinary rule, recomputed from the clean gradients.
  _, _, state = ref.run_family(ae_sam, "sgd", 3, **HYPERPARAMETERS)
  history, _ = ref.ae_sam(ref.W0, ref.SGD(0.5), 3, **HYPERPARAMETERS)
  weights = [ref.W0, *history[:2]]
  mean = var = 0.0
  for t, w in enumerate(weights):
    n = ref.global_norm(ref.numpy_grad(w, t)) ** 2
    mean = 0.9 * mean + 0.1 * n
    var = 0.9 * var + 0.1 * (n - mean) ** 2
  assert float(state.mean) == pytest.approx(mean, rel=1e-5)
  assert float(state.variance) == pytest.approx(var, rel=1e-4)


@pytest.mark.parametrize("base", BASES)
def test_threshold_always_met_is_sam(base):
  hyperparameters = dict(HYPERPARAMETERS, lambda1=-1e30, lambda2=-1e30)
  got, passes, _ = ref.run_family(ae_sam, base, 6, **hyperparameters)
  want, _, _ = ref.run_family(
    sam, base, 6, rho=0.3, adaptive=False, adaptive_eta=0.05
  )
  ref.assert_history_close(got, want, rtol=1e-6, atol=1e-7)
  assert passes == [2] * 6


@pytest.mark.parametrize("base", BASES)
def test_threshold_never_met_is_the_base_optimizer(base):
  hyperparameters = dict(HYPERPARAMETERS, lambda1=1e30, lambda2=1e30)
  got, passes, state = ref.run_family(ae_sam, base, 6, **hyperparameters)
  want, _, _ = ref.base_run(base, 6)
  ref.assert_history_close(got, want, rtol=1e-6, atol=1e-7)
  assert passes == [1] * 6
  assert int(state.sam_steps) == 0


def test_jit_and_no_jit_agree():
  hyperparameters = dict(
    HYPERPARAMETERS, total_steps=1, delta=0.5, lambda1=1.0, lambda2=1.0
  )
  jitted, jitted_passes, _ = ref.run_family(ae_sam, "sgd", 4, **hyperparameters)
  with jax.disable_jit():
    eager, eager_passes, _ = ref.run(
      ae_sam(optax.sgd(0.5), **hyperparameters), 4, jit=False
    )
  ref.assert_history_close(eager, jitted, rtol=1e-6, atol=1e-7)
  assert eager_passes == jitted_passes == [2, 2, 1, 2]


@pytest.mark.parametrize("base", BASES)
def test_rho_zero_is_the_base_optimizer(base):
  hyperparameters = dict(HYPERPARAMETERS, rho=0.0)
  got, passes, _ = ref.run_family(ae_sam, base, 6, **hyperparameters)
  want, _, _ = ref.base_run(base, 6)
  ref.assert_history_close(got, want, rtol=1e-6, atol=1e-7)
  assert 2 in passes  # SAM steps are taken, at the point itself


def test_update_requires_params_and_grad_fn():
  tx = ae_sam(optax.sgd(0.1), total_steps=10)
  params = jnp.ones(2)
  state = tx.init(params)
  with pytest.raises(ValueError, match="ae_sam needs params"):
    tx.update(params, state, None, grad_fn=lambda p: p)
  with pytest.raises(ValueError, match="ae_sam needs grad_fn"):
    tx.update(params, state, params)


@pytest.mark.parametrize(
  "kwargs, match",
  [
    ({"total_steps": 0}, "total_steps=0"),
    ({"total_steps": 10.5}, "total_steps=10.5"),
    ({"delta": 1.0}, "delta=1.0"),
    ({"delta": -0.1}, "delta=-0.1"),
    ({"lambda1": -math.inf}, "lambda1=-inf"),
    ({"lambda2": math.nan}, "lambda2=nan"),
    ({"rho": -1.0}, "rho=-1.0"),
  ],
)
def test_bad_hyperparameters_raise_naming_them(kwargs, match):
  kwargs = {"total_steps": 10, **kwargs}
  with pytest.raises(ValueError, match=match):
    ae_sam(optax.sgd(0.1), **kwargs)
