"""The registry: names, defaults, errors, and the contract of every method.

Every name runs in the same loop (``tx.update(grads, state, params,
grad_fn=...)``) on the family's logistic regression with Adam; the contract
checks hold for every name alike, with expectations read from its spec.
"""

import functools
import inspect
import math

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import graphsam_optax
from graphsam_optax import eval_params
from graphsam_optax import get_optimizer
from graphsam_optax import optimizer_names
from graphsam_optax import optimizer_spec
from tests.optimizers import family_reference as ref

NAMES = optimizer_names()
STEPS_PER_EPOCH, STEPS = 5, 10
# Periodic methods recompute every 5 steps, so 10 steps hold whole periods;
# late-phase SAM switches at step 8 of 10, so its mean passes are exact.
PERIOD = {"k": STEPS_PER_EPOCH, "start": 0.8}


def build(name):
  """``name`` with its defaults, Adam, and k set to one epoch where used."""
  spec = optimizer_spec(name)
  period = {k: v for k, v in PERIOD.items() if k in spec.defaults}
  return get_optimizer(
    name,
    optax.adam(0.05),
    steps_per_epoch=STEPS_PER_EPOCH,
    total_steps=STEPS,
    **period,
  )


def test_names():
  assert NAMES == (
    "adam",
    "sam",
    "asam",
    "graphsam",
    "graphsam_authors",
    "sam_k",
    "sam_one",
    "looksam",
    "ae_sam",
    "rst",
    "msam",
    "gsam",
    "fsam",
    "late_sam",
  )


@pytest.mark.parametrize("name", NAMES)
def test_description_names_defaults_and_passes(name):
  spec = optimizer_spec(name)
  text = spec.describe()
  assert text.startswith(f"{name}: ")
  assert spec.passes in text
  for key, value in spec.defaults.items():
    assert f"{key}={value!r}" in text
  for needed in spec.needs:
    assert needed in text


def test_paper_defaults():
  assert optimizer_spec("looksam").defaults == {
    "k": 8,
    "alpha": 0.2,
    "rho": 1e-4,
  }
  assert optimizer_spec("ae_sam").defaults == {
    "rho": 0.05,
    "delta": 0.9,
    "lambda1": -1.0,
    "lambda2": 1.0,
  }
  assert optimizer_spec("rst").defaults["p"] == 0.5
  assert optimizer_spec("msam").defaults == {"rho": 3.0}
  assert optimizer_spec("fsam").defaults == {
    "rho": 0.05,
    "sigma": 1.0,
    "ema_decay": 0.95,
  }
  assert optimizer_spec("gsam").defaults["alpha"] == 0.2
  assert optimizer_spec("late_sam").defaults["start"] == 0.875
  graphsam = optimizer_spec("graphsam").defaults
  assert (graphsam["rho"], graphsam["beta"], graphsam["gamma"]) == (
    0.05,
    0.99,
    0.5,
  )


# The public factories behind each name, whose defaults the registry shares.
FACTORIES = {
  "adam": (),
  "sam": (graphsam_optax.sam,),
  "asam": (graphsam_optax.sam,),
  "graphsam": (graphsam_optax.graphsam, graphsam_optax.rho_decay_schedule),
  "graphsam_authors": (graphsam_optax.graphsam_authors,),
  "sam_k": (graphsam_optax.sam_k,),
  "sam_one": (graphsam_optax.sam_one,),
  "looksam": (graphsam_optax.looksam,),
  "ae_sam": (graphsam_optax.ae_sam,),
  "rst": (graphsam_optax.rst,),
  "msam": (graphsam_optax.msam,),
  "gsam": (graphsam_optax.gsam,),
  "fsam": (graphsam_optax.fsam,),
  "late_sam": (graphsam_optax.late_phase_schedule,),
}


@pytest.mark.parametrize("name", NAMES)
def test_defaults_are_the_factories_defaults(name):
  defaults = optimizer_spec(name).defaults
  for factory in FACTORIES[name]:
    parameters = inspect.signature(factory).parameters
    for key in set(defaults) & set(parameters):
      assert defaults[key] == parameters[key].default, (factory, key)


def test_adam_is_the_base_optimizer_alone_and_base_still_names_it():
  # The name the CLI, the README and the docs use; "base" is its alias.
  assert optimizer_spec("base") is optimizer_spec("adam")
  params = jnp.ones(3)
  grads = jnp.array([0.5, -1.0, 2.0])
  for name in ("adam", "base"):
    tx = get_optimizer(name, optax.adam(0.1))
    got, _ = tx.update(grads, tx.init(params), params)
    want, _ = optax.adam(0.1).update(grads, optax.adam(0.1).init(params))
    np.testing.assert_array_equal(got, want)


def test_unknown_name_raises_listing_the_names():
  with pytest.raises(ValueError, match="name='adamw'.*adam, sam, asam"):
    get_optimizer("adamw", optax.adam(1e-3))


@pytest.mark.parametrize(
  "name, valid", [("adam", r"\(none\)"), ("looksam", "k, alpha, rho")]
)
def test_unknown_hyperparameter_raises_listing_the_valid_ones(name, valid):
  with pytest.raises(
    ValueError, match=f"beta2 for optimizer '{name}'; valid: {valid}"
  ):
    get_optimizer(name, optax.adam(1e-3), steps_per_epoch=5, beta2=0.9)


@pytest.mark.parametrize("name", NAMES)
def test_missing_steps_argument_raises_naming_it(name):
  for needed in optimizer_spec(name).needs:
    given = {"steps_per_epoch": 5, "total_steps": 50}
    given[needed] = None
    with pytest.raises(ValueError, match=f"needs {needed}, got {needed}=None"):
      get_optimizer(name, optax.adam(1e-3), **given)


def test_bad_values_raise_from_the_factories():
  with pytest.raises(ValueError, match="rho=-1.0"):
    get_optimizer("sam", optax.adam(1e-3), rho=-1.0)
  with pytest.raises(ValueError, match="p=2.0"):
    get_optimizer("rst", optax.adam(1e-3), p=2.0)


@pytest.mark.parametrize(
  "name, given, match",
  [
    ("sam_k", {"k": 0}, "k=0"),
    ("sam_one", {"steps_per_epoch": 0}, "steps_per_epoch=0"),
    ("graphsam", {"steps_per_epoch": 0}, "steps_per_epoch=0"),
    ("graphsam_authors", {"steps_per_epoch": 2.5}, "steps_per_epoch=2.5"),
    ("ae_sam", {"total_steps": 0}, "total_steps=0"),
    ("graphsam", {"rho": -1.0}, "rho=-1.0"),
    ("graphsam_authors", {"rho": -1.0}, "rho=-1.0"),
  ],
)
def test_errors_name_the_callers_arguments(name, given, match):
  given = {"steps_per_epoch": 5, "total_steps": 50, **given}
  with pytest.raises(ValueError, match=match) as error:
    get_optimizer(name, optax.adam(1e-3), **given)
  for internal in ("anchor_every", "init_rho", "leaf_radius"):
    assert internal not in str(error.value)


def _floats(name):
  """The float hyperparameters of ``name`` with their defaults."""
  defaults = optimizer_spec(name).defaults
  return {k: v for k, v in defaults.items() if isinstance(v, float)}


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_non_finite_floats_raise_naming_them(name, value):
  for key in _floats(name):
    with pytest.raises(ValueError, match=f"{key}={value!r}"):
      get_optimizer(
        name,
        optax.adam(1e-3),
        steps_per_epoch=5,
        total_steps=50,
        **{key: value},
      )


TRACED_STEPS = 6


def _scan_run(name, hyperparameters):
  """TRACED_STEPS steps of ``name`` (anchors or SAM steps every 3) in a scan."""
  static = {"k": 3} if "k" in optimizer_spec(name).defaults else {}
  tx = get_optimizer(
    name,
    optax.adam(1e-2),
    steps_per_epoch=3,
    total_steps=TRACED_STEPS,
    **static,
    **hyperparameters,
  )

  def step(carry, t):
    params, state = carry
    grad_fn = lambda p: jax.grad(ref.loss)(p, t)
    updates, state = tx.update(grad_fn(params), state, params, grad_fn=grad_fn)
    return (optax.apply_updates(params, updates), state), None

  params = ref.as_jax(ref.W0)
  carry = (params, tx.init(params))
  return jax.lax.scan(step, carry, jnp.arange(TRACED_STEPS))[0]


@pytest.mark.parametrize("name", NAMES)
def test_float_hyperparameters_may_be_traced(name):
  # A training step built inside jax.jit from traced hyperparameters: the
  # same trajectory as the concrete build, and one compilation for any value.
  floats = _floats(name)
  traces = []

  @jax.jit
  def traced(hyperparameters):
    traces.append(1)
    return _scan_run(name, hyperparameters)

  as_arrays = lambda scale: {
    k: jnp.float32(v * scale) for k, v in floats.items()
  }
  got = traced(as_arrays(1.0))
  want = jax.jit(lambda: _scan_run(name, floats))()
  jax.tree.map(
    lambda g, w: np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-7),
    got,
    want,
  )
  other = traced(as_arrays(0.9))
  assert len(traces) == 1 and traced._cache_size() == 1
  if floats:
    assert not np.allclose(other[0]["w"], got[0]["w"])


def _sam_run(steps_per_epoch, rho, gamma):
  """SAM from the registry, traced rho and gamma, 12 steps on the family's
  problem (as train.py builds it: every float an array in the step)."""

  @jax.jit
  def run(rho, gamma):
    extra = {} if steps_per_epoch is None else {"gamma": gamma}
    tx = get_optimizer(
      "sam",
      optax.sgd(0.5),
      steps_per_epoch=steps_per_epoch,
      rho=rho,
      **extra,
    )
    grad_fn = jax.grad(lambda p: ref.loss(p, 0))

    def step(carry, _):
      params, state = carry
      updates, state = tx.update(
        grad_fn(params), state, params, grad_fn=grad_fn
      )
      return (optax.apply_updates(params, updates), state), None

    params = ref.as_jax(ref.W0)
    return jax.lax.scan(step, (params, tx.init(params)), None, length=12)[0]

  return run(jnp.float32(rho), jnp.float32(gamma))[0]


def test_sam_with_gamma_one_is_bit_identical_to_constant_rho():
  constant = _sam_run(None, 0.05, 1.0)
  kept = _sam_run(4, 0.05, 1.0)
  jax.tree.map(
    lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
    constant,
    kept,
  )


def test_sam_with_gamma_follows_graphsams_rho_schedule():
  # rho_e = 0.05 * 0.5^e with 4 steps per epoch: the same run as SAM given
  # that staircase as a schedule, and not the constant-rho run.
  got = _sam_run(4, 0.05, 0.5)
  schedule = lambda count: 0.05 * 0.5 ** jnp.floor(count / 4)
  tx = get_optimizer("sam", optax.sgd(0.5), rho=schedule)
  grad_fn = jax.grad(lambda p: ref.loss(p, 0))
  params = ref.as_jax(ref.W0)
  state = tx.init(params)
  for _ in range(12):
    updates, state = tx.update(grad_fn(params), state, params, grad_fn=grad_fn)
    params = optax.apply_updates(params, updates)
  jax.tree.map(
    lambda g, w: np.testing.assert_allclose(g, w, rtol=1e-6), got, params
  )
  constant = _sam_run(None, 0.05, 1.0)
  assert not np.allclose(constant["w"], got["w"], rtol=1e-6)


def test_sam_with_gamma_needs_steps_per_epoch():
  with pytest.raises(ValueError, match="gamma=0.5 needs steps_per_epoch"):
    get_optimizer("sam", optax.adam(1e-3), gamma=0.5)
  assert optimizer_spec("sam").optional_needs == ("steps_per_epoch",)


def test_learning_rate_is_an_optional_need_of_gsam_only():
  assert optimizer_spec("gsam").optional_needs == (
    "learning_rate",
    "total_steps",
  )
  for name in NAMES:
    if name != "gsam":
      assert "learning_rate" not in optimizer_spec(name).optional_needs
  # Others ignore it.
  get_optimizer(
    "sam", optax.adam(1e-3), learning_rate=optax.constant_schedule(1.0)
  )


def test_rho_schedule_is_used_as_is_by_graphsam():
  tx = get_optimizer(
    "graphsam", optax.adam(1e-3), steps_per_epoch=5, rho=lambda count: 0.125
  )
  assert float(tx.init(jnp.ones(2)).rho) == 0.125


def _finite(tree):
  return all(
    np.all(np.isfinite(np.asarray(leaf, np.float32)))
    for leaf in jax.tree.leaves(tree)
  )


@functools.cache
def trained(name):
  """Each name's transformation and its run (compiled once per name)."""
  tx = build(name)
  return (tx, *ref.run(tx, STEPS))


@pytest.mark.parametrize("name", NAMES)
def test_uniform_loop_counts_the_passes_the_spec_states(name):
  spec = optimizer_spec(name)
  _, history, passes, state = trained(name)
  assert set(passes) <= ({1, 2} if spec.uses_grad_fn else {1})
  mean = spec.mean_passes({**spec.defaults, **PERIOD}, STEPS_PER_EPOCH)
  if hasattr(state, "sam_steps"):  # random or data-dependent SAM steps
    assert sum(passes) == STEPS + int(state.sam_steps)
  else:
    assert sum(passes) == pytest.approx(mean * STEPS)
  assert _finite((eval_params(state, history[-1]), state))


@pytest.mark.parametrize("name", NAMES)
def test_state_survives_a_msgpack_round_trip_mid_training(name):
  # As a checkpoint does: the state after STEPS steps is written to bytes
  # and read back into a fresh state's structure (every leaf must be an
  # array msgpack can hold: no Python scalars, keys or callables); training
  # then continues bit for bit as from the state itself.
  tx, history, _, state = trained(name)
  fresh = tx.init(ref.as_jax(ref.W0))
  restored = flax.serialization.from_bytes(
    fresh, flax.serialization.to_bytes(state)
  )
  assert jax.tree.structure(restored) == jax.tree.structure(state)
  params = ref.as_jax(history[-1])
  for step in range(STEPS, STEPS + 3):
    # (scale passed, as the run passes it: a default would recompile)
    original = ref.jitted_train_step(tx, params, state, step, 1.0)
    again = ref.jitted_train_step(tx, params, restored, step, 1.0)
    jax.tree.map(np.testing.assert_array_equal, again, original)
    params, state = original[0], original[1]
    restored = again[1]


@pytest.mark.parametrize("name", NAMES)
def test_zero_gradients_give_no_nan_and_no_motion(name):
  tx = trained(name)[0]
  history, _, state = ref.run(tx, 4, scale=0.0)  # same compilation
  assert _finite((history, state))
  jax.tree.map(np.testing.assert_array_equal, history[-1], ref.as_jax(ref.W0))


# The dtype paths of the efficient-SAM family: ASAM's weight scaling (SAM's
# and RST's ascent is a part of it), LookSAM's stored direction, AE-SAM's
# float32 statistics. GraphSAM's variants: test_graphsam.py.
BFLOAT16_PATHS = ("asam", "looksam", "ae_sam")


@pytest.mark.parametrize("name", BFLOAT16_PATHS)
def test_bfloat16_inside_chain_after_clipping(name):
  tx = optax.chain(optax.clip_by_global_norm(1.0), build(name))
  history, passes, state = ref.run(tx, 6, dtype=jnp.bfloat16)
  init_state = tx.init(ref.as_jax(ref.W0, jnp.bfloat16))
  dtypes = lambda tree: jax.tree.map(lambda x: x.dtype, tree)
  assert dtypes(state) == dtypes(init_state)
  assert all(leaf.dtype == jnp.bfloat16 for leaf in jax.tree.leaves(history))
  assert _finite((history, state))
  assert set(passes) <= {1, 2}


def test_chain_forwards_grad_fn_and_extra_args():
  # A clip that never binds leaves the trajectory unchanged; LookSAM calls
  # grad_fn on some steps only, so the count shows it is forwarded.
  tx, want, want_passes, _ = trained("looksam")
  got, got_passes, _ = ref.run(
    optax.chain(optax.clip_by_global_norm(1e9), tx), STEPS
  )
  ref.assert_history_close(got, want, rtol=1e-6, atol=1e-7)
  assert got_passes == want_passes == [2, 1, 1, 1, 1] * 2
