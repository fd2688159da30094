"""Friendly-SAM: the perturbation without the full-gradient component.

Where the authors' code (github.com/nblt/F-SAM, ``utils.py``, class
``FriendlySAM``) and the paper differ, and what this module does:

1. **Which moving average is removed.** The paper removes the moving average
   *including* the current gradient, ``m_t = λ m_{t-1} + (1-λ) g_t``,
   ``d_t = g_t - σ m_t``; the code removes the previous one, ``d_t = g_t -
   σ m_{t-1}``, and updates ``m`` afterwards. The default follows the paper;
   ``use_previous=True`` follows the code.
2. **Initialization.** The code sets ``m`` to the first gradient and
   perturbs the first step along it unchanged (SAM's first step); the paper's
   ``m_0 = 0`` makes the first direction ``(1 - σ(1-λ)) g_1``, the same
   direction when ``σ(1-λ) < 1``, but leaves ``m_1 = (1-λ) g_1`` (an
   unbiased-start difference that fades over ``1/(1-λ)`` steps). Here
   ``m_0 = 0`` by default; with ``use_previous=True`` the code's
   initialization is used too.
3. **Norm guard.** The code divides by ``||d|| + 1e-12``; here a zero ``d``
   gives no perturbation.
"""

from typing import Any
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from graphsam_optax import _common


class FSAMState(NamedTuple):
  """State of :func:`fsam`.

  Attributes:
    count: number of updates done so far (``int32[]``); schedules of ``rho``
      are evaluated on it.
    ema: ``m``, the moving average of the clean gradients, F-SAM's estimate
      of the full gradient (pytree like the params; zeros before the first
      step).
    inner_state: state of the wrapped optimizer.
  """

  count: jax.Array
  ema: optax.Updates
  inner_state: optax.OptState


def fsam(
  optimizer: optax.GradientTransformation,
  rho: optax.ScalarOrSchedule = 0.05,
  sigma: float = 1.0,
  ema_decay: float = 0.95,
  *,
  use_previous: bool = False,
) -> optax.GradientTransformationExtraArgs:
  r"""Friendly-SAM: perturb along the batch-specific part of the gradient.

  Li et al. (2024) find that the full-gradient component of SAM's
  perturbation hurts generalization and the batch-specific noise helps. F-SAM
  estimates the full gradient by a moving average of the minibatch gradients
  and removes it from the ascent direction:

  .. math::
    g_t &= \nabla L_{B_t}(w_t), \qquad
    m_t = \lambda m_{t-1} + (1 - \lambda)\, g_t, \qquad m_0 = 0 \\
    d_t &= g_t - \sigma m_t \\
    w_{t+1} &= w_t + \mathrm{optimizer}\big(\nabla L_{B_t}(w_t +
      \rho_t\, d_t / \|d_t\|)\big)

  Norms are global L2 norms; a zero ``d`` gives no perturbation. The params
  the caller holds are the weights ``w``.

  .. note::
    Gradient passes per step: two, the caller's ``grads`` at ``w`` and one
    call of ``grad_fn`` at ``w + ε``; one on steps where ``ρ_t = 0``.
    ``grad_fn(p)`` is required and must return the gradient of the same
    minibatch loss at ``p``.

  Args:
    optimizer: the base optimizer, any optax transformation; it receives the
      gradient at the perturbed point, the weights and the extra arguments of
      ``update``.
    rho: ρ >= 0, the radius, a float or a schedule of the step count
      (default 0.05, the family's SAM radius; the authors run 0.2 with SGD on
      CIFAR). ``0`` gives the base optimizer.
    sigma: σ >= 0, how much of the moving average is removed (default 1.0,
      the paper's). ``0`` is SAM.
    ema_decay: λ in [0, 1), the decay of the moving average (default 0.95,
      the authors' ``run.sh``; their logs also show 0.6).
    use_previous: remove the previous moving average, ``d_t = g_t - σ
      m_{t-1}``, with ``m`` started at the first gradient, as the authors'
      code does (default ``False``: the paper).

  Returns:
    An :class:`optax.GradientTransformationExtraArgs` with state
    :class:`FSAMState`. Its ``update(grads, state, params, *, grad_fn,
    **extra_args)`` requires ``params`` and ``grad_fn``.

  Raises:
    ValueError: on ``rho < 0``, ``sigma < 0`` or ``ema_decay`` outside
      [0, 1); at update time when ``params`` or ``grad_fn`` is missing.

  References:
    Li et al., `Friendly Sharpness-Aware Minimization
    <https://arxiv.org/abs/2403.12350>`_, CVPR 2024.

  Examples:
    >>> import jax, jax.numpy as jnp, optax
    >>> from graphsam_optax import fsam
    >>> loss = lambda w: jnp.sum(w**2 * jnp.array([1.0, 4.0]))
    >>> tx = fsam(optax.sgd(0.1), rho=0.05, sigma=1.0, ema_decay=0.9)
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
    0.3966
    0.2481
  """
  _common.check_rho(rho)
  _common.check_float(
    "sigma",
    sigma,
    "it is the share of the moving-average gradient removed from the "
    "perturbation (0 is SAM).",
    low=0,
  )
  _common.check_float(
    "ema_decay",
    ema_decay,
    "it is the decay of the moving average of gradients.",
    low=0,
    high=1,
    high_open=True,
  )
  optimizer = optax.with_extra_args_support(optimizer)

  def init_fn(params: optax.Params) -> FSAMState:
    return FSAMState(
      count=jnp.zeros([], jnp.int32),
      ema=optax.tree.zeros_like(params),
      inner_state=optimizer.init(params),
    )

  def update_fn(
    updates: optax.Updates,
    state: FSAMState,
    params: optax.Params | None = None,
    *,
    grad_fn: _common.GradFn | None = None,
    **extra_args: Any,
  ) -> tuple[optax.Updates, FSAMState]:
    _common.check_call("fsam", params, grad_fn)
    ema = jax.tree.map(
      lambda m, g: (ema_decay * m + (1 - ema_decay) * g).astype(m.dtype),
      state.ema,
      updates,
    )
    if use_previous:
      first = state.count == 0
      removed = optax.tree.where(first, optax.tree.zeros_like(ema), state.ema)
      ema = optax.tree.where(first, optax.tree.cast_like(updates, ema), ema)
    else:
      removed = ema
    direction = jax.tree.map(
      lambda g, m: (g - sigma * m).astype(g.dtype), updates, removed
    )
    sam_grads = _common.ascent_gradient_unless_zero(
      _common.value_at(rho, state.count), updates, params, grad_fn, direction
    )
    new_updates, inner_state = optimizer.update(
      sam_grads, state.inner_state, params, **extra_args
    )
    return new_updates, FSAMState(
      count=optax.safe_increment(state.count),
      ema=ema,
      inner_state=inner_state,
    )

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
