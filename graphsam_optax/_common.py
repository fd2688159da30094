"""Validators, schedule evaluation and tree helpers shared by this library.

Every factory of the library validates its arguments with the ``check_*``
functions here, so that every error names the caller's argument, its value and
what to do. Hyperparameters given as arrays (a tracer inside ``jax.jit``, or
the arrays ``optax.inject_hyperparams`` passes) are not checked: only Python
numbers have a value to check when the factory runs.
"""

import math
import numbers
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

# Smallest norm we divide by: below it a direction is treated as zero, so zero
# gradients give a zero perturbation instead of NaN.
TINY = 1e-12

GradFn = Callable[[optax.Params], optax.Updates]


def is_concrete(value: Any) -> bool:
  """Whether a hyperparameter is a Python number that can be validated.

  Arrays, traced or not, are skipped: ``optax.inject_hyperparams`` calls a
  factory again with arrays, and a training step built inside ``jax.jit``
  passes tracers, so that one compiled step serves every value.
  """
  return isinstance(value, (int, float)) and not isinstance(value, bool)


def _interval(low: float, high: float, low_open: bool, high_open: bool) -> str:
  if low == -math.inf and high == math.inf:
    return "a finite number"
  if high == math.inf:
    return f"{'>' if low_open else '>='} {low:g}"
  return (
    f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
  )


def check_float(
  name: str,
  value: Any,
  meaning: str,
  *,
  low: float = -math.inf,
  high: float = math.inf,
  low_open: bool = False,
  high_open: bool = False,
) -> None:
  """Raises ``ValueError`` naming ``name`` unless ``value`` is in range.

  A Python number must be finite and lie in the interval from ``low`` to
  ``high`` (closed unless ``low_open``/``high_open``); NaN and infinities are
  always rejected. Arrays and schedules are not checked.
  """
  if not is_concrete(value):
    return
  above = value > low if low_open else value >= low
  below = value < high if high_open else value <= high
  if not (math.isfinite(value) and above and below):
    interval = _interval(low, high, low_open, high_open)
    raise ValueError(
      f"{name} must be {interval}, got {name}={value!r}: {meaning}"
    )


def check_integer(name: str, value: Any, lower: int, meaning: str) -> None:
  """Raises ``ValueError`` unless ``value`` is an integer >= ``lower``.

  Integer arrays (from ``optax.inject_hyperparams``) are not checked.
  """
  if isinstance(value, jax.Array):
    return
  integral = isinstance(value, numbers.Integral) and not isinstance(value, bool)
  if not integral or value < lower:
    raise ValueError(
      f"{name} must be an integer >= {lower}, got {name}={value!r}: {meaning}"
    )


def check_rho(rho: optax.ScalarOrSchedule, name: str = "rho") -> None:
  """Validates the radius ρ of a SAM step (a schedule is not checked)."""
  check_float(
    name,
    rho,
    "it is the radius of the perturbation ball (0 gives the inner optimizer).",
    low=0,
  )


def value_at(
  hyperparameter: optax.ScalarOrSchedule,
  count: jax.Array,
  dtype: jnp.dtype = jnp.float32,
) -> jax.Array:
  """A number, array or schedule at the step ``count``, as ``dtype[]``."""
  value = hyperparameter(count) if callable(hyperparameter) else hyperparameter
  return jnp.asarray(value, dtype=dtype)


def check_call(
  method: str, params: Any, grad_fn: Any, *, needs_grad_fn: bool = True
) -> None:
  """Raises ``ValueError`` when ``update`` misses ``params`` or ``grad_fn``."""
  if params is None:
    raise ValueError(
      f"{method} needs params: call tx.update(grads, state, params, "
      "grad_fn=...) with the params the gradient was taken at."
    )
  if needs_grad_fn and grad_fn is None:
    raise ValueError(
      f"{method} needs grad_fn: pass tx.update(grads, state, params, "
      "grad_fn=g) where g(p) returns the gradient of the same batch's loss "
      "at p; it is called on SAM steps only."
    )


def safe_divide(numerator: jax.Array, norm: jax.Array) -> jax.Array:
  """``numerator / norm``, or zero where ``norm`` is (near) zero."""
  return jnp.where(norm > TINY, numerator / jnp.maximum(norm, TINY), 0.0)


def safe_scale(tree: Any, numerator: jax.Array, norm: jax.Array) -> Any:
  """``tree * numerator / norm``, or zeros where ``norm`` is (near) zero."""
  return optax.tree.scale(safe_divide(numerator, norm), tree)


def norm(tree: Any, squared: bool = False) -> jax.Array:
  """``optax.tree.norm(tree, squared=squared)`` behind an optimization barrier.

  An inner Adam squares the same gradient for its second moment; without the
  barrier XLA shares the squares between the two and materializes them, a
  parameter-sized temporary (on CPU, freshly mapped memory on every step).
  """
  return optax.tree.norm(jax.lax.optimization_barrier(tree), squared=squared)


def normalized(tree: Any) -> Any:
  """``tree / ||tree||`` (zeros for a zero tree), leaves keep their dtype."""
  return optax.tree.cast_like(safe_scale(tree, 1.0, norm(tree)), tree)


def perturbation_direction(
  grads: optax.Updates,
  params: optax.Params,
  *,
  adaptive: bool,
  adaptive_eta: float,
) -> tuple[optax.Updates, jax.Array]:
  """SAM's ascent direction and the norm that scales it to radius 1.

  SAM: ``(g, ||g||)``. ASAM: ``(T² g, ||T g||)`` with ``T = |w| +
  adaptive_eta``, so that ``ρ · direction / norm`` is the perturbation.
  """
  if not adaptive:
    return grads, norm(grads)
  scaling = jax.tree.map(lambda w: jnp.abs(w) + adaptive_eta, params)
  scaled = optax.tree.mul(scaling, grads)
  return optax.tree.mul(scaling, scaled), norm(scaled)


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
  direction, norm = perturbation_direction(
    grads, params, adaptive=adaptive, adaptive_eta=adaptive_eta
  )
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


def ascent_gradient_unless_zero(
  rho: jax.Array,
  grads: optax.Updates,
  params: optax.Params,
  grad_fn: GradFn,
  direction: optax.Updates | None = None,
  *,
  adaptive: bool = False,
  adaptive_eta: float = 0.0,
) -> optax.Updates:
  """``grad_fn(w + ρ d / ||d||)``, or ``grads`` itself while ``ρ = 0``.

  ``d`` is ``direction``, by default ``grads`` (SAM's ascent); ``adaptive``
  and ``adaptive_eta`` scale it as :func:`ascent_point` does (ASAM). With
  ``ρ = 0`` the ascent point is ``w`` and its gradient is ``grads``: the pass
  is skipped (a ``jax.lax.cond`` branch), so that a radius schedule that is
  zero for a while (:func:`graphsam_optax.late_phase_schedule`) saves the
  passes too.
  """
  direction = grads if direction is None else direction

  def ascent():
    point = ascent_point(
      direction, params, rho, adaptive=adaptive, adaptive_eta=adaptive_eta
    )
    return optax.tree.cast_like(grad_fn(point), grads)

  return jax.lax.cond(rho > 0, ascent, lambda: grads)


def sam_or_plain_update(
  is_sam: jax.Array,
  updates: optax.Updates,
  params: optax.Params,
  grad_fn: GradFn,
  rho: jax.Array,
  optimizer: optax.GradientTransformationExtraArgs,
  inner_state: optax.OptState,
  **extra_args: Any,
) -> tuple[optax.Updates, optax.OptState]:
  """The inner step on the SAM gradient when ``is_sam``, else on ``updates``.

  ``grad_fn`` runs inside the ``lax.cond`` branch of SAM steps only, so a
  plain step costs no second pass.
  """
  grads = jax.lax.cond(
    is_sam,
    lambda: ascent_gradient(updates, params, grad_fn, rho),
    lambda: updates,
  )
  return optimizer.update(grads, inner_state, params, **extra_args)


def count_if(condition: jax.Array, counter: jax.Array) -> jax.Array:
  """``counter + 1`` where ``condition`` holds, else ``counter``."""
  return jnp.where(condition, optax.safe_increment(counter), counter)
