"""LookSAM against a NumPy loop of its rule, limiting cases, passes, errors."""

import jax
import jax.numpy as jnp
import optax
import pytest

from graphsam_optax import looksam
from graphsam_optax import sam
from tests.optimizers import family_reference as ref

# SGD hands the rule's direction d_t to the weights unscaled: the strictest
# check, and one compilation per test; test_registry.py runs Adam.
BASES = ["sgd"]

STEPS = 10
HYPERPARAMETERS = {"k": 4, "alpha": 0.7, "rho": 0.3}


@pytest.mark.parametrize("base", BASES)
def test_matches_numpy_loop_with_two_passes_every_k_steps(base):
  got, passes, state = ref.run_family(looksam, base, STEPS, **HYPERPARAMETERS)
  want, want_passes = ref.looksam(
    ref.W0, ref.BASES[base][1](), STEPS, **HYPERPARAMETERS
  )
  ref.assert_history_close(got, want)
  assert passes == want_passes == [2, 1, 1, 1, 2, 1, 1, 1, 2, 1]
  assert int(state.count) == STEPS


@pytest.mark.parametrize("base", BASES)
def test_k_one_is_sam(base):
  got, passes, _ = ref.run_family(looksam, base, 6, k=1, alpha=0.7, rho=0.3)
  want, _, _ = ref.run_family(
    sam, base, 6, rho=0.3, adaptive=False, adaptive_eta=0.05
  )
  ref.assert_history_close(got, want, rtol=1e-6, atol=1e-7)
  assert passes == [2] * 6


@pytest.mark.parametrize("base", BASES)
def test_rho_zero_is_the_base_optimizer(base):
  # g_s = g, so the stored direction is zero: the guarded reuse adds nothing.
  got, passes, state = ref.run_family(looksam, base, 6, k=4, alpha=0.7, rho=0.0)
  want, _, _ = ref.base_run(base, 6)
  ref.assert_history_close(got, want, rtol=1e-6, atol=1e-7)
  assert passes == [2, 1, 1, 1, 2, 1]
  assert all(bool(jnp.all(v == 0)) for v in state.sharpness_direction.values())


def test_jit_and_no_jit_agree():
  # Under disable_jit lax.cond runs the taken branch in Python: grad_fn is
  # called on SAM steps only there too.
  jitted, jitted_passes, _ = ref.run_family(
    looksam, "sgd", 3, **HYPERPARAMETERS
  )
  with jax.disable_jit():
    eager, eager_passes, _ = ref.run(
      looksam(optax.sgd(0.5), **HYPERPARAMETERS), 3, jit=False
    )
  ref.assert_history_close(eager, jitted, rtol=1e-6, atol=1e-7)
  assert eager_passes == jitted_passes == [2, 1, 1]


def test_update_requires_params_and_grad_fn():
  tx = looksam(optax.sgd(0.1))
  params = jnp.ones(2)
  state = tx.init(params)
  with pytest.raises(ValueError, match="looksam needs params"):
    tx.update(params, state, None, grad_fn=lambda p: p)
  with pytest.raises(ValueError, match="looksam needs grad_fn"):
    tx.update(params, state, params)


@pytest.mark.parametrize(
  "kwargs, match",
  [
    ({"k": 0}, "k=0"),
    ({"k": 2.5}, "k=2.5"),
    ({"alpha": -0.1}, "alpha=-0.1"),
    ({"rho": -1.0}, "rho=-1.0"),
  ],
)
def test_bad_hyperparameters_raise_naming_them(kwargs, match):
  with pytest.raises(ValueError, match=match):
    looksam(optax.sgd(0.1), **kwargs)
