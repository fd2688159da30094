"""RST against a NumPy loop of its rule, limiting cases, passes, errors."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from graphsam_optax import rst
from graphsam_optax import sam
from tests.optimizers import family_reference as ref

# SGD hands the rule's direction d_t to the weights unscaled: the strictest
# check, and one compilation per test; test_registry.py runs Adam.
BASES = ["sgd"]

STEPS = 12


def bernoulli_trials(seed, p, steps):
  """The documented stream: the state's key is split once per step."""
  key, outcomes = jax.random.PRNGKey(seed), []
  for _ in range(steps):
    key, trial = jax.random.split(key)
    outcomes.append(bool(jax.random.uniform(trial) < p))
  return outcomes


@pytest.mark.parametrize("base", BASES)
def test_matches_numpy_loop_with_the_drawn_outcomes(base):
  got, passes, state = ref.run_family(rst, base, STEPS, p=0.5, rho=0.3, seed=1)
  outcomes = bernoulli_trials(1, 0.5, STEPS)
  assert 0 < sum(outcomes) < STEPS  # both outcomes occur
  want, want_passes = ref.rst(ref.W0, ref.BASES[base][1](), outcomes, 0.3)
  ref.assert_history_close(got, want)
  assert passes == want_passes
  assert int(state.sam_steps) == sum(outcomes)


@pytest.mark.parametrize("base", BASES)
def test_p_one_is_sam_and_p_zero_the_base_optimizer(base):
  got, passes, _ = ref.run_family(rst, base, 6, p=1.0, rho=0.3, seed=0)
  want, _, _ = ref.run_family(
    sam, base, 6, rho=0.3, adaptive=False, adaptive_eta=0.05
  )
  ref.assert_history_close(got, want, rtol=1e-6, atol=1e-7)
  assert passes == [2] * 6
  got, passes, state = ref.run_family(rst, base, 6, p=0.0, rho=0.3, seed=0)
  want, _, _ = ref.base_run(base, 6)
  ref.assert_history_close(got, want, rtol=1e-6, atol=1e-7)
  assert passes == [1] * 6
  assert int(state.sam_steps) == 0


@pytest.mark.parametrize("base", BASES)
def test_rho_zero_is_the_base_optimizer(base):
  got, passes, _ = ref.run_family(rst, base, 6, p=1.0, rho=0.0, seed=0)
  want, _, _ = ref.base_run(base, 6)
  ref.assert_history_close(got, want, rtol=1e-6, atol=1e-7)
  assert passes == [2] * 6


def test_p_schedule_is_evaluated_on_the_count():
  p = optax.join_schedules(
    [optax.constant_schedule(0.0), optax.constant_schedule(1.0)], [3]
  )
  _, passes, _ = ref.run_family(rst, "sgd", 6, p=p, rho=0.3, seed=0)
  assert passes == [1, 1, 1, 2, 2, 2]


def test_frequency_of_sam_steps_and_seeds():
  runs = {
    seed: ref.run_family(rst, "sgd", 100, p=0.3, rho=0.3, seed=seed)
    for seed in (0, 1)
  }
  for _, passes, state in runs.values():
    assert 15 <= int(state.sam_steps) <= 45  # Binomial(100, 0.3): 30 +- 4.6
    assert passes.count(2) == int(state.sam_steps)
  assert runs[0][1] != runs[1][1]
  again = ref.run_family(rst, "sgd", 100, p=0.3, rho=0.3, seed=0)
  assert again[1] == runs[0][1]
  np.testing.assert_array_equal(again[2].key, runs[0][2].key)


def test_jit_and_no_jit_agree():
  jitted, jitted_passes, _ = ref.run_family(
    rst, "sgd", 4, p=0.5, rho=0.3, seed=1
  )
  with jax.disable_jit():
    eager, eager_passes, _ = ref.run(
      rst(optax.sgd(0.5), p=0.5, rho=0.3, seed=1), 4, jit=False
    )
  ref.assert_history_close(eager, jitted, rtol=1e-6, atol=1e-7)
  assert eager_passes == jitted_passes == [2, 1, 1, 1]


def test_update_requires_params_and_grad_fn():
  tx = rst(optax.sgd(0.1))
  params = jnp.ones(2)
  state = tx.init(params)
  with pytest.raises(ValueError, match="rst needs params"):
    tx.update(params, state, None, grad_fn=lambda p: p)
  with pytest.raises(ValueError, match="rst needs grad_fn"):
    tx.update(params, state, params)


@pytest.mark.parametrize(
  "kwargs, match",
  [
    ({"p": 1.5}, "p=1.5"),
    ({"p": -0.1}, "p=-0.1"),
    ({"rho": -1.0}, "rho=-1.0"),
    ({"seed": 1.5}, "seed=1.5"),
    ({"seed": True}, "seed=True"),
  ],
)
def test_bad_hyperparameters_raise_naming_them(kwargs, match):
  with pytest.raises(ValueError, match=match):
    rst(optax.sgd(0.1), **kwargs)
