"""Sharpness diagnostics: Hessian eigenvalues and the edges of stability.

Everything here works on arbitrary parameter pytrees, uses exact
Hessian-vector products (forward-over-reverse, ``jax.jvp`` of ``jax.grad``)
and runs its iterations inside ``jax.lax.while_loop``, so every function can
be called under ``jax.jit``. A loss is passed as a function of the parameters
alone; close over the batch (``lambda p: loss(p, batch)``).

The edges are the largest sharpness at which the corresponding method is
stable on a quadratic:

* gradient descent with step :math:`\\eta`: :math:`2 / \\eta`;
* SAM with radius :math:`\\rho` at gradient norm :math:`\\|g\\|`: the root of
  :math:`\\eta \\lambda (1 + \\rho \\lambda / \\|g\\|) = 2`;
* Adam (for the preconditioned sharpness :math:`\\lambda_{\\max}(P^{-1} H)`):
  :math:`(2 + 2 \\beta_1) / ((1 - \\beta_1) \\eta)`.

References:
  Long & Bartlett, `Sharpness-Aware Minimization and the Edge of Stability
  <https://arxiv.org/abs/2309.12488>`_, 2023.

  Cohen et al., `Adaptive Gradient Methods at the Edge of Stability
  <https://arxiv.org/abs/2207.14484>`_, 2022.
"""

from collections.abc import Callable
from typing import Any
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.flatten_util import ravel_pytree

from graphsam_optax import _common

__all__ = [
  "EigenResult",
  "TopKResult",
  "adam_edge",
  "alignment",
  "find_adam_state",
  "gd_edge",
  "hvp",
  "preconditioned_sharpness",
  "sam_edge",
  "top_eigenvalue",
  "top_k_eigenvalues",
]

LossFn = Callable[[Any], jax.Array]


class EigenResult(NamedTuple):
  """One eigenpair found by power iteration.

  Attributes:
    eigenvalue: the (signed) eigenvalue of largest magnitude; its absolute
      value is the operator norm. f32[] (the parameters' dtype).
    eigenvector: unit-norm eigenvector, a pytree like the parameters.
    num_iterations: matrix-vector products used. i32[].
    converged: whether the relative change of the eigenvalue estimate fell
      to ``rtol`` before ``max_iters``. bool[].
  """

  eigenvalue: jax.Array
  eigenvector: Any
  num_iterations: jax.Array
  converged: jax.Array


class TopKResult(NamedTuple):
  """The ``k`` eigenpairs of largest magnitude, found by subspace iteration.

  Attributes:
    eigenvalues: f[k], ordered by decreasing magnitude.
    eigenvectors: a pytree like the parameters whose leaves carry a leading
      axis of size ``k``; ``jax.tree.map(lambda x: x[i], eigenvectors)`` is
      the unit eigenvector of ``eigenvalues[i]``. The vectors are orthonormal.
    num_iterations: block products used (each costs ``k`` Hessian-vector
      products). i32[].
    converged: whether every eigenvalue's relative change fell to ``rtol``
      before ``max_iters``. bool[].
  """

  eigenvalues: jax.Array
  eigenvectors: Any
  num_iterations: jax.Array
  converged: jax.Array


def hvp(loss_fn: LossFn, params: Any, vector: Any) -> Any:
  """Exact Hessian-vector product :math:`H v` of ``loss_fn`` at ``params``.

  Forward-over-reverse differentiation: one ``jax.jvp`` of ``jax.grad``,
  about the cost of two gradient evaluations. No finite differences.

  Args:
    loss_fn: scalar function of the parameters.
    params: the point where the Hessian is taken (a pytree).
    vector: a pytree like ``params`` (same structure, shapes and dtypes).

  Returns:
    :math:`H v`, a pytree like ``params``.

  Examples:
    >>> import jax.numpy as jnp
    >>> from graphsam_optax import sharpness
    >>> loss = lambda p: p["x"][0] ** 2 + 3.0 * p["x"][0] * p["x"][1]
    >>> params = {"x": jnp.array([1.0, 2.0])}
    >>> print(sharpness.hvp(loss, params, {"x": jnp.array([1.0, 0.0])})["x"])
    [2. 3.]
  """
  return jax.jvp(jax.grad(loss_fn), (params,), (vector,))[1]


def _converged(value, previous, rtol) -> jax.Array:
  return jnp.all(jnp.abs(value - previous) <= rtol * jnp.abs(value))


def _check_options(rtol, max_iters) -> None:
  _common.check_float(
    "rtol",
    rtol,
    "it is the relative tolerance on successive eigenvalue estimates.",
    low=0,
  )
  _common.check_integer(
    "max_iters", max_iters, 1, "it caps the iterations of the eigensolver."
  )


def _start_vector(params, init, key) -> Any:
  if init is not None:
    return init
  key = jax.random.key(0) if key is None else key
  return optax.tree.random_like(key, params)


def _power_iteration(matvec, start, rtol, max_iters) -> EigenResult:
  """Power iteration for the eigenvalue of largest magnitude of ``matvec``."""
  vector = _common.normalized(start)
  dtype = jax.eval_shape(optax.tree.vdot, vector, vector).dtype
  inf = jnp.full([], jnp.inf, dtype)
  carry = (jnp.zeros([], jnp.int32), vector, inf, inf)

  def cond_fn(carry):
    count, _, value, previous = carry
    return (count < max_iters) & ~_converged(value, previous, rtol)

  def body_fn(carry):
    count, vector, value, _ = carry
    product = matvec(vector)
    new_value = optax.tree.vdot(vector, product)
    return count + 1, _common.normalized(product), new_value, value

  count, vector, value, previous = jax.lax.while_loop(cond_fn, body_fn, carry)
  return EigenResult(value, vector, count, _converged(value, previous, rtol))


def top_eigenvalue(
  loss_fn: LossFn,
  params: Any,
  *,
  init: Any = None,
  key: jax.Array | None = None,
  rtol: float = 1e-3,
  max_iters: int = 100,
) -> EigenResult:
  r"""Top Hessian eigenpair of ``loss_fn`` at ``params`` by power iteration.

  Iterates :math:`v \leftarrow H v / \|H v\|` with exact Hessian-vector
  products and the Rayleigh quotient :math:`\lambda = v^\top H v`, stopping
  when :math:`|\lambda_t - \lambda_{t-1}| \le \mathrm{rtol}\,|\lambda_t|` or
  after ``max_iters`` products. It converges to the eigenvalue of largest
  magnitude, so ``abs(result.eigenvalue)`` is the operator norm
  :math:`\|H\|` that the edge-of-stability papers track (for the usual
  near-minimum Hessian this is the largest eigenvalue).

  Args:
    loss_fn: scalar function of the parameters.
    params: pytree where the Hessian is taken.
    init: optional start vector, a pytree like ``params`` (for example the
      previous eigenvector, to warm-start a measurement during training).
    key: PRNG key for a random normal start vector when ``init`` is None
      (default ``jax.random.key(0)``).
    rtol: relative tolerance on successive eigenvalue estimates, ``>= 0``
      (default 1e-3, as in Long & Bartlett).
    max_iters: cap on Hessian-vector products, ``>= 1`` (default 100).

  Returns:
    An :class:`EigenResult` (eigenvalue, unit eigenvector like ``params``,
    products used, converged flag).

  References:
    Long & Bartlett, `Sharpness-Aware Minimization and the Edge of Stability
    <https://arxiv.org/abs/2309.12488>`_, 2023.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> from graphsam_optax import sharpness
    >>> def loss(p):  # Hessian diag(4, 1, 1)
    ...   return 2.0 * p["w"][0] ** 2 + 0.5 * (p["w"][1] ** 2 + p["b"] ** 2)
    >>> params = {"w": jnp.array([1.0, -1.0]), "b": jnp.array(0.5)}
    >>> result = jax.jit(lambda p: sharpness.top_eigenvalue(loss, p))(params)
    >>> print(f"{result.eigenvalue:.3f}")
    4.000
    >>> vector, steps = result.eigenvector, result.num_iterations
    >>> print(f"{abs(vector['w'][0]):.2f}", int(steps))
    1.00 5
  """
  _check_options(rtol, max_iters)
  start = _start_vector(params, init, key)
  return _power_iteration(
    lambda v: hvp(loss_fn, params, v), start, rtol, max_iters
  )


def top_k_eigenvalues(
  loss_fn: LossFn,
  params: Any,
  k: int,
  *,
  init: Any = None,
  key: jax.Array | None = None,
  rtol: float = 1e-3,
  max_iters: int = 100,
) -> TopKResult:
  r"""The ``k`` Hessian eigenpairs of largest magnitude by subspace iteration.

  Block power iteration with Rayleigh-Ritz: :math:`W = H V`,
  :math:`T = V^\top W = S \Theta S^\top`, Ritz vectors :math:`V S`, then
  :math:`V \leftarrow \mathrm{qr}(W S)`. Each iteration costs ``k``
  Hessian-vector products (vectorized with ``jax.vmap``). Stops when every
  Ritz value changes by at most ``rtol`` relative, or after ``max_iters``
  iterations. Eigenvalue ``i`` converges at the rate
  :math:`|\lambda_{k+1} / \lambda_i|`.

  Args:
    loss_fn: scalar function of the parameters.
    params: pytree where the Hessian is taken.
    k: number of eigenpairs, from 1 to the number of parameters (static).
    init: optional start block, a pytree like ``params`` whose leaves carry a
      leading axis of size ``k`` (for example the previous
      ``result.eigenvectors``, to warm-start during training).
    key: PRNG key for a random start block when ``init`` is None (default
      ``jax.random.key(0)``).
    rtol: relative tolerance on successive Ritz values, ``>= 0``.
    max_iters: cap on block iterations, ``>= 1``.

  Returns:
    A :class:`TopKResult`; eigenvalues ordered by decreasing magnitude.

  Examples:
    >>> import jax.numpy as jnp
    >>> from graphsam_optax import sharpness
    >>> loss = lambda p: 0.5 * jnp.sum(jnp.array([5.0, 3.0, 1.0]) * p**2)
    >>> result = sharpness.top_k_eigenvalues(loss, jnp.ones(3), 2, rtol=1e-6)
    >>> print(", ".join(f"{x:.3f}" for x in result.eigenvalues))
    5.000, 3.000
  """
  _check_options(rtol, max_iters)
  flat, unravel = ravel_pytree(params)
  if not 1 <= k <= flat.size:
    raise ValueError(f"k must be in [1, {flat.size}], got {k}.")
  if init is None:
    key = jax.random.key(0) if key is None else key
    start = jax.random.normal(key, (flat.size, k), flat.dtype)
  else:
    start = jax.vmap(lambda v: ravel_pytree(v)[0], out_axes=1)(init)

  def matvec(column):
    return ravel_pytree(hvp(loss_fn, params, unravel(column)))[0]

  matmat = jax.vmap(matvec, in_axes=1, out_axes=1)

  def rayleigh_ritz(basis):
    product = matmat(basis)
    small = basis.T @ product
    values, rotation = jnp.linalg.eigh(0.5 * (small + small.T))
    order = jnp.argsort(-jnp.abs(values))
    values, rotation = values[order], rotation[:, order]
    next_basis = jnp.linalg.qr(product @ rotation)[0]
    return values, basis @ rotation, next_basis

  inf = jnp.full([k], jnp.inf, flat.dtype)
  carry = (
    jnp.zeros([], jnp.int32),
    jnp.linalg.qr(start)[0],
    jnp.zeros_like(start),
    inf,
    inf,
  )

  def cond_fn(carry):
    count, _, _, values, previous = carry
    return (count < max_iters) & ~_converged(values, previous, rtol)

  def body_fn(carry):
    count, basis, _, values, _ = carry
    new_values, ritz, next_basis = rayleigh_ritz(basis)
    return count + 1, next_basis, ritz, new_values, values

  count, _, ritz, values, previous = jax.lax.while_loop(cond_fn, body_fn, carry)
  vectors = jax.vmap(unravel)(ritz.T)
  return TopKResult(values, vectors, count, _converged(values, previous, rtol))


def find_adam_state(opt_state: Any) -> optax.ScaleByAdamState:
  """The single ``optax.ScaleByAdamState`` inside a (nested) optimizer state.

  Searches chains, ``inject_hyperparams``, ``MultiSteps``, sharpness-aware
  wrappers and any other pytree of states. ``optax.adam``, ``adamw``,
  ``nadam`` and ``scale_by_adam`` all keep their moments in this state.

  Args:
    opt_state: an optimizer state, or a ``ScaleByAdamState`` itself.

  Returns:
    The ``ScaleByAdamState``.

  Raises:
    ValueError: if ``opt_state`` holds none, or more than one (pass the one
      you mean directly).

  Examples:
    >>> import jax.numpy as jnp, optax
    >>> from graphsam_optax import sharpness
    >>> tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-3))
    >>> state = sharpness.find_adam_state(tx.init({"w": jnp.zeros(2)}))
    >>> print(state.nu["w"], int(state.count))
    [0. 0.] 0
  """
  is_adam = lambda x: isinstance(x, optax.ScaleByAdamState)
  found = [
    leaf
    for leaf in jax.tree.leaves(opt_state, is_leaf=is_adam)
    if is_adam(leaf)
  ]
  if len(found) != 1:
    raise ValueError(
      "opt_state must hold exactly one optax.ScaleByAdamState, found "
      f"{len(found)} in {type(opt_state).__name__}."
    )
  return found[0]


def preconditioned_sharpness(
  loss_fn: LossFn,
  params: Any,
  opt_state: Any,
  *,
  b2: float = 0.999,
  eps: float = 1e-8,
  eps_root: float = 0.0,
  init: Any = None,
  key: jax.Array | None = None,
  rtol: float = 1e-3,
  max_iters: int = 100,
) -> EigenResult:
  r"""Adam's preconditioned sharpness :math:`\lambda_{\max}(P^{-1} H)`.

  With the bias-corrected second moment
  :math:`\hat v = \nu / (1 - \beta_2^{t})` (``t`` the Adam state's count) and
  :math:`P = \mathrm{diag}(\sqrt{\hat v + \epsilon_{root}} + \epsilon)`,
  the eigenvalues of :math:`P^{-1} H` are those of the symmetric
  :math:`P^{-1/2} H P^{-1/2}`, which is what the power iteration runs on. Its
  stability threshold is :func:`adam_edge`. At count 0 (no step yet)
  :math:`\hat v = 0` and :math:`P = \epsilon`.

  Args:
    loss_fn: scalar function of the parameters.
    params: pytree where the Hessian is taken.
    opt_state: an optimizer state containing exactly one
      ``optax.ScaleByAdamState`` (see :func:`find_adam_state`); its ``nu``
      must be shaped like ``params``.
    b2: the optimizer's second-moment decay, for the bias correction.
    eps: the optimizer's ``eps`` (added outside the square root).
    eps_root: the optimizer's ``eps_root`` (added inside).
    init: optional start vector like ``params``.
    key: PRNG key for a random start when ``init`` is None.
    rtol: relative tolerance on successive eigenvalue estimates.
    max_iters: cap on Hessian-vector products.

  Returns:
    An :class:`EigenResult` whose eigenvalue is the preconditioned sharpness
    and whose eigenvector ``u`` is that of the symmetric form; the
    eigenvector of :math:`P^{-1} H` itself is :math:`P^{-1/2} u`.

  References:
    Cohen et al., `Adaptive Gradient Methods at the Edge of Stability
    <https://arxiv.org/abs/2207.14484>`_, 2022.

  Examples:
    >>> import jax, jax.numpy as jnp, optax
    >>> from graphsam_optax import sharpness
    >>> loss = lambda p: 0.5 * jnp.sum(jnp.array([4.0, 1.0]) * p**2)
    >>> params = jnp.array([1.0, 2.0])
    >>> tx = optax.adam(0.1)
    >>> state = tx.init(params)
    >>> _, state = tx.update(jax.grad(loss)(params), state)
    >>> # v_hat = g**2 = (16, 4), so P^-1 H = diag(4 / 4, 1 / 2)
    >>> result = sharpness.preconditioned_sharpness(loss, params, state)
    >>> print(f"{result.eigenvalue:.3f}")
    1.000
  """
  _check_options(rtol, max_iters)
  adam = find_adam_state(opt_state)
  count = jnp.maximum(adam.count, 1)
  correction = 1.0 - jnp.asarray(b2, jnp.float32) ** count
  scale = jax.tree.map(
    lambda nu, p: ((jnp.sqrt(nu / correction + eps_root) + eps) ** -0.5).astype(
      p.dtype
    ),
    adam.nu,
    params,
  )

  def matvec(vector):
    product = hvp(loss_fn, params, optax.tree.mul(scale, vector))
    return optax.tree.mul(scale, product)

  start = _start_vector(params, init, key)
  return _power_iteration(matvec, start, rtol, max_iters)


def gd_edge(lr: jax.typing.ArrayLike) -> jax.Array:
  r"""Gradient descent's edge of stability :math:`2 / \eta`.

  Args:
    lr: the step size :math:`\eta > 0`.

  Returns:
    :math:`2 / \eta`.

  Examples:
    >>> from graphsam_optax import sharpness
    >>> print(f"{sharpness.gd_edge(0.01):.1f}")
    200.0
  """
  return 2.0 / jnp.asarray(lr, jnp.float32)


def sam_edge(
  lr: jax.typing.ArrayLike,
  rho: jax.typing.ArrayLike,
  grad_norm: jax.typing.ArrayLike,
) -> jax.Array:
  r"""SAM's edge of stability at the current gradient norm.

  The positive root :math:`\lambda` of
  :math:`\eta \lambda (1 + \rho \lambda / \|g\|) = 2`,

  .. math::
    \frac{\|g\|}{2 \rho}\left(\sqrt{1 + \frac{8 \rho}{\eta \|g\|}} - 1\right)
    = \frac{4}{\eta}\,\frac{\sqrt{\|g\|}}
      {\sqrt{\|g\|} + \sqrt{\|g\| + 8 \rho / \eta}},

  evaluated in the second form, which has no cancellation: it equals
  :math:`2 / \eta` at :math:`\rho = 0` (for any :math:`\|g\|`), behaves as
  :math:`\sqrt{2 \|g\| / (\eta \rho)}` as :math:`\|g\| \to 0` and is 0 at
  :math:`\|g\| = 0` with :math:`\rho > 0`, without NaN. On a quadratic one
  SAM step multiplies the error along an eigenvector of eigenvalue
  :math:`\lambda` by :math:`1 - \eta\lambda - \eta\rho\lambda^2 / \|g\|`,
  which is :math:`-1` exactly at this edge.

  Args:
    lr: step size :math:`\eta > 0`.
    rho: SAM radius :math:`\rho \ge 0`.
    grad_norm: :math:`\|g\| \ge 0`, the gradient norm at the unperturbed
      point.

  Returns:
    The edge (broadcast over the arguments).

  References:
    Long & Bartlett, `Sharpness-Aware Minimization and the Edge of Stability
    <https://arxiv.org/abs/2309.12488>`_, 2023, Eq. (2).

  Examples:
    >>> from graphsam_optax import sharpness
    >>> print(f"{sharpness.sam_edge(0.1, 0.0, 1.0):.3f}")
    20.000
    >>> # the root of 0.1 l (1 + 0.05 l) = 2
    >>> print(f"{sharpness.sam_edge(0.1, 0.05, 1.0):.3f}")
    12.361
  """
  lr = jnp.asarray(lr, jnp.float32)
  rho = jnp.asarray(rho, jnp.float32)
  grad_norm = jnp.asarray(grad_norm, jnp.float32)
  root = jnp.sqrt(grad_norm)
  denominator = root + jnp.sqrt(grad_norm + 8.0 * rho / lr)
  positive = denominator > 0
  safe = jnp.where(positive, denominator, 1.0)
  return jnp.where(positive, 4.0 * root / (lr * safe), 2.0 / lr)


def adam_edge(lr: jax.typing.ArrayLike, b1: jax.typing.ArrayLike) -> jax.Array:
  r"""Adam's edge for the preconditioned sharpness.

  :math:`(2 + 2\beta_1) / ((1 - \beta_1)\,\eta)`, the threshold of
  :func:`preconditioned_sharpness` for Adam with momentum :math:`\beta_1`
  (38 / :math:`\eta` at :math:`\beta_1 = 0.9`).

  Args:
    lr: step size :math:`\eta > 0`.
    b1: first-moment decay :math:`0 \le \beta_1 < 1`.

  Returns:
    The edge.

  References:
    Cohen et al., `Adaptive Gradient Methods at the Edge of Stability
    <https://arxiv.org/abs/2207.14484>`_, 2022.

  Examples:
    >>> from graphsam_optax import sharpness
    >>> print(f"{sharpness.adam_edge(1e-3, 0.9):.1f}")
    38000.0
  """
  lr = jnp.asarray(lr, jnp.float32)
  b1 = jnp.asarray(b1, jnp.float32)
  return (2.0 + 2.0 * b1) / ((1.0 - b1) * lr)


def alignment(grad: Any, vector: Any) -> jax.Array:
  r"""Alignment :math:`|\cos(g, v)| = |g^\top v| / (\|g\| \|v\|)`.

  Zero when either tree is zero (no NaN).

  Args:
    grad: a pytree (for example a gradient or a SAM gradient).
    vector: a pytree like ``grad`` (for example the top eigenvector).

  Returns:
    A scalar in :math:`[0, 1]`.

  Examples:
    >>> import jax.numpy as jnp
    >>> from graphsam_optax import sharpness
    >>> g = {"a": jnp.array([3.0, 4.0])}
    >>> print(f"{sharpness.alignment(g, {'a': jnp.array([1.0, 0.0])}):.2f}")
    0.60
  """
  denominator = optax.tree.norm(grad) * optax.tree.norm(vector)
  cosine = _common.safe_divide(
    jnp.abs(optax.tree.vdot(grad, vector)), denominator
  )
  return jnp.minimum(cosine, 1.0)
