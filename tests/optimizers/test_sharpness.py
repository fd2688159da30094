"""Tests for graphsam_optax.sharpness on quadratics with known Hessians."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from graphsam_optax import sharpness

SHAPES = {"w": (2, 3), "b": (4,)}  # ten parameters in two leaves
N = 10


def _flat(params):
  """Explicit flattening (w, then b), independent of the library's ravel."""
  return jnp.concatenate([params["w"].ravel(), params["b"].ravel()])


def _unflat(x):
  x = jnp.asarray(x, jnp.float32)
  return {"w": x[:6].reshape(2, 3), "b": x[6:]}


def _matrix(spectrum, seed=0):
  """Symmetric non-diagonal matrix with the given eigenvalues."""
  rng = np.random.default_rng(seed)
  q, _ = np.linalg.qr(rng.normal(size=(len(spectrum), len(spectrum))))
  return (q * np.asarray(spectrum)) @ q.T, q


def _quadratic(matrix, linear=None):
  a = jnp.asarray(matrix, jnp.float32)
  c = jnp.zeros(a.shape[0]) if linear is None else jnp.asarray(linear)

  def loss(params):
    x = _flat(params)
    return 0.5 * x @ a @ x + c @ x

  return loss


def _params(seed=1):
  return _unflat(np.random.default_rng(seed).normal(size=N))


def _abs_cos(x, y):
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  return abs(x @ y) / (np.linalg.norm(x) * np.linalg.norm(y))


SPECTRUM = [9.0, 6.0, 4.5, 3.0, 2.0, 1.0, 0.5, 0.2, 0.1, -0.5]


def test_hvp_is_exact_matrix_product():
  a, _ = _matrix(SPECTRUM)
  loss = _quadratic(a, linear=np.ones(N))
  v = np.random.default_rng(2).normal(size=N)
  out = sharpness.hvp(loss, _params(), _unflat(v))
  assert jax.tree.structure(out) == jax.tree.structure(_params())
  np.testing.assert_allclose(_flat(out), a @ v, rtol=1e-5, atol=1e-5)


def test_top_eigenvalue_matches_eigh_on_pytree():
  a, _ = _matrix(SPECTRUM)
  values, vectors = np.linalg.eigh(a)
  result = sharpness.top_eigenvalue(
    _quadratic(a), _params(), rtol=1e-6, max_iters=500
  )
  np.testing.assert_allclose(result.eigenvalue, values[-1], rtol=1e-5)
  assert _abs_cos(_flat(result.eigenvector), vectors[:, -1]) > 1 - 1e-5
  np.testing.assert_allclose(optax.tree.norm(result.eigenvector), 1.0, 1e-5)
  assert result.converged and 2 <= result.num_iterations < 500


def test_top_eigenvalue_is_largest_magnitude():
  spectrum = [-12.0, 5.0, 3.0, 2.0, 1.0, 0.5, 0.4, 0.3, 0.2, 0.1]
  a, _ = _matrix(spectrum, seed=3)
  result = sharpness.top_eigenvalue(
    _quadratic(a), _params(), rtol=1e-6, max_iters=500
  )
  np.testing.assert_allclose(result.eigenvalue, -12.0, rtol=1e-5)


def test_iteration_cap_tolerance_and_warm_start():
  a, q = _matrix(SPECTRUM)
  loss, params = _quadratic(a), _params()
  capped = sharpness.top_eigenvalue(loss, params, rtol=0.0, max_iters=3)
  assert int(capped.num_iterations) == 3 and not capped.converged
  loose = sharpness.top_eigenvalue(loss, params, rtol=1e-2, max_iters=500)
  tight = sharpness.top_eigenvalue(loss, params, rtol=1e-6, max_iters=500)
  assert loose.num_iterations < tight.num_iterations
  warm = sharpness.top_eigenvalue(
    loss, params, init=_unflat(q[:, 0]), rtol=1e-6, max_iters=500
  )
  assert int(warm.num_iterations) == 2
  with pytest.raises(ValueError, match="max_iters"):
    sharpness.top_eigenvalue(loss, params, max_iters=0)
  with pytest.raises(ValueError, match="rtol"):
    sharpness.top_eigenvalue(loss, params, rtol=-1.0)


def test_zero_hessian_gives_zero_without_nan():
  result = sharpness.top_eigenvalue(lambda p: p["b"].sum(), _params())
  assert float(result.eigenvalue) == 0.0 and result.converged
  assert np.all(np.isfinite(_flat(result.eigenvector)))


def test_top_k_matches_eigh_on_pytree():
  a, _ = _matrix(SPECTRUM)
  values, vectors = np.linalg.eigh(a)
  result = sharpness.top_k_eigenvalues(
    _quadratic(a), _params(), 3, rtol=1e-7, max_iters=500
  )
  np.testing.assert_allclose(result.eigenvalues, values[::-1][:3], rtol=1e-4)
  assert result.converged
  for i in range(3):
    vector = _flat(jax.tree.map(lambda x, i=i: x[i], result.eigenvectors))
    assert _abs_cos(vector, vectors[:, -1 - i]) > 1 - 1e-4
  assert result.eigenvectors["w"].shape == (3, 2, 3)
  warm = sharpness.top_k_eigenvalues(
    _quadratic(a), _params(), 3, init=result.eigenvectors, rtol=1e-5
  )
  assert int(warm.num_iterations) == 2
  np.testing.assert_allclose(warm.eigenvalues, result.eigenvalues, rtol=1e-5)
  with pytest.raises(ValueError, match="k must be"):
    sharpness.top_k_eigenvalues(_quadratic(a), _params(), N + 1)


def _adam_state(loss, params, tx, steps=5):
  state = tx.init(params)
  for _ in range(steps):
    updates, state = tx.update(jax.grad(loss)(params), state, params)
    params = optax.apply_updates(params, updates)
  return params, state


@pytest.mark.parametrize(
  "make_tx",
  [
    lambda: optax.adam(0.05, b2=0.99, eps=1e-3),
    lambda: optax.chain(
      optax.clip_by_global_norm(10.0),
      optax.inject_hyperparams(optax.adam)(0.05, b2=0.99, eps=1e-3),
    ),
  ],
  ids=["adam", "nested"],
)
def test_preconditioned_sharpness_matches_eigh(make_tx):
  a, _ = _matrix(SPECTRUM)
  loss = _quadratic(a, linear=np.linspace(-1.0, 1.0, N))
  params, state = _adam_state(loss, _params(), make_tx())
  adam = sharpness.find_adam_state(state)
  assert int(adam.count) == 5
  nu_hat = np.asarray(_flat(adam.nu), np.float64) / (1 - 0.99**5)
  p = np.sqrt(nu_hat) + 1e-3
  symmetric = a / np.sqrt(np.outer(p, p))
  expected = np.linalg.eigh(symmetric)[0][-1]
  general = np.linalg.eigvals(a / p[:, None]).real.max()
  np.testing.assert_allclose(expected, general, rtol=1e-8)
  result = sharpness.preconditioned_sharpness(
    loss, params, state, b2=0.99, eps=1e-3, rtol=1e-7, max_iters=1000
  )
  np.testing.assert_allclose(result.eigenvalue, expected, rtol=1e-4)


def test_preconditioned_sharpness_before_any_step():
  a, _ = _matrix(SPECTRUM)
  state = optax.adam(0.1, eps=0.5).init(_params())
  result = sharpness.preconditioned_sharpness(
    _quadratic(a), _params(), state, eps=0.5, rtol=1e-6, max_iters=500
  )
  np.testing.assert_allclose(result.eigenvalue, 9.0 / 0.5, rtol=1e-4)


def test_find_adam_state_errors():
  params = _params()
  with pytest.raises(ValueError, match="found 0"):
    sharpness.find_adam_state(optax.sgd(0.1).init(params))
  two = optax.chain(optax.adam(0.1), optax.adam(0.1)).init(params)
  with pytest.raises(ValueError, match="found 2"):
    sharpness.find_adam_state(two)


def test_gd_and_adam_edges():
  np.testing.assert_allclose(sharpness.gd_edge(0.04), 50.0, rtol=1e-6)
  np.testing.assert_allclose(sharpness.adam_edge(0.1, 0.9), 380.0, rtol=1e-6)
  np.testing.assert_allclose(sharpness.adam_edge(0.1, 0.0), 20.0, rtol=1e-6)


@pytest.mark.parametrize("lr", [1e-3, 0.05, 1.0])
@pytest.mark.parametrize("rho", [1e-4, 0.05, 2.0])
@pytest.mark.parametrize("grad_norm", [1e-6, 0.3, 50.0])
def test_sam_edge_solves_its_equation(lr, rho, grad_norm):
  edge = float(sharpness.sam_edge(lr, rho, grad_norm))
  np.testing.assert_allclose(
    lr * edge * (1 + rho * edge / grad_norm), 2.0, rtol=1e-5
  )
  assert 0 < edge < 2 / lr
  first_form = (
    grad_norm / (2 * rho) * (np.sqrt(1 + 8 * rho / (lr * grad_norm)) - 1)
  )
  np.testing.assert_allclose(edge, first_form, rtol=1e-4)


def test_sam_edge_limits():
  lr = 0.1
  for g in [0.0, 1e-3, 1.0, 1e3]:
    np.testing.assert_allclose(sharpness.sam_edge(lr, 0.0, g), 2 / lr)
  for g in [1e-12, 1e-9]:
    np.testing.assert_allclose(
      sharpness.sam_edge(lr, 0.05, g), np.sqrt(2 * g / (lr * 0.05)), rtol=1e-3
    )
  assert float(sharpness.sam_edge(lr, 0.05, 0.0)) == 0.0
  edges = sharpness.sam_edge(lr, jnp.array([0.0, 0.01, 0.1]), 1.0)
  assert np.all(np.diff(edges) < 0) and np.all(np.isfinite(edges))


def test_alignment():
  g = _unflat(np.arange(N, dtype=np.float32))
  np.testing.assert_allclose(sharpness.alignment(g, g), 1.0, rtol=1e-6)
  minus = jax.tree.map(lambda x: -2 * x, g)
  np.testing.assert_allclose(sharpness.alignment(g, minus), 1.0, rtol=1e-6)
  zero = jax.tree.map(jnp.zeros_like, g)
  assert float(sharpness.alignment(zero, g)) == 0.0
  e = _unflat(np.eye(N)[3])
  np.testing.assert_allclose(
    sharpness.alignment(g, e), 3 / np.linalg.norm(np.arange(N)), rtol=1e-6
  )


# SAM on a quadratic L(w) = w^T A w / 2 + c^T w.  With g = A w + c and
# w' = w - lr * grad L(w + rho g / ||g||) = w - lr g - lr rho A g / ||g||, the
# error component along an eigenvector u of eigenvalue l (u^T g = l u^T w when
# c is orthogonal to u) is multiplied by 1 - lr l - lr rho l^2 / ||g||.  That
# factor is -1 exactly at lr l (1 + rho l / ||g||) = 2, i.e. at sam_edge.


def _sam_step(loss, w, lr, rho):
  g = jax.grad(loss)(w)
  adversarial = optax.tree.add_scale(w, rho / optax.tree.norm(g), g)
  return optax.tree.add_scale(w, -lr, jax.grad(loss)(adversarial)), g


def _top_component(w, q):
  return float(np.asarray(_flat(w), np.float64) @ q[:, 0])


def test_sam_growth_factor_crosses_one_at_sam_edge():
  spectrum = [10.0, 4.0, 3.0, 2.0, 1.5, 1.0, 0.7, 0.4, 0.2, 0.0]
  a, q = _matrix(spectrum, seed=4)
  loss, rho = _quadratic(a), 0.05
  w = _params(seed=5)
  grad_norm = float(optax.tree.norm(jax.grad(loss)(w)))
  step = jax.jit(lambda lr: _sam_step(loss, w, lr, rho)[0])

  def factor(lr):
    return _top_component(step(lr), q) / _top_component(w, q)

  for lr in [0.05, 0.12, 0.2]:  # measured factor equals the formula
    predicted = 1 - lr * 10 - lr * rho * 100 / grad_norm
    np.testing.assert_allclose(factor(lr), predicted, rtol=1e-4, atol=1e-5)
  low, high = 0.01, 1.0  # stable at low, unstable at high
  assert abs(factor(low)) < 1 < abs(factor(high))
  for _ in range(40):
    mid = 0.5 * (low + high)
    low, high = (mid, high) if abs(factor(mid)) < 1 else (low, mid)
  crossing = 0.5 * (low + high)
  edge = float(sharpness.sam_edge(crossing, rho, grad_norm))
  np.testing.assert_allclose(edge, 10.0, rtol=1e-4)
  assert edge < float(sharpness.gd_edge(crossing))


def test_sam_steps_grow_above_and_shrink_below_the_edge():
  spectrum = [10.0, 4.0, 3.0, 2.0, 1.5, 1.0, 0.7, 0.4, 0.2, 0.0]
  a, q = _matrix(spectrum, seed=4)
  rho = 0.05
  # A constant gradient of norm 1 along the flat direction keeps ||g|| ~ 1.
  loss = _quadratic(a, linear=q[:, -1])
  lr_edge = 2 / (10.0 * (1 + rho * 10.0 / 1.0))
  np.testing.assert_allclose(sharpness.sam_edge(lr_edge, rho, 1.0), 10.0, 1e-5)
  ratios = {}
  for scale in [0.98, 1.02]:
    w = _unflat(1e-3 * q[:, 0])
    run = jax.jit(lambda w, lr=scale * lr_edge: _sam_step(loss, w, lr, rho)[0])
    for _ in range(50):
      w = run(w)
    ratios[scale] = abs(_top_component(w, q)) / 1e-3
  assert ratios[0.98] < 0.3 and ratios[1.02] > 3.0
  # GD at the same step sizes is stable in both cases (the GD edge is higher).
  assert 1.02 * lr_edge * 10.0 < 2.0


def test_everything_jits():
  a, _ = _matrix(SPECTRUM)
  loss, params = _quadratic(a), _params()
  values, _ = np.linalg.eigh(a)

  @jax.jit
  def measure(params, rtol):
    top = sharpness.top_eigenvalue(loss, params, rtol=rtol, max_iters=500)
    top_k = sharpness.top_k_eigenvalues(loss, params, 2, rtol=rtol)
    g = jax.grad(loss)(params)
    return (
      top.eigenvalue,
      top_k.eigenvalues,
      sharpness.alignment(g, top.eigenvector),
      sharpness.sam_edge(0.1, 0.05, optax.tree.norm(g)),
    )

  top, top_k, cos, edge = measure(params, 1e-6)
  np.testing.assert_allclose(top, values[-1], rtol=1e-5)
  np.testing.assert_allclose(top_k, values[::-1][:2], rtol=1e-3)
  assert 0 <= cos <= 1 and np.isfinite(edge)

  tx = optax.adam(0.05)
  params2, state = _adam_state(loss, params, tx, steps=2)
  jitted = jax.jit(
    lambda p, s: sharpness.preconditioned_sharpness(loss, p, s).eigenvalue
  )
  eager = sharpness.preconditioned_sharpness(loss, params2, state).eigenvalue
  np.testing.assert_allclose(jitted(params2, state), eager, rtol=1e-5)


def test_bfloat16_params_keep_their_dtype():
  a, _ = _matrix(SPECTRUM)
  params = jax.tree.map(lambda x: x.astype(jnp.bfloat16), _params())
  loss = lambda p: _quadratic(a)(
    jax.tree.map(lambda x: x.astype(jnp.float32), p)
  )
  result = sharpness.top_eigenvalue(loss, params, max_iters=50)
  assert result.eigenvector["w"].dtype == jnp.bfloat16
  np.testing.assert_allclose(float(result.eigenvalue), 9.0, rtol=0.05)
