"""LookSAM: a SAM step every k steps, its sharpness direction reused between."""

from typing import Any
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from graphsam_optax import _common


class LookSAMState(NamedTuple):
  """State of :func:`looksam`.

  Attributes:
    count: number of updates done so far (``int32[]``). Step ``count`` is a
      SAM step when ``count % k == 0``.
    sharpness_direction: ``g_v``, the component of the last SAM gradient
      orthogonal to the clean gradient of its step (pytree like the params;
      zeros before the first step).
    inner_state: state of the wrapped optimizer.
  """

  count: jax.Array
  sharpness_direction: optax.Updates
  inner_state: optax.OptState


def looksam(
  optimizer: optax.GradientTransformation,
  k: int = 8,
  alpha: float = 0.2,
  rho: optax.ScalarOrSchedule = 1e-4,
) -> optax.GradientTransformationExtraArgs:
  r"""LookSAM: SAM every ``k`` steps, its sharpness component reused between.

  The SAM gradient :math:`g_s` splits into a part along the clean gradient
  :math:`g` and an orthogonal part :math:`g_v` that carries the sharpness
  information and changes slowly. LookSAM computes :math:`g_s` every ``k``
  steps only and, in between, adds the stored :math:`g_v`, rescaled to the
  current gradient's norm, to the clean gradient (one pass):

  .. math::
    g_t &= \nabla L_{B_t}(w_t) \\
    t \bmod k = 0: \quad
      g_{s} &= \nabla L_{B_t}(w_t + \rho_t\, g_t / \|g_t\|), \qquad
      g_v = g_s - \frac{\langle g_t, g_s\rangle}{\|g_t\|^2}\, g_t,
      \qquad d_t = g_s \\
    \text{otherwise:} \quad
      d_t &= g_t + \alpha\, \frac{\|g_t\|}{\|g_v\|}\, g_v \\
    w_{t+1} &= w_t + \mathrm{optimizer}(d_t)

  (:math:`g_s - \|g_s\| \cos(g_t, g_s)\, g_t / \|g_t\|` in the paper's
  words; computed as the part of :math:`g_s - g_t` orthogonal to :math:`g_t`,
  the same vector with a rounding error proportional to
  :math:`\|g_s - g_t\|`, so that ρ = 0 stores exactly zero.) The first step
  is a SAM step. The reused term has norm :math:`\alpha \|g_t\|` whatever
  ρ is: α, not ρ, sets the strength of the sharpness term between SAM steps
  (for ρ → 0 it keeps the direction of the Hessian's action, for ρ = 0 it
  vanishes), so a large α can hold the weights off a sharp minimum. Divisions
  are guarded: a zero :math:`g_t` or :math:`g_v` contributes nothing instead
  of NaN. The params the caller holds are the weights ``w``.

  .. note::
    Gradient passes per step: two on SAM steps (every ``k``-th, starting with
    the first), one otherwise; ``1 + 1/k`` on average. ``grad_fn(p)`` is
    required and must return the gradient of the same minibatch loss at
    ``p``; it is called inside a ``jax.lax.cond`` branch that runs on SAM
    steps only.

  Args:
    optimizer: the base optimizer, any optax transformation; it receives
      :math:`d_t`, the weights and the extra arguments of ``update``.
    k: steps between SAM gradients, an integer >= 1 (default 8, as the
      GraphSAM paper ran LookSAM). ``1`` is :func:`sam`.
    alpha: α >= 0, the weight of the reused direction (default 0.2, as the
      GraphSAM paper ran LookSAM). ``0`` takes plain steps between SAM steps.
    rho: ρ >= 0, the radius of the perturbation ball, a float or a schedule of
      the step count (default 1e-4, as the GraphSAM paper ran LookSAM).

  Returns:
    An :class:`optax.GradientTransformationExtraArgs` with state
    :class:`LookSAMState`. Its ``update(grads, state, params, *, grad_fn,
    **extra_args)`` requires ``params`` and ``grad_fn`` and forwards
    ``extra_args`` to ``optimizer``.

  Raises:
    ValueError: on ``k`` not an integer >= 1, ``alpha < 0`` or ``rho < 0``;
      at update time when ``params`` or ``grad_fn`` is missing.

  References:
    Liu et al., `Towards Efficient and Scalable Sharpness-Aware Minimization
    <https://arxiv.org/abs/2203.02714>`_, CVPR 2022.

  Examples:
    >>> import jax, jax.numpy as jnp, optax
    >>> from graphsam_optax import looksam
    >>> loss = lambda w: jnp.sum(w**2 * jnp.array([1.0, 4.0]))
    >>> tx = looksam(optax.sgd(0.05), k=2, alpha=0.5, rho=0.1)
    >>> grad_fn = jax.grad(loss)
    >>> @jax.jit
    ... def step(params, state):
    ...   grads = grad_fn(params)
    ...   updates, state = tx.update(grads, state, params, grad_fn=grad_fn)
    ...   return optax.apply_updates(params, updates), state
    >>> params = jnp.ones(2)
    >>> state = tx.init(params)
    >>> for _ in range(4):
    ...   params, state = step(params, state)
    ...   print(f"{float(loss(params)):.4f}")
    2.0654
    1.2338
    0.7762
    0.6308
  """
  _common.check_integer(
    "k", k, 1, "it is the number of steps between SAM gradients."
  )
  _common.check_float(
    "alpha",
    alpha,
    "it is the weight of the reused sharpness direction.",
    low=0,
  )
  _common.check_rho(rho)
  optimizer = optax.with_extra_args_support(optimizer)

  def init_fn(params: optax.Params) -> LookSAMState:
    return LookSAMState(
      count=jnp.zeros([], jnp.int32),
      sharpness_direction=optax.tree.zeros_like(params),
      inner_state=optimizer.init(params),
    )

  def update_fn(
    updates: optax.Updates,
    state: LookSAMState,
    params: optax.Params | None = None,
    *,
    grad_fn: _common.GradFn | None = None,
    **extra_args: Any,
  ) -> tuple[optax.Updates, LookSAMState]:
    _common.check_call("looksam", params, grad_fn)
    grad_norm = _common.norm(updates)
    unit = lambda: _common.safe_scale(updates, 1.0, grad_norm)
    is_sam = jnp.mod(state.count, k) == 0

    # Only the gradient handed to the inner optimizer and a scalar leave the
    # lax.cond, and no parameter-sized value enters it but the inputs: the new
    # g_v is selected outside, where XLA writes it in place of the old one.
    def sam_step():
      sam_grads = _common.ascent_gradient(
        updates, params, grad_fn, _common.value_at(rho, state.count)
      )
      along = optax.tree.vdot(unit(), optax.tree.sub(sam_grads, updates))
      return sam_grads, along.astype(grad_norm.dtype)

    def reuse_step():
      direction = state.sharpness_direction
      reused = _common.safe_scale(
        direction, alpha * grad_norm, _common.norm(direction)
      )
      combined = optax.tree.add(updates, reused)
      return optax.tree.cast_like(combined, updates), jnp.zeros_like(grad_norm)

    new_grads, along = jax.lax.cond(is_sam, sam_step, reuse_step)
    # After a SAM step, g_v is the part of g_s - g orthogonal to g: computed
    # so, its rounding error scales with ||g_s - g|| (small for small rho),
    # not with ||g_s||, and rho = 0 gives exactly zero.
    orthogonal = optax.tree.add_scale(
      optax.tree.sub(new_grads, updates), -along, unit()
    )
    sharpness_direction = optax.tree.where(
      is_sam,
      optax.tree.cast_like(orthogonal, state.sharpness_direction),
      state.sharpness_direction,
    )
    new_updates, inner_state = optimizer.update(
      new_grads, state.inner_state, params, **extra_args
    )
    return new_updates, LookSAMState(
      count=optax.safe_increment(state.count),
      sharpness_direction=sharpness_direction,
      inner_state=inner_state,
    )

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
