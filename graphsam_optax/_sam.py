"""SAM and ASAM with the library's calling convention."""

from typing import Any
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from graphsam_optax import _common


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
  skip_zero_rho: bool = False,
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
    call of ``grad_fn`` at ``w + ε``. With ``skip_zero_rho``, one on steps
    where ``ρ_t = 0`` (the ascent point is ``w``), so that a late-phase
    schedule (:func:`late_phase_schedule`) saves its passes. ``grad_fn(p)`` is
    required and must return the gradient of the same minibatch loss at
    ``p``.

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
    skip_zero_rho: skip the second pass (a ``jax.lax.cond`` branch) on steps
      where ``ρ_t = 0``, for schedules that hold ρ at zero for a while
      (late-phase SAM); off by default, so that the step is one straight
      program.

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
    >>> from graphsam_optax import sam
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
  _common.check_rho(rho)
  _common.check_float(
    "adaptive_eta", adaptive_eta, "it is the offset of ASAM's |w| + eta.", low=0
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
    grad_fn: _common.GradFn | None = None,
    **extra_args: Any,
  ) -> tuple[optax.Updates, SAMState]:
    _common.check_call("sam", params, grad_fn)
    rho_now = _common.value_at(rho, state.count)

    # While rho is zero the ascent point is w and its gradient `updates`:
    # with skip_zero_rho the second pass is skipped in a branch. Without it
    # the step is one straight program (grad_fn called outside any branch).
    scaling = dict(adaptive=adaptive, adaptive_eta=adaptive_eta)
    if skip_zero_rho:
      sam_grads = _common.ascent_gradient_unless_zero(
        rho_now, updates, params, grad_fn, **scaling
      )
    else:
      sam_grads = _common.ascent_gradient(
        updates, params, grad_fn, rho_now, **scaling
      )
    new_updates, inner_state = optimizer.update(
      sam_grads, state.inner_state, params, **extra_args
    )
    return new_updates, SAMState(
      count=optax.safe_increment(state.count), inner_state=inner_state
    )

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
