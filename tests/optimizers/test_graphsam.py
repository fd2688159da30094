"""GraphSAM against NumPy loops of its definition; limits and contract."""

import functools
import math
from typing import Any
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import graphsam_optax
from tests.optimizers import graphsam_reference as ref

N_BATCHES, BATCH, DIM = 5, 8, 6
EPOCHS = 3
STEPS = EPOCHS * N_BATCHES
L2 = 0.01


def _data():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(N_BATCHES, BATCH, DIM))
  true_w = rng.normal(size=DIM)
  logits = x @ true_w + 0.3 * rng.normal(size=(N_BATCHES, BATCH))
  y = (logits > 0).astype(np.float64)
  w0 = {"w": rng.normal(size=DIM) * 0.5, "b": np.array(0.3)}
  return x, y, w0


X, Y, W0 = _data()
X_JAX, Y_JAX = jnp.asarray(X, jnp.float32), jnp.asarray(Y, jnp.float32)


def numpy_grad(w, t):
  """Gradient of step t's minibatch logistic loss (+ L2) at w, float64."""
  x, y = X[t % N_BATCHES], Y[t % N_BATCHES]
  p = 1 / (1 + np.exp(-(x @ w["w"] + w["b"])))
  return {"w": x.T @ (p - y) / BATCH + L2 * w["w"], "b": np.mean(p - y)}


def numpy_loss(w, t):
  """Step t's minibatch loss at w, float64 (the value numpy_grad derives)."""
  x, y = X[t % N_BATCHES], Y[t % N_BATCHES]
  z = x @ w["w"] + w["b"]
  bce = np.mean(np.logaddexp(0, z) - y * z)
  return bce + 0.5 * L2 * np.sum(w["w"] ** 2)


def loss(params, t):
  x, y = X_JAX[t % N_BATCHES], Y_JAX[t % N_BATCHES]
  logits = x @ params["w"] + params["b"]
  bce = optax.sigmoid_binary_cross_entropy(logits, y).mean()
  return bce + 0.5 * L2 * jnp.sum(params["w"] ** 2)


def as_jax(tree, dtype=jnp.float32):
  return jax.tree.map(lambda v: jnp.asarray(v, dtype), tree)


def run(tx, steps=STEPS, *, with_grad_fn=True, jit=True, step=None):
  """Trains with `tx` in the ordinary optax loop; clean weights per step.

  ``step(params, state, t)``, when given, replaces the loop's own step.
  """

  def ordinary_step(params, state, t):
    grads = jax.grad(loss)(params, t)
    grad_fn = functools.partial(jax.grad(loss), t=t) if with_grad_fn else None
    updates, state = tx.update(grads, state, params, grad_fn=grad_fn)
    return optax.apply_updates(params, updates), state

  step = step or ordinary_step
  if jit:
    step = jax.jit(step)
  params = as_jax(W0)
  state = tx.init(params)
  history = []
  for t in range(steps):
    params, state = step(params, state, t)
    history.append(graphsam_optax.eval_params(state, params))
  return history


def assert_history_close(got, want, rtol=1e-4, atol=1e-5):
  assert len(got) == len(want)
  for t, (g, w) in enumerate(zip(got, want, strict=True)):
    for k in w:
      np.testing.assert_allclose(
        np.asarray(g[k]), w[k], rtol=rtol, atol=atol, err_msg=f"step {t} {k}"
      )


BASES = {
  "sgd": (lambda: optax.sgd(0.5), lambda: ref.SGD(0.5)),
  "adam": (lambda: optax.adam(0.05), lambda: ref.Adam(0.05)),
}


@pytest.mark.parametrize("base", sorted(BASES))
@pytest.mark.parametrize("with_grad_fn", [True, False])
def test_rho_zero_is_the_inner_optimizer(base, with_grad_fn):
  make_optax, _ = BASES[base]
  got = run(
    graphsam_optax.graphsam(make_optax(), anchor_every=4, rho=0.0),
    steps=50,
    with_grad_fn=with_grad_fn,
  )
  want = run(optax.with_extra_args_support(make_optax()), steps=50)
  assert_history_close(got, [jax.tree.map(np.asarray, w) for w in want], 1e-6)


@pytest.mark.parametrize("base", sorted(BASES))
@pytest.mark.parametrize("normalize_anchor", [True, False])
@pytest.mark.parametrize("with_grad_fn", [True, False])
def test_matches_numpy_loop_of_the_paper(base, normalize_anchor, with_grad_fn):
  make_optax, make_ref = BASES[base]
  rho = graphsam_optax.rho_decay_schedule(0.3, 0.5, steps_per_epoch=N_BATCHES)
  tx = graphsam_optax.graphsam(
    make_optax(),
    anchor_every=N_BATCHES,
    rho=rho,
    beta=0.9,
    normalize_anchor=normalize_anchor,
  )
  want = ref.graphsam_paper(
    W0,
    numpy_grad,
    make_ref(),
    STEPS,
    N_BATCHES,
    lambda t: 0.3 * 0.5 ** (t // N_BATCHES),
    0.9,
    normalize_anchor=normalize_anchor,
    second=with_grad_fn,
  )
  assert_history_close(run(tx, with_grad_fn=with_grad_fn), want)


def test_normalize_anchor_changes_the_trajectory():
  # Guards the two references against being the same loop: the raw anchor
  # gradient enters the EMA with its own scale.
  kwargs = dict(anchor_every=N_BATCHES, rho=0.3, beta=0.9)
  normalized = run(graphsam_optax.graphsam(optax.sgd(0.5), **kwargs))
  raw = run(
    graphsam_optax.graphsam(optax.sgd(0.5), normalize_anchor=False, **kwargs)
  )
  assert not np.allclose(normalized[-1]["w"], raw[-1]["w"], atol=1e-4)


@pytest.mark.parametrize("base", sorted(BASES))
def test_anchoring_every_step_with_grad_fn_is_sam(base):
  make_optax, make_ref = BASES[base]
  tx = graphsam_optax.graphsam(make_optax(), anchor_every=1, rho=0.2)
  want = ref.sam(W0, numpy_grad, make_ref(), STEPS, 0.2)
  assert_history_close(run(tx), want)


def compounding(init):
  """The authors' compounding decay (gamma 0.5, one epoch), as rho(t)."""
  return lambda t: init * 0.5 ** ((t // N_BATCHES) * (t // N_BATCHES + 1) / 2)


def authors_preset(make_optax):
  # rho and the clip radius differ, so that each is checked in its place.
  return graphsam_optax.graphsam_authors(
    make_optax(), steps_per_epoch=N_BATCHES, rho=0.3, beta=0.9, radius=0.2
  )


@pytest.mark.parametrize("base", sorted(BASES))
def test_authors_preset_matches_numpy_loop_of_their_code(base):
  make_optax, make_ref = BASES[base]
  want = ref.graphsam_authors_code(
    W0,
    numpy_grad,
    make_ref(),
    STEPS,
    N_BATCHES,
    compounding(0.3),
    0.9,
    compounding(0.2),
  )
  assert_history_close(run(authors_preset(make_optax)), want)


def test_authors_loss_seeded_passes_are_the_documented_losses():
  # The authors seed every pass at a perturbed point with the loss value
  # (L grad L = grad of L^2 / 2) and keep the anchor's own pass plain: the
  # caller differentiates L there and L^2 / 2 everywhere else.
  tx = authors_preset(BASES["adam"][0])
  seeded = lambda params, t: 0.5 * loss(params, t) ** 2

  def step(params, state, t):
    anchor = state.count % N_BATCHES == 0
    grads = jax.lax.cond(anchor, jax.grad(loss), jax.grad(seeded), params, t)
    grad_fn = functools.partial(jax.grad(seeded), t=t)
    updates, state = tx.update(grads, state, params, grad_fn=grad_fn)
    return optax.apply_updates(params, updates), state

  got = run(tx, step=step)
  args = (W0, numpy_grad, BASES["adam"][1](), STEPS, N_BATCHES)
  rates = (compounding(0.3), 0.9, compounding(0.2))
  want = ref.graphsam_authors_code(*args, *rates, loss=numpy_loss)
  assert_history_close(got, want)
  unseeded = ref.graphsam_authors_code(*args, *rates)
  assert not np.allclose(want[-1]["w"], unseeded[-1]["w"], atol=1e-3)


@pytest.mark.parametrize("base", sorted(BASES))
def test_long_run_with_anchors_matches_numpy_loop(base):
  # 200 steps, 40 anchors: the perturbation rebuilt from the moving average
  # and a scalar keeps the paper's trajectory over a long run.
  make_optax, make_ref = BASES[base]
  steps = 200
  tx = graphsam_optax.graphsam(
    make_optax(), anchor_every=N_BATCHES, rho=0.1, beta=0.9
  )
  want = ref.graphsam_paper(
    W0,
    numpy_grad,
    make_ref(),
    steps,
    N_BATCHES,
    lambda t: 0.1,
    0.9,
    normalize_anchor=True,
    second=True,
  )
  assert_history_close(run(tx, steps=steps), want)


@pytest.mark.parametrize(
  "options, trees, scalars",
  [
    ({}, 1, 3),  # ema; count, rho, scale
    ({"adaptive": True}, 2, 2),  # ema, perturbation; count, rho
    ({"per_leaf": True}, 2, 2),
  ],
)
def test_state_holds_the_inner_state_and_one_tree_in_the_default_mode(
  options, trees, scalars
):
  params = as_jax(W0)
  inner = optax.adam(0.1)
  size = lambda tree: sum(np.size(leaf) for leaf in jax.tree.leaves(tree))
  state = graphsam_optax.graphsam(inner, anchor_every=3, **options).init(params)
  extra = size(state) - size(inner.init(params))
  assert extra == trees * size(params) + scalars


def test_sam_k_and_sam_one_are_graphsam_with_beta_one():
  k = 3
  sam_k = run(graphsam_optax.sam_k(optax.sgd(0.5), k=k, rho=0.2))
  by_hand = ref.graphsam_paper(
    W0,
    numpy_grad,
    ref.SGD(0.5),
    STEPS,
    k,
    lambda t: 0.2,
    1.0,
    normalize_anchor=True,
    second=True,
  )
  assert_history_close(sam_k, by_hand)
  sam_one = run(graphsam_optax.sam_one(optax.sgd(0.5), N_BATCHES, rho=0.2))
  graphsam = run(
    graphsam_optax.graphsam(
      optax.sgd(0.5), anchor_every=N_BATCHES, rho=0.2, beta=1.0
    )
  )
  assert_history_close(sam_one, [jax.tree.map(np.asarray, w) for w in graphsam])


def test_jit_and_no_jit_agree():
  tx = graphsam_optax.graphsam(optax.adam(0.05), anchor_every=4, rho=0.1)
  jitted = run(tx, steps=9)
  eager = run(tx, steps=9, jit=False)
  assert_history_close(jitted, [jax.tree.map(np.asarray, w) for w in eager])


def test_inside_chain_after_clipping():
  # Global clipping keeps directions, so clipping before GraphSAM equals
  # clipping the updating gradient inside it (without grad_fn, where every
  # gradient passes through the chain).
  outer = optax.chain(
    optax.clip_by_global_norm(0.1),
    graphsam_optax.graphsam(optax.sgd(0.5), anchor_every=4, rho=0.1),
  )
  inner = graphsam_optax.graphsam(
    optax.chain(optax.clip_by_global_norm(0.1), optax.sgd(0.5)),
    anchor_every=4,
    rho=0.1,
  )
  got = run(outer, with_grad_fn=False)
  want = run(inner, with_grad_fn=False)
  assert_history_close(got, [jax.tree.map(np.asarray, w) for w in want])
  unclipped = run(
    graphsam_optax.graphsam(optax.sgd(0.5), anchor_every=4, rho=0.1),
    with_grad_fn=False,
  )
  assert not np.allclose(got[-1]["w"], unclipped[-1]["w"], atol=1e-4)


@pytest.mark.parametrize("per_leaf", [False, True])
@pytest.mark.parametrize("adaptive", [False, True])
def test_zero_gradients_give_no_nan(per_leaf, adaptive):
  tx = graphsam_optax.graphsam(
    optax.adam(0.1),
    anchor_every=2,
    rho=0.1,
    per_leaf=per_leaf,
    adaptive=adaptive,
  )
  params = {"a": jnp.zeros(3), "b": jnp.ones((2, 2))}
  state = tx.init(params)
  zeros = jax.tree.map(jnp.zeros_like, params)
  for _ in range(5):
    updates, state = tx.update(
      zeros, state, params, grad_fn=lambda p: jax.tree.map(jnp.zeros_like, p)
    )
    params = optax.apply_updates(params, updates)
  for leaf in jax.tree.leaves((params, state)):
    assert np.all(np.isfinite(np.asarray(leaf, np.float32)))


def test_bfloat16_params_keep_their_dtype():
  tx = graphsam_optax.graphsam(optax.adam(0.05), anchor_every=3, rho=0.1)
  params = as_jax(W0, jnp.bfloat16)
  state = tx.init(params)
  step = jax.jit(
    lambda p, s, t: tx.update(
      jax.grad(loss)(p, t), s, p, grad_fn=functools.partial(jax.grad(loss), t=t)
    )
  )
  for t in range(4):
    updates, state = step(params, state, t)
    params = optax.apply_updates(params, updates)
  for leaf in jax.tree.leaves((params, state.ema, state.perturbation)):
    assert leaf.dtype == jnp.bfloat16


@pytest.mark.parametrize(
  "kwargs, name",
  [
    ({"rho": -0.1}, "rho=-0.1"),
    ({"beta": 1.5}, "beta=1.5"),
    ({"beta": -0.1}, "beta=-0.1"),
    ({"anchor_every": 0}, "anchor_every=0"),
    ({"anchor_every": 2.5}, "anchor_every=2.5"),
    ({"adaptive_eta": -1.0}, "adaptive_eta=-1.0"),
    ({"rho": math.nan}, "rho=nan"),
    ({"rho": math.inf}, "rho=inf"),
    ({"beta": math.nan}, "beta=nan"),
    ({"adaptive_eta": math.inf}, "adaptive_eta=inf"),
    ({"per_leaf": True, "leaf_radius": -1.0}, "leaf_radius=-1.0"),
    ({"leaf_radius": 0.1}, "leaf_radius=0.1 is the per-tensor radius"),
  ],
)
def test_bad_hyperparameters_raise_naming_them(kwargs, name):
  kwargs = {"anchor_every": 4, **kwargs}
  with pytest.raises(ValueError, match=name):
    graphsam_optax.graphsam(optax.sgd(0.1), **kwargs)


@pytest.mark.parametrize(
  "kwargs, name",
  [
    ({"init_rho": -1.0}, "init_rho=-1.0"),
    ({"gamma": 0.0}, "gamma=0.0"),
    ({"decay_epochs": 0}, "decay_epochs=0"),
    ({"steps_per_epoch": 0}, "steps_per_epoch=0"),
    ({"init_rho": math.nan}, "init_rho=nan"),
    ({"init_rho": math.inf}, "init_rho=inf"),
    ({"gamma": math.nan}, "gamma=nan"),
  ],
)
@pytest.mark.parametrize(
  "schedule",
  [graphsam_optax.rho_decay_schedule, graphsam_optax.compounding_rho_schedule],
)
def test_bad_schedule_arguments_raise_naming_them(schedule, kwargs, name):
  kwargs = {"steps_per_epoch": 10, **kwargs}
  with pytest.raises(ValueError, match=name):
    schedule(**kwargs)


@pytest.mark.parametrize(
  "factory, kwargs, name",
  [
    (graphsam_optax.sam_k, {"k": 0}, "k=0"),
    (graphsam_optax.sam_k, {"k": 2.5}, "k=2.5"),
    (graphsam_optax.sam_one, {"steps_per_epoch": 0}, "steps_per_epoch=0"),
    (
      graphsam_optax.graphsam_authors,
      {"steps_per_epoch": 0},
      "steps_per_epoch",
    ),
    (graphsam_optax.graphsam_authors, {"rho": math.nan}, "rho=nan"),
    (graphsam_optax.graphsam_authors, {"radius": -1.0}, "radius=-1.0"),
  ],
)
def test_variants_raise_naming_the_callers_argument(factory, kwargs, name):
  if factory is graphsam_optax.graphsam_authors:
    kwargs = {"steps_per_epoch": 5, **kwargs}
  with pytest.raises(ValueError, match=name) as error:
    factory(optax.sgd(0.1), **kwargs)
  for internal in ("anchor_every", "init_rho", "leaf_radius"):
    assert internal not in str(error.value)


def test_update_without_params_raises():
  tx = graphsam_optax.graphsam(optax.sgd(0.1), anchor_every=2)
  params = jnp.ones(2)
  with pytest.raises(ValueError, match="params"):
    tx.update(params, tx.init(params))


class ForeignState(NamedTuple):
  """Another library's state that happens to have a `perturbation` field."""

  perturbation: Any


def test_eval_params_removes_only_graphsams_perturbation():
  params = jnp.ones(2)
  state = (optax.sgd(0.1).init(params), ForeignState(jnp.full(2, 0.5)))
  np.testing.assert_array_equal(
    graphsam_optax.eval_params(state, params), params
  )
  with pytest.raises(ValueError, match="graphsam"):
    graphsam_optax.graphsam_eval_params(state, params)


def test_schedules_follow_their_formulas():
  spe = 7
  paper = graphsam_optax.rho_decay_schedule(0.05, 0.5, 2, steps_per_epoch=spe)
  compounding = graphsam_optax.compounding_rho_schedule(
    0.05, 0.5, 2, steps_per_epoch=spe
  )
  for step in range(0, 12 * spe, 3):
    epoch = step // spe
    m = epoch // 2
    np.testing.assert_allclose(paper(step), 0.05 * 0.5**m, rtol=1e-6)
    np.testing.assert_allclose(
      compounding(step), 0.05 * 0.5 ** (m * (m + 1) / 2), rtol=1e-6
    )


@pytest.mark.parametrize(
  "schedule, exponent",
  [
    (graphsam_optax.rho_decay_schedule, lambda m: m),
    (graphsam_optax.compounding_rho_schedule, lambda m: m * (m + 1) / 2),
  ],
)
def test_schedules_take_traced_arguments_and_compute_in_x64(schedule, exponent):
  def value(init_rho, gamma, count):
    return schedule(init_rho, gamma, steps_per_epoch=10)(count)

  count = jnp.asarray(35, jnp.int32)  # the optimizer state's count dtype
  traced = jax.jit(value)(jnp.float32(0.05), jnp.float32(0.3), count)
  np.testing.assert_allclose(traced, 0.05 * 0.3 ** exponent(3), rtol=1e-6)
  with jax.enable_x64(True):
    exact = value(0.05, 0.3, count)
  assert exact.dtype == jnp.float64
  assert float(exact) == pytest.approx(0.05 * 0.3 ** exponent(3), rel=1e-13)


@pytest.mark.parametrize("with_grad_fn", [True, False])
def test_gradient_passes_per_step(with_grad_fn):
  """One pass on ordinary steps, two on anchor steps when grad_fn is given."""
  calls = []
  anchor_every = 4
  tx = graphsam_optax.graphsam(
    optax.adam(0.05), anchor_every=anchor_every, rho=0.1
  )

  def counted_grad_fn(params, t):
    jax.debug.callback(lambda: calls.append(1))
    return jax.grad(loss)(params, t)

  @jax.jit
  def step(params, state, t):
    grads = jax.grad(loss)(params, t)
    grad_fn = functools.partial(counted_grad_fn, t=t) if with_grad_fn else None
    updates, state = tx.update(grads, state, params, grad_fn=grad_fn)
    return optax.apply_updates(params, updates), state

  params = as_jax(W0)
  state = tx.init(params)
  extra_passes = []
  for t in range(10):
    before = len(calls)
    params, state = step(params, state, t)
    jax.effects_barrier()
    extra_passes.append(len(calls) - before)
  anchors = [int(t % anchor_every == 0 and with_grad_fn) for t in range(10)]
  assert extra_passes == anchors
