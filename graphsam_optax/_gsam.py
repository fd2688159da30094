"""GSAM: SAM plus an ascent along the clean gradient's orthogonal part.

Where the authors' code and the paper differ, and what this module does. The
authors published a JAX version (google-research/big_vision,
``trainers/proj/gsam/gsam.py``) and a PyTorch re-implementation
(github.com/juntang-zhuang/GSAM, ``gsam/gsam.py``):

1. **Distributed decomposition.** Both codes decompose each worker's own
   gradients and average the GSAM directions afterwards (the perturbation is
   per worker, as in m-sharpness); the paper writes one decomposition of the
   batch gradient. Here the decomposition is of the gradients the caller
   passes: one per step, as the paper.
2. **Norm guard.** The codes add ``1e-12`` to norms; here zero norms give a
   zero perturbation and a zero orthogonal part (no NaN).
3. **Options the paper does not use.** ``adaptive_perturbation`` (PyTorch
   default ``True`` in its CIFAR example) and big_vision's
   ``minimize_fp=False`` (decompose the perturbed gradient against the
   clean one instead) are not offered; the default follows the paper,
   ``minimize_fp=True``, non-adaptive.
4. **ρ schedule.** Both codes tie ρ to the learning rate,
   ``ρ_t = ρ_min + (ρ_max - ρ_min)(η_t - η_min)/(η_max - η_min)``
   (:func:`graphsam_optax.lr_proportional_schedule`); the PyTorch example
   instead decays ρ linearly. Here ρ is any schedule; the registry's ``gsam``
   ties it to the learning rate it is given.
"""

from typing import Any
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from graphsam_optax import _common


class GSAMState(NamedTuple):
  """State of :func:`gsam`.

  Attributes:
    count: number of updates done so far (``int32[]``); schedules of ``rho``
      are evaluated on it.
    inner_state: state of the wrapped optimizer.
  """

  count: jax.Array
  inner_state: optax.OptState


def gsam(
  optimizer: optax.GradientTransformation,
  rho: optax.ScalarOrSchedule = 0.05,
  alpha: float = 0.2,
) -> optax.GradientTransformationExtraArgs:
  r"""GSAM: the SAM gradient plus an ascent on the surrogate gap.

  The SAM gradient :math:`g_p` minimizes the perturbed loss. GSAM (Zhuang et
  al., 2022) also minimizes the surrogate gap :math:`h = f_p - f` without
  changing the perturbed loss, by an ascent of the clean loss along the part
  of its gradient :math:`g` orthogonal to :math:`g_p`:

  .. math::
    g_t &= \nabla L_{B_t}(w_t), \qquad
    g_p = \nabla L_{B_t}(w_t + \rho_t\, g_t / \|g_t\|) \\
    g_\perp &= g_t - \frac{\langle g_t, g_p\rangle}{\|g_p\|^2}\, g_p \\
    w_{t+1} &= w_t + \mathrm{optimizer}(g_p - \alpha\, g_\perp)

  :math:`g_\perp` is computed as the part of :math:`g_t - g_p` orthogonal to
  :math:`g_p` (the same vector, with a rounding error proportional to
  :math:`\|g_t - g_p\|`), so that a small ρ gives a small term and ρ = 0
  exactly none. The paper ties ρ to the learning rate
  (:func:`lr_proportional_schedule`); any schedule may be passed. The params
  the caller holds are the weights ``w``.

  .. note::
    Gradient passes per step: two, the caller's ``grads`` at ``w`` and one
    call of ``grad_fn`` at ``w + ε``; one on steps where ``ρ_t = 0``.
    ``grad_fn(p)`` is required and must return the gradient of the same
    minibatch loss at ``p``.

  Args:
    optimizer: the base optimizer, any optax transformation; it receives
      :math:`g_p - \alpha g_\perp`, the weights and the extra arguments of
      ``update``.
    rho: ρ >= 0, the radius, a float or a schedule of the step count
      (default 0.05, the family's SAM radius). ``0`` gives the base
      optimizer.
    alpha: α >= 0, the weight of the surrogate-gap ascent (default 0.2, the
      authors' PyTorch example; their ViT configuration uses 0.6). ``0`` is
      SAM.

  Returns:
    An :class:`optax.GradientTransformationExtraArgs` with state
    :class:`GSAMState`. Its ``update(grads, state, params, *, grad_fn,
    **extra_args)`` requires ``params`` and ``grad_fn``.

  Raises:
    ValueError: on ``rho < 0`` or ``alpha < 0``; at update time when
      ``params`` or ``grad_fn`` is missing.

  References:
    Zhuang et al., `Surrogate Gap Minimization Improves Sharpness-Aware
    Training <https://arxiv.org/abs/2203.08065>`_, ICLR 2022.

  Examples:
    >>> import jax, jax.numpy as jnp, optax
    >>> from graphsam_optax import gsam
    >>> loss = lambda w: jnp.sum(w**2 * jnp.array([1.0, 4.0]))
    >>> tx = gsam(optax.sgd(0.1), rho=0.05, alpha=0.2)
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
    0.7417
    0.4009
    0.2465
  """
  _common.check_rho(rho)
  _common.check_float(
    "alpha",
    alpha,
    "it is the weight of GSAM's ascent along the orthogonal gradient.",
    low=0,
  )
  optimizer = optax.with_extra_args_support(optimizer)

  def init_fn(params: optax.Params) -> GSAMState:
    return GSAMState(
      count=jnp.zeros([], jnp.int32), inner_state=optimizer.init(params)
    )

  def update_fn(
    updates: optax.Updates,
    state: GSAMState,
    params: optax.Params | None = None,
    *,
    grad_fn: _common.GradFn | None = None,
    **extra_args: Any,
  ) -> tuple[optax.Updates, GSAMState]:
    _common.check_call("gsam", params, grad_fn)
    rho_now = _common.value_at(rho, state.count)

    def gsam_direction():
      perturbed = _common.ascent_gradient(updates, params, grad_fn, rho_now)
      unit = _common.normalized(perturbed)
      difference = optax.tree.sub(updates, perturbed)
      along = optax.tree.vdot(difference, unit)
      orthogonal = optax.tree.add_scale(difference, -along, unit)
      direction = optax.tree.add_scale(perturbed, -alpha, orthogonal)
      return optax.tree.cast_like(direction, updates)

    # With rho = 0 the perturbed gradient is `updates` and the orthogonal
    # part zero: the second pass is skipped.
    direction = jax.lax.cond(rho_now > 0, gsam_direction, lambda: updates)
    new_updates, inner_state = optimizer.update(
      direction, state.inner_state, params, **extra_args
    )
    return new_updates, GSAMState(
      count=optax.safe_increment(state.count), inner_state=inner_state
    )

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
