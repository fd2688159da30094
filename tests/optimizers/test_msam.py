"""MSAM against a NumPy loop of its rule, limiting cases, passes, errors."""

import jax.numpy as jnp
import numpy as np
import optax
import pytest

from graphsam_optax import eval_params
from graphsam_optax import msam
from tests.optimizers import efficient_sam_reference as eref
from tests.optimizers import family_reference as ref

STEPS = 8
RHO = 0.3


# Momentum SGD is the paper's algorithm, Adam the authors' AdamW variant
# (both read the base's first moment); plain SGD has none, so MSAM keeps its
# own moving average.
@pytest.mark.parametrize("base", ["momentum", "adam", "sgd"])
def test_matches_numpy_loop_with_one_pass_per_step(base):
  got, passes, state = ref.run_family(msam, base, STEPS, rho=RHO)
  clean, held, want_passes = eref.msam(ref.W0, ref.BASES[base][1](), STEPS, RHO)
  ref.assert_history_close(got, held)
  assert passes == want_passes == [1] * STEPS
  ref.assert_history_close(
    [eval_params(state, ref.as_jax(got[-1]))], [clean[-1]]
  )
  assert (state.momentum is None) == (base != "sgd")


@pytest.mark.parametrize("base", ["momentum", "adam"])
def test_rho_zero_is_the_base_optimizer(base):
  got, passes, _ = ref.run_family(msam, base, STEPS, rho=0.0)
  want, _, _ = ref.base_run(base, STEPS)
  ref.assert_history_close(got, want, rtol=1e-6, atol=1e-7)
  assert passes == [1] * STEPS


def test_perturbation_is_the_normalized_negative_momentum():
  got, _, state = ref.run_family(msam, "adam", 5, rho=RHO)
  held = ref.as_jax(got[-1])
  clean = eval_params(state, held)
  mu = state.inner_state[0].mu  # optax.adam: (scale_by_adam, scale)
  norm = np.sqrt(sum(np.sum(np.square(v)) for v in mu.values()))
  for k in held:
    np.testing.assert_allclose(
      held[k] - clean[k], -RHO * mu[k] / norm, rtol=1e-5, atol=1e-7
    )


def test_first_step_is_unperturbed_and_grad_fn_is_never_called():
  # The momentum is zero before the first step: the first gradient is at w.
  got, passes, _ = ref.run_family(msam, "adam", 1, rho=RHO)
  want, _, _ = ref.base_run("adam", 1)
  clean, _, _ = eref.msam(ref.W0, ref.Adam(0.05), 1, RHO)
  ref.assert_history_close(clean, want)
  assert passes == [1]


def test_a_base_with_two_first_moments_is_refused():
  tx = msam(optax.chain(optax.trace(0.9), optax.adam(1e-3)))
  with pytest.raises(ValueError, match="found 2 first moments"):
    tx.init({"w": jnp.ones(3)})


def test_update_requires_params():
  tx = msam(optax.adam(0.1))
  params = jnp.ones(2)
  with pytest.raises(ValueError, match="msam needs params"):
    tx.update(params, tx.init(params), None)


@pytest.mark.parametrize(
  "kwargs, match",
  [
    ({"rho": -1.0}, "rho=-1.0"),
    ({"momentum_decay": 1.0}, "momentum_decay=1.0"),
    ({"momentum_decay": -0.1}, "momentum_decay=-0.1"),
  ],
)
def test_bad_hyperparameters_raise_naming_them(kwargs, match):
  with pytest.raises(ValueError, match=match):
    msam(optax.adam(0.1), **kwargs)
