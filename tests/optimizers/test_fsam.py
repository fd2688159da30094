"""F-SAM against NumPy loops of the paper and the code, limiting cases."""

import jax.numpy as jnp
import optax
import pytest

from graphsam_optax import fsam
from graphsam_optax import sam
from tests.optimizers import efficient_sam_reference as eref
from tests.optimizers import family_reference as ref

STEPS = 8
HYPERPARAMETERS = {"rho": 0.3, "sigma": 1.0, "ema_decay": 0.6}


@pytest.mark.parametrize("base", ["sgd", "adam"])
def test_matches_numpy_loop_of_the_paper(base):
  got, passes, state = ref.run_family(fsam, base, STEPS, **HYPERPARAMETERS)
  want, want_passes = eref.fsam(
    ref.W0, ref.BASES[base][1](), STEPS, **HYPERPARAMETERS
  )
  ref.assert_history_close(got, want)
  assert passes == want_passes == [2] * STEPS
  assert int(state.count) == STEPS


def test_use_previous_matches_numpy_loop_of_the_code():
  got, _, _ = ref.run_family(
    fsam, "sgd", STEPS, use_previous=True, **HYPERPARAMETERS
  )
  want, _ = eref.fsam(
    ref.W0, ref.SGD(0.5), STEPS, use_previous=True, **HYPERPARAMETERS
  )
  ref.assert_history_close(got, want)
  paper, _ = eref.fsam(ref.W0, ref.SGD(0.5), STEPS, **HYPERPARAMETERS)
  assert abs(paper[-1]["b"] - want[-1]["b"]) > 1e-6  # they differ


def test_sigma_zero_is_sam():
  got, _, _ = ref.run_family(fsam, "sgd", STEPS, rho=0.3, sigma=0.0)
  want, _, _ = ref.run_family(
    sam, "sgd", STEPS, rho=0.3, adaptive=False, adaptive_eta=0.01
  )
  ref.assert_history_close(got, want, rtol=1e-6, atol=1e-7)


def test_rho_zero_is_the_base_optimizer_in_one_pass():
  got, passes, _ = ref.run_family(fsam, "sgd", STEPS, rho=0.0, sigma=1.0)
  want, _, _ = ref.base_run("sgd", STEPS)
  ref.assert_history_close(got, want, rtol=1e-6, atol=1e-7)
  assert passes == [1] * STEPS


@pytest.mark.parametrize(
  "kwargs, match",
  [
    ({"rho": -1.0}, "rho=-1.0"),
    ({"sigma": -0.5}, "sigma=-0.5"),
    ({"ema_decay": 1.0}, "ema_decay=1.0"),
  ],
)
def test_bad_hyperparameters_raise_naming_them(kwargs, match):
  with pytest.raises(ValueError, match=match):
    fsam(optax.sgd(0.1), **kwargs)


def test_update_requires_grad_fn():
  tx = fsam(optax.sgd(0.1))
  params = jnp.ones(2)
  with pytest.raises(ValueError, match="fsam needs grad_fn"):
    tx.update(params, tx.init(params), params)
