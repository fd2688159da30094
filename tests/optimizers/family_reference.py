"""Plain NumPy loops of the efficient-SAM family, and the problem they run on.

The loops are written from the published rules (reference notes §6), in
float64 with parameters as dicts of arrays; each returns the weights after
every step and the number of gradient passes each step took. The same problem
is defined in JAX (float32) with a training loop that counts the calls of
``grad_fn``, so the tests compare trajectories and costs step by step.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from tests.optimizers.graphsam_reference import SGD
from tests.optimizers.graphsam_reference import Adam
from tests.optimizers.graphsam_reference import MomentumSGD
from tests.optimizers.graphsam_reference import add
from tests.optimizers.graphsam_reference import global_norm
from tests.optimizers.graphsam_reference import normalized
from tests.optimizers.graphsam_reference import scaled

# A logistic regression with an L2 term on fixed minibatches; step t uses
# minibatch t % N_BATCHES. The batches differ in size of gradient, so AE-SAM's
# threshold is crossed in both directions.
N_BATCHES, BATCH, DIM = 5, 8, 6
L2 = 0.01


def _data():
  rng = np.random.default_rng(3)
  x = rng.normal(size=(N_BATCHES, BATCH, DIM))
  x *= np.linspace(0.5, 2.0, N_BATCHES)[:, None, None]
  true_w = rng.normal(size=DIM)
  logits = x @ true_w + rng.normal(size=(N_BATCHES, BATCH))
  y = (logits > 0).astype(np.float64)
  w0 = {"w": rng.normal(size=DIM) * 0.5, "b": np.array(0.3)}
  return x, y, w0


X, Y, W0 = _data()


def numpy_grad(w, t):
  """Gradient of step t's minibatch loss at w, float64."""
  x, y = X[t % N_BATCHES], Y[t % N_BATCHES]
  p = 1 / (1 + np.exp(-(x @ w["w"] + w["b"])))
  return {"w": x.T @ (p - y) / BATCH + L2 * w["w"], "b": np.mean(p - y)}


def vdot(a, b):
  return sum(np.sum(a[k] * b[k]) for k in a)


def at(hyperparameter, t):
  """A float, or a function of the step evaluated at step t."""
  return hyperparameter(t) if callable(hyperparameter) else hyperparameter


# The published rules.


def sam(w, base, steps, rho, *, adaptive=False, eta=0.01):
  """SAM, eps = rho g/||g||; ASAM, eps = rho T^2 g/||T g||, T = |w| + eta."""
  history = []
  for t in range(steps):
    g = numpy_grad(w, t)
    if adaptive:
      scale = {k: np.abs(v) + eta for k, v in w.items()}
      tg = {k: scale[k] * g[k] for k in g}
      eps = {k: at(rho, t) * scale[k] * tg[k] / global_norm(tg) for k in g}
    else:
      eps = scaled(normalized(g), at(rho, t))
    w = base.step(w, numpy_grad(add(w, eps), t))
    history.append(w)
  return history, [2] * steps


def looksam(w, base, steps, k, alpha, rho):
  """LookSAM: every k steps g_s and g_v = g_s - ||g_s|| cos(g, g_s) g/||g||;
  other steps g + alpha ||g||/||g_v|| g_v."""
  history, passes, g_v = [], [], None
  for t in range(steps):
    g = numpy_grad(w, t)
    if t % k == 0:
      g_s = numpy_grad(add(w, normalized(g), at(rho, t)), t)
      cos = vdot(g, g_s) / (global_norm(g) * global_norm(g_s))
      g_v = add(g_s, normalized(g), -global_norm(g_s) * cos)
      d, n = g_s, 2
    else:
      d, n = add(g, g_v, alpha * global_norm(g) / global_norm(g_v)), 1
    w = base.step(w, d)
    history.append(w)
    passes.append(n)
  return history, passes


def ae_sam(w, base, steps, total_steps, rho, delta, lambda1, lambda2):
  """AE-SAM with mu, var starting at 0 and n_t entering them first."""
  history, passes, mean, var = [], [], 0.0, 0.0
  for t in range(steps):
    g = numpy_grad(w, t)
    n = global_norm(g) ** 2
    mean = delta * mean + (1 - delta) * n
    var = delta * var + (1 - delta) * (n - mean) ** 2
    c = lambda1 + (lambda2 - lambda1) * min(t / total_steps, 1.0)
    if n >= mean + c * np.sqrt(var):
      d, k = numpy_grad(add(w, normalized(g), at(rho, t)), t), 2
    else:
      d, k = g, 1
    w = base.step(w, d)
    history.append(w)
    passes.append(k)
  return history, passes


def rst(w, base, is_sam, rho):
  """RST with the outcomes of the Bernoulli trials given."""
  history = []
  for t, take_sam in enumerate(is_sam):
    g = numpy_grad(w, t)
    d = numpy_grad(add(w, normalized(g), at(rho, t)), t) if take_sam else g
    w = base.step(w, d)
    history.append(w)
  return history, [2 if s else 1 for s in is_sam]


# The same problem in JAX, and the training loop of the calling convention.

X_JAX, Y_JAX = jnp.asarray(X, jnp.float32), jnp.asarray(Y, jnp.float32)


def loss(params, t, scale=1.0):
  """Step t's minibatch loss; ``scale = 0`` makes every gradient zero."""
  x, y = X_JAX[t % N_BATCHES], Y_JAX[t % N_BATCHES]
  x = x.astype(params["w"].dtype)
  logits = x @ params["w"] + params["b"]
  bce = optax.sigmoid_binary_cross_entropy(logits, y.astype(logits.dtype))
  return scale * (bce.mean() + 0.5 * L2 * jnp.sum(params["w"] ** 2))


def as_jax(tree, dtype=jnp.float32):
  return jax.tree.map(lambda v: jnp.asarray(v, dtype), tree)


class _Calls:
  """Counts host callbacks: one per executed call of ``grad_fn``."""

  def __init__(self):
    self.n = 0

  def __call__(self):
    self.n += 1


CALLS = _Calls()


def train_step(tx, params, state, t, scale=1.0):
  """One step of the uniform loop; ``grad_fn`` calls are counted at run time."""

  def grad_fn(p):
    jax.debug.callback(CALLS)
    return jax.grad(loss)(p, t, scale)

  grads = jax.grad(loss)(params, t, scale)
  updates, state = tx.update(grads, state, params, grad_fn=grad_fn)
  return optax.apply_updates(params, updates), state


def _loop(step, params, state, steps):
  history, passes = [], []
  for t in range(steps):
    before = CALLS.n
    params, state = step(params, state, t)
    jax.effects_barrier()
    history.append(jax.tree.map(np.asarray, params))
    passes.append(1 + CALLS.n - before)
  return history, passes, state


# The tests compile one small graph per transformation; XLA's backend
# optimizations cost more than they save on these (about 40% of compile time).
_jit = functools.partial(
  jax.jit, compiler_options={"xla_backend_optimization_level": 0}
)
jitted_train_step = _jit(train_step, static_argnums=0)


def run(tx, steps, *, jit=True, dtype=jnp.float32, scale=1.0):
  """Trains ``tx`` from W0; weights and gradient passes per step, last state.

  Compiles once per ``tx`` object and dtype (``scale`` is traced): reuse the
  object to reuse the compilation, or see :func:`run_family`.
  """
  step = jitted_train_step if jit else train_step
  params = as_jax(W0, dtype)
  return _loop(
    lambda p, s, t: step(tx, p, s, t, scale), params, tx.init(params), steps
  )


BASES = {
  "sgd": (lambda: optax.sgd(0.5), lambda: SGD(0.5)),
  "adam": (lambda: optax.adam(0.05), lambda: Adam(0.05)),
  "momentum": (
    lambda: optax.sgd(0.1, momentum=0.9),
    lambda: MomentumSGD(0.1, 0.9),
  ),
}


@functools.cache
def _family_step(factory, base, static):
  def step(params, state, t, hyperparameters):
    tx = factory(BASES[base][0](), **dict(static), **hyperparameters)
    return train_step(tx, params, state, t)

  return _jit(step)


def run_family(factory, base, steps, **hyperparameters):
  """Like :func:`run` for ``factory(base optimizer, **hyperparameters)``.

  Numeric hyperparameters are traced (as under ``optax.inject_hyperparams``:
  the factory must accept arrays), so one compilation per factory, base,
  static options (booleans, schedules) and set of numeric names serves every
  value a test tries (pass floats as floats: an int retraces).
  """
  static = tuple(
    sorted(
      (k, v)
      for k, v in hyperparameters.items()
      if isinstance(v, bool) or callable(v)
    )
  )
  traced = {k: v for k, v in hyperparameters.items() if k not in dict(static)}
  step = _family_step(factory, base, static)
  tx = factory(BASES[base][0](), **hyperparameters)  # validates, inits
  params = as_jax(W0)
  return _loop(
    lambda p, s, t: step(p, s, t, traced), params, tx.init(params), steps
  )


@functools.cache
def base_run(base, steps):
  """The base optimizer alone (shared by the limiting cases)."""
  return run(optax.with_extra_args_support(BASES[base][0]()), steps)


def assert_history_close(got, want, rtol=1e-4, atol=1e-5):
  assert len(got) == len(want)
  for t, (g, w) in enumerate(zip(got, want, strict=True)):
    for k in w:
      np.testing.assert_allclose(
        np.asarray(g[k], np.float64),
        np.asarray(w[k], np.float64),
        rtol=rtol,
        atol=atol,
        err_msg=f"step {t} leaf {k}",
      )
