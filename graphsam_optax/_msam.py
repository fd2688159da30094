"""Momentum-SAM: the perturbation along the negative momentum, at no cost.

Where the authors' code (github.com/MarlonBecker/MSAM, ``optimizer/msam.py``
and ``optimizer/adamW_msam.py``) and the paper differ, and what this module
does:

1. **Adam.** The paper states MSAM for SGD with momentum; the code's AdamW
   variant perturbs along Adam's first moment (the raw EMA ``exp_avg``, no
   bias correction, which normalization removes anyway). The default here
   reads the base optimizer's own first moment, so with ``optax.adam`` it is
   the code's AdamW variant and with ``optax.sgd(momentum=μ)`` the paper's
   algorithm.
2. **Which ρ.** The code computes the perturbation of the next step at the
   end of a step, with the ρ of the current step, and (SGD variant) removes
   it at the next step with that step's ρ, so a changing ρ leaves a residue
   ``(ρ_{t+1} - ρ_t) v / ||v||`` in the weights. Here the held perturbation
   is stored as a factor and removed exactly, and the perturbation of step
   ``t`` uses ``ρ_t``.
3. **Norm guard.** The code divides by ``||v|| + 1e-12``; here a zero
   momentum gives a zero perturbation (:func:`graphsam_optax._common`).
"""

from typing import Any
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from graphsam_optax import _common

# Fields of optax states that hold a first moment (ScaleByAdamState and its
# relatives: mu; TraceState of sgd(momentum=...): trace).
_MOMENT_FIELDS = ("mu", "trace")


class MSAMState(NamedTuple):
  """State of :func:`msam`.

  The caller holds the perturbed point ``w + δ`` with ``δ = -scale · m``,
  ``m`` the momentum: the base optimizer's first moment, found in
  ``inner_state``, or MSAM's own moving average, ``momentum``, when the base
  keeps none. Only the factor is stored: with Adam the state is Adam's plus
  two scalars.

  Attributes:
    count: number of updates done so far (``int32[]``); schedules of ``rho``
      are evaluated on it.
    scale: ``ρ_t / ||m||`` of the held perturbation (``float32[]``;
      ``float64[]`` for float64 params); 0 before the first step.
    momentum: MSAM's own moving average of the gradients (pytree like the
      params) when the base optimizer keeps no first moment; ``None``
      otherwise.
    inner_state: state of the wrapped optimizer, which always sees the clean
      weights.
  """

  count: jax.Array
  scale: jax.Array
  momentum: optax.Updates | None
  inner_state: optax.OptState


def _moments(inner_state: optax.OptState, params: optax.Params) -> list:
  """The first moments shaped like ``params`` in ``inner_state``."""
  structure = jax.tree.structure(params)

  def moment(node):
    if not (isinstance(node, tuple) and hasattr(node, "_fields")):
      return None
    for field in _MOMENT_FIELDS:
      value = getattr(node, field, None)
      if value is not None and jax.tree.structure(value) == structure:
        return value
    return None

  nodes = jax.tree.leaves(
    inner_state, is_leaf=lambda node: moment(node) is not None
  )
  return [moment(node) for node in nodes if moment(node) is not None]


def _base_momentum(inner_state, params):
  """The base optimizer's first moment, ``None`` if it keeps none."""
  moments = _moments(inner_state, params)
  if len(moments) > 1:
    raise ValueError(
      f"msam found {len(moments)} first moments (fields "
      f"{' or '.join(_MOMENT_FIELDS)}) in the base optimizer's state and "
      "cannot tell which is the momentum: wrap one optimizer with momentum."
    )
  return moments[0] if moments else None


def _momentum(state: MSAMState, params: optax.Params) -> optax.Updates:
  if state.momentum is not None:
    return state.momentum
  return _base_momentum(state.inner_state, params)


def held_perturbation(state: MSAMState, params: optax.Params) -> optax.Updates:
  """The offset ``δ = -scale · m`` of the held params: ``params = w + δ``."""
  return jax.tree.map(
    lambda m, p: (-state.scale * m).astype(p.dtype),
    _momentum(state, params),
    params,
  )


def msam(
  optimizer: optax.GradientTransformation,
  rho: optax.ScalarOrSchedule = 3.0,
  *,
  momentum_decay: float = 0.9,
) -> optax.GradientTransformationExtraArgs:
  r"""Momentum-SAM: the gradient at the weights moved along -momentum.

  SAM's perturbation needs a gradient at the weights; MSAM (Becker, Altrock
  and Risse, 2024) takes instead the normalized negative momentum of the base
  optimizer, which is known without a gradient pass, so a step costs what the
  base optimizer costs:

  .. math::
    \tilde w_t &= w_t - \rho_t\, m_t / \|m_t\| \\
    m_{t+1} &= \mathrm{momentum}(m_t, \nabla L_{B_t}(\tilde w_t)) \\
    w_{t+1} &= w_t + \mathrm{optimizer}(\nabla L_{B_t}(\tilde w_t))

  The momentum ``m`` is the base optimizer's own first moment when its state
  holds exactly one (``mu`` of Adam and its relatives, ``trace`` of
  ``optax.sgd(momentum=...)``): no extra memory, and the authors' code with
  SGD and AdamW. A base without one (plain SGD) makes MSAM keep its own
  moving average of the gradients, ``m ← β m + (1 - β) g`` with
  ``β = momentum_decay``. Only the direction of ``m`` matters.

  **The calling convention** is GraphSAM's: the params the caller holds are
  the perturbed point ``w̃_t``, so the caller's gradient is the one MSAM
  updates with. The returned update applies the base step to the clean
  weights and moves the held point to the next perturbation. Evaluate and
  checkpoint :func:`eval_params` (the clean weights). Norms are global L2
  norms; a zero momentum (the first step) gives no perturbation.

  .. note::
    Gradient passes per step: one, the caller's; ``grad_fn`` is accepted and
    never called.

  Args:
    optimizer: the base optimizer, preferably one with momentum (Adam, SGD
      with momentum); it receives the gradient at the perturbed point, the
      clean weights and the extra arguments of ``update``.
    rho: ρ >= 0, the radius, a float or a schedule of the step count (default
      3.0, the authors' published runs with SGD and AdamW; MSAM's best radii
      are an order of magnitude above SAM's). ``0`` gives the base optimizer.
      The radius is a distance in weight space, so it does not carry over
      between models: on this repository's 2.3M-parameter graph transformer
      3.0 does not train (BBBP, 5 epochs: validation ROC-AUC 0.63, with 0.3
      0.93).
    momentum_decay: β in [0, 1), the decay of MSAM's own moving average,
      used only when the base optimizer keeps no first moment (default 0.9).

  Returns:
    An :class:`optax.GradientTransformationExtraArgs` with state
    :class:`MSAMState`. Its ``update(grads, state, params, *, grad_fn=None,
    **extra_args)`` requires ``params`` (the held, perturbed point).

  Raises:
    ValueError: on ``rho < 0`` or ``momentum_decay`` outside [0, 1); at
      ``init`` when the base optimizer's state holds several first moments;
      at update time when ``params`` is missing.

  References:
    Becker, Altrock and Risse, `Momentum-SAM: Sharpness Aware Minimization
    without Computational Overhead <https://arxiv.org/abs/2401.12033>`_,
    2024.

  Examples:
    >>> import jax, jax.numpy as jnp, optax
    >>> import graphsam_optax
    >>> loss = lambda w: jnp.sum((w - 1.0) ** 2 * jnp.array([1.0, 10.0]))
    >>> # A constant radius keeps the weights off the minimum: let it decay.
    >>> rho = optax.linear_schedule(0.05, 0.0, transition_steps=100)
    >>> tx = graphsam_optax.msam(optax.sgd(0.02, momentum=0.9), rho=rho)
    >>> @jax.jit
    ... def step(params, state):
    ...   grads = jax.grad(loss)(params)  # at the held (perturbed) point
    ...   updates, state = tx.update(grads, state, params)
    ...   return optax.apply_updates(params, updates), state
    >>> params = jnp.zeros(2)
    >>> state = tx.init(params)
    >>> for _ in range(150):
    ...   params, state = step(params, state)
    >>> w = graphsam_optax.eval_params(state, params)
    >>> print(w.round(3), round(float(loss(w)), 6))
    [1. 1.] 0.0
  """
  _common.check_rho(rho)
  _common.check_float(
    "momentum_decay",
    momentum_decay,
    "it is the decay of MSAM's own moving average of gradients.",
    low=0,
    high=1,
    high_open=True,
  )
  optimizer = optax.with_extra_args_support(optimizer)

  def init_fn(params: optax.Params) -> MSAMState:
    inner_state = optimizer.init(params)
    own = _base_momentum(inner_state, params) is None
    dtype = optax.tree.dtype(params, "lowest")
    return MSAMState(
      count=jnp.zeros([], jnp.int32),
      scale=jnp.zeros([], jnp.promote_types(dtype, jnp.float32)),
      momentum=optax.tree.zeros_like(params) if own else None,
      inner_state=inner_state,
    )

  def update_fn(
    updates: optax.Updates,
    state: MSAMState,
    params: optax.Params | None = None,
    *,
    grad_fn: _common.GradFn | None = None,
    **extra_args: Any,
  ) -> tuple[optax.Updates, MSAMState]:
    del grad_fn
    _common.check_call("msam", params, None, needs_grad_fn=False)
    delta = held_perturbation(state, params)
    weights = optax.tree.cast_like(optax.tree.sub(params, delta), params)
    inner_updates, inner_state = optimizer.update(
      updates, state.inner_state, weights, **extra_args
    )
    own = None
    if state.momentum is not None:
      own = jax.tree.map(
        lambda m, g: (momentum_decay * m + (1 - momentum_decay) * g).astype(
          m.dtype
        ),
        state.momentum,
        updates,
      )
    momentum = own if own is not None else _base_momentum(inner_state, params)
    count = optax.safe_increment(state.count)
    next_rho = _common.value_at(rho, count, state.scale.dtype)
    scale = _common.safe_divide(next_rho, _common.norm(momentum))
    new_state = MSAMState(
      count=count,
      scale=scale.astype(state.scale.dtype),
      momentum=own,
      inner_state=inner_state,
    )
    # The held point moves from w + δ to w' + δ': base step plus change of δ.
    new_updates = jax.tree.map(
      lambda u, new, old: (u + new - old).astype(old.dtype),
      inner_updates,
      held_perturbation(new_state, params),
      delta,
    )
    return new_updates, new_state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
