"""SAM and ASAM with the library's calling convention, and their shared parts.

Every method of the efficient-SAM family (:func:`sam`, LookSAM, AE-SAM, RST)
takes some of its steps as SAM steps: a second gradient at the ascent point
``w + ε``. The helpers here compute that point and validate the shared
hyperparameters, so that each method states only what differs.
"""

from collections.abc import Callable
from typing import Any
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

# Smallest norm we divide by: below it a direction is treated as zero, so zero
# gradients give a zero perturbation instead of NaN.
TINY = 1e-12

GradFn = Callable[[optax.Params], optax.Updates]


def is_concrete(value: Any) -> bool:
  """Whether a hyperparameter is a Python number that can be validated.

  Under ``optax.inject_hyperparams`` a factory is called again with traced
  arrays; those were validated on the first call and are skipped.
  """
  return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_at_least(name: str, value: Any, lower: float, meaning: str) -> None:
  """Raises ``ValueError`` naming ``name`` when ``value < lower``."""
  if is_concrete(value) and not value >= lower:
    raise ValueError(
      f"{name} must be >= {lower}, got {name}={value!r}: {meaning}"
    )


def check_integer(name: str, value: Any, lower: int, meaning: str) -> None:
  """Raises ``ValueError`` unless ``value`` is an integer >= ``lower``."""
  if isinstance(value, jax.Array):
    return
  if not isinstance(value, int) or isinstance(value, bool) or value < lower:
    raise ValueError(
      f"{name} must be an integer >= {lower}, got {name}={value!r}: {meaning}"
    )


def check_rho(rho: optax.ScalarOrSchedule) -> None:
  """Validates the radius ρ of a SAM step (a schedule is not checked)."""
  check_at_least(
    "rho",
    rho,
    0,
    "it is the radius of the perturbation ball (0 gives the inner optimizer).",
  )


def value_at(
  hyperparameter: optax.ScalarOrSchedule, count: jax.Array
) -> jax.Array:
  """A float or schedule evaluated at the step ``count``, as ``float32[]``."""
  value = hyperparameter(count) if callable(hyperparameter) else hyperparameter
  return jnp.asarray(value, dtype=jnp.float32)


def check_call(method: str, params: Any, grad_fn: Any) -> None:
  """Raises ``ValueError`` when ``update`` misses ``params`` or ``grad_fn``."""
  if params is None:
    raise ValueError(
      f"{method} needs params: call tx.update(grads, state, params, "
      "grad_fn=...) with the params the gradient was taken at."
    )
  if grad_fn is None:
    raise ValueError(
      f"{method} needs grad_fn: pass tx.update(grads, state, params, "
      "grad_fn=g) where g(p) returns the gradient of the same batch's loss "
      "at p; it is called on SAM steps only."
    )


def safe_scale(tree: Any, numerator: jax.Array, norm: jax.Array) -> Any:
  """``tree * numerator / norm``, or zeros where ``norm`` is (near) zero."""
  scale = jnp.where(norm > TINY, numerator / jnp.maximum(norm, TINY), 0.0)
  return optax.tree.scale(scale, tree)


def ascent_point(
  grads: optax.Updates,
  params: optax.Params,
  rho: jax.Array,
  *,
  adaptive: bool = False,
  adaptive_eta: float = 0.0,
) -> optax.Params:
  r"""The SAM ascent point ``w + ε`` (in the dtypes of ``params``).

  ``ε = ρ g / ||g||``, or with ``adaptive`` the ASAM perturbation
  ``ε = ρ T² g / ||T g||`` with ``T = |w| + adaptive_eta``. A zero gradient
  gives ``ε = 0``.
  """
  if adaptive:
    scaling = jax.tree.map(lambda w: jnp.abs(w) + adaptive_eta, params)
    scaled = optax.tree.mul(scaling, grads)
    direction, norm = optax.tree.mul(scaling, scaled), optax.tree.norm(scaled)
  else:
    direction, norm = grads, optax.tree.norm(grads)
  perturbation = safe_scale(direction, rho, norm)
  return jax.tree.map(
    lambda w, e: (w + e).astype(w.dtype), params, perturbation
  )


def ascent_gradient(
  grads: optax.Updates,
  params: optax.Params,
  grad_fn: GradFn,
  rho: jax.Array,
  *,
  adaptive: bool = False,
  adaptive_eta: float = 0.0,
) -> optax.Updates:
  """The SAM gradient ``grad_fn(w + ε)``, cast like ``grads``: one pass."""
  point = ascent_point(
    grads, params, rho, adaptive=adaptive, adaptive_eta=adaptive_eta
  )
  return optax.tree.cast_like(grad_fn(point), grads)


class SAMState(NamedTuple):
  """State of :func:`sam`.

  Attributes:
    count: number of updates done so far (``int32[]``); schedules of ``rho``
      are evaluated on it.
    inner_state: state of the wrapped optimizer.
  """

  count: jax.Array
  inner_state: optax.OptState


def sam(
  optimizer: optax.GradientTransformation,
  rho: optax.ScalarOrSchedule = 0.05,
  *,
  adaptive: bool = False,
  adaptive_eta: float = 0.01,
) -> optax.GradientTransformationExtraArgs:
  r"""Sharpness-aware minimization (SAM), optionally adaptive (ASAM).

  Every step takes the gradient at the worst point of a ball of radius ρ
  around the weights, to first order, and hands it to ``optimizer``, which
  updates the weights themselves:

  .. math::
    \varepsilon_t &= \rho_t \, g_t / \|g_t\|, \qquad
      g_t = \nabla L_{B_t}(w_t) \\
    w_{t+1} &= w_t + \mathrm{optimizer}\big(\nabla L_{B_t}(w_t +
      \varepsilon_t)\big)

  With ``adaptive=True`` the ball is scaled by the weights as in ASAM,
  :math:`\varepsilon_t = \rho_t T_t^2 g_t / \|T_t g_t\|` with
  :math:`T_t = |w_t| + \eta_A` (element-wise), which makes the step invariant
  to rescaling the weights. Norms are global L2 norms over all leaves; a zero
  gradient gives a zero perturbation (no NaN).

  The params the caller holds are the weights ``w`` (nothing to undo before
  evaluation). To clip the gradient that updates the weights, clip inside the
  optimizer, ``sam(optax.chain(optax.clip_by_global_norm(1.0), adam))``; a
  clipping placed before :func:`sam` in a chain changes only the ascent
  direction.

  .. note::
    Gradient passes per step: two, the caller's ``grads`` at ``w`` and one
    call of ``grad_fn`` at ``w + ε``. ``grad_fn(p)`` is required and must
    return the gradient of the same minibatch loss at ``p``.

  Args:
    optimizer: the base optimizer (Adam in the GraphSAM paper), any optax
      transformation; it receives the SAM gradient, the clean weights and the
      extra arguments of ``update``.
    rho: ρ >= 0, the radius of the perturbation ball, a float or a schedule of
      the step count (default 0.05, Foret et al.). ``0`` gives the inner
      optimizer exactly.
    adaptive: use the ASAM perturbation (default ``False``).
    adaptive_eta: η_A >= 0 of ASAM's scaling ``|w| + η_A`` (default 0.01,
      Kwon et al.); ignored unless ``adaptive``.

  Returns:
    An :class:`optax.GradientTransformationExtraArgs` with state
    :class:`SAMState`. Its ``update(grads, state, params, *, grad_fn,
    **extra_args)`` requires ``params`` and ``grad_fn`` and forwards
    ``extra_args`` to ``optimizer``.

  Raises:
    ValueError: on ``rho < 0`` or ``adaptive_eta < 0``; at update time when
      ``params`` or ``grad_fn`` is missing.

  References:
    Foret et al., `Sharpness-Aware Minimization for Efficiently Improving
    Generalization <https://arxiv.org/abs/2010.01412>`_, ICLR 2021.

    Kwon et al., `ASAM: Adaptive Sharpness-Aware Minimization for
    Scale-Invariant Learning of Deep Neural Networks
    <https://arxiv.org/abs/2102.11600>`_, ICML 2021.

  Examples:
    >>> import jax, jax.numpy as jnp, optax
    >>> from graphsam_optax._sam import sam
    >>> loss = lambda w: jnp.sum(w**2 * jnp.array([1.0, 4.0]))
    >>> tx = sam(optax.sgd(0.1), rho=0.05)
    >>> grad_fn = jax.grad(loss)
    >>> @jax.jit
    ... def step(params, state):
    ...   grads = grad_fn(params)
    ...   updates, state = tx.update(grads, state, params, grad_fn=grad_fn)
    ...   return optax.apply_updates(params, updates), state
    >>> params = jnp.ones(2)
    >>> state = tx.init(params)
    >>> for _ in range(3):
    ...   params, state = step(params, state)
    ...   print(f"{float(loss(params)):.4f}")
    0.7401
    0.3975
    0.2443
  """
  check_rho(rho)
  check_at_least(
    "adaptive_eta", adaptive_eta, 0, "it is the offset of ASAM's |w| + eta."
  )
  optimizer = optax.with_extra_args_support(optimizer)

  def init_fn(params: optax.Params) -> SAMState:
    return SAMState(
      count=jnp.zeros([], jnp.int32), inner_state=optimizer.init(params)
    )

  def update_fn(
    updates: optax.Updates,
    state: SAMState,
    params: optax.Params | None = None,
    *,
    grad_fn: GradFn | None = None,
    **extra_args: Any,
  ) -> tuple[optax.Updates, SAMState]:
    check_call("sam", params, grad_fn)
    sam_grads = ascent_gradient(
      updates,
      params,
      grad_fn,
      value_at(rho, state.count),
      adaptive=adaptive,
      adaptive_eta=adaptive_eta,
    )
    new_updates, inner_state = optimizer.update(
      sam_grads, state.inner_state, params, **extra_args
    )
    return new_updates, SAMState(
      count=optax.safe_increment(state.count), inner_state=inner_state
    )

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
