"""GraphSAM: sharpness-aware minimization at the cost of the base optimizer."""

from typing import Any
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from graphsam_optax import _common

# The authors' code normalizes each tensor s as s / ||s + 1e-8||.
_AUTHORS_LEAF_EPS = 1e-8


class GraphSAMState(NamedTuple):
  """State of :func:`graphsam`.

  The caller holds the perturbed point ``w + δ`` (see :func:`graphsam`). In
  the default mode ``δ = ρ ε / ||ε||`` is a multiple of the moving average
  ``ε``, so the state keeps only the factor, ``scale``: its memory is the inner
  optimizer's plus one parameter-sized tree, ``ema``. The adaptive and
  per-tensor modes (``adaptive=True`` or ``per_leaf=True``, the authors'
  preset) scale ``ε`` by the weights or per tensor, so ``δ`` is no multiple of
  ``ε`` there and is stored, as a second tree, ``perturbation``.

  Attributes:
    count: number of updates done so far (``int32[]``). Step ``count`` is an
      anchor step when ``count % anchor_every == 0``.
    ema: the perturbation direction ε for the step ``count`` (pytree like the
      params): the anchor gradient after an anchor, then the exponential moving
      average of the normalized updating gradients.
    rho: the radius ρ of step ``count`` (``float[]``, dtype of the params),
      for inspection; the update evaluates ``rho`` itself.
    scale: the default mode's factor ``s`` of the held perturbation
      ``δ = s ε``: ``ρ / ||ε||``, or 0 before an anchor step, where the caller
      holds ``w`` itself (``float32[]``; ``float64[]`` for float64 params).
      ``None`` in the adaptive and per-tensor modes.
    perturbation: the adaptive and per-tensor modes' held perturbation δ
      (pytree like the params; zero before an anchor step). ``None`` in the
      default mode.
    inner_state: state of the wrapped optimizer, which always sees the clean
      weights.
  """

  count: jax.Array
  ema: optax.Updates
  rho: jax.Array
  scale: jax.Array | None
  perturbation: optax.Updates | None
  inner_state: optax.OptState


def held_perturbation(state: GraphSAMState) -> optax.Updates:
  """The offset ``δ`` of the params held with ``state``: ``params = w + δ``."""
  if state.perturbation is not None:
    return state.perturbation
  return jax.tree.map(lambda e: (state.scale * e).astype(e.dtype), state.ema)


def _validate(rho, beta, anchor_every, adaptive_eta, per_leaf, leaf_radius):
  _common.check_rho(rho)
  _common.check_float(
    "beta",
    beta,
    "it is the decay of the moving average of updating gradients (1 reuses "
    "the anchor direction).",
    low=0,
    high=1,
  )
  _common.check_integer(
    "anchor_every",
    anchor_every,
    1,
    "it is the number of steps between true perturbation gradients (the "
    "paper anchors once per epoch: steps per epoch).",
  )
  _common.check_float(
    "adaptive_eta",
    adaptive_eta,
    "it is the offset of ASAM's |w| + eta.",
    low=0,
  )
  if leaf_radius is not None and not per_leaf:
    raise ValueError(
      f"leaf_radius={leaf_radius!r} is the per-tensor radius of "
      "per_leaf=True; pass per_leaf=True with it, or drop it."
    )
  if leaf_radius is not None:
    _common.check_rho(leaf_radius, "leaf_radius")


def _clip_to_norm(tree, radius):
  """Scales ``tree`` down to norm ``radius`` if it is longer."""
  norm = optax.tree.norm(tree)
  return _common.safe_scale(tree, jnp.minimum(radius, norm), norm)


def graphsam(
  optimizer: optax.GradientTransformation,
  anchor_every: int,
  rho: optax.ScalarOrSchedule = 0.05,
  beta: float = 0.99,
  *,
  normalize_anchor: bool = True,
  adaptive: bool = False,
  adaptive_eta: float = 0.01,
  per_leaf: bool = False,
  leaf_radius: optax.ScalarOrSchedule | None = None,
) -> optax.GradientTransformationExtraArgs:
  r"""GraphSAM: SAM with a moving-average prediction of the perturbation.

  SAM needs two gradients per step: one at the weights ``w`` to find the
  perturbation direction ``ε``, and the *updating gradient* ``ω`` at
  ``w + ρ ε / ||ε||``. GraphSAM (Wang et al., 2024) observes that ``ε``
  changes slowly along training and predicts it by an exponential moving
  average of the previous updating gradients, re-anchored on a true gradient
  every ``anchor_every`` steps (the paper: once per epoch):

  .. math::
    \varepsilon_t &= \begin{cases}
      \nabla L_{B_t}(w_t) & t \bmod k = 0 \text{ (anchor)} \\
      \beta \varepsilon_{t-1} + (1 - \beta)\, \omega_{t-1} / \|\omega_{t-1}\|
        & \text{otherwise}
    \end{cases} \\
    \omega_t &= \nabla L_{B_t}\big(w_t + \rho_t\, \varepsilon_t /
      \|\varepsilon_t\|\big) \\
    w_{t+1} &= w_t + \mathrm{optimizer}(\omega_t)

  **The calling convention** makes the ordinary optax loop cost one gradient
  per step. The params the caller holds are the perturbed point
  ``w_t + ρ_t ε_t / ||ε_t||``, so the caller's gradient *is* ``ω_t``. The
  returned update applies the inner optimizer's step to the clean weights
  ``w_t`` and moves the held point to the next step's perturbation, which is
  known at the end of the step. Before an anchor step the perturbation is
  removed, so at the anchor the caller's gradient is the true gradient at
  ``w_t``: it becomes the new direction ``ε_t``. Evaluate and checkpoint the
  clean weights, :func:`graphsam_eval_params`.

  An anchor step needs a second gradient, ``ω_t`` at the freshly anchored
  perturbation. If the caller passes ``grad_fn`` (params to gradient, on the
  same batch) it is called there, inside a ``jax.lax.cond`` branch that runs
  on anchor steps only: this is the paper's algorithm exactly. Without
  ``grad_fn`` the anchor step is a plain inner step on the true gradient,
  ``ω_t = ∇L(w_t)``, and every step costs one pass.

  Defaults follow the paper, with one deliberate choice: the anchor gradient
  is normalized before it enters the moving average (``normalize_anchor``), so
  that the trajectory does not depend on the scale of the loss; the paper's
  pseudocode and the authors' code keep it raw (``normalize_anchor=False``).
  The options ``adaptive`` and ``per_leaf`` reproduce the authors' code,
  :func:`graphsam_authors`.

  **Memory.** In the default mode the held perturbation is ``ρ ε / ||ε||``, a
  multiple of the moving average, so the state holds the inner optimizer's
  state, ``ε`` and scalars: with Adam, 1.5 times Adam's state. With
  ``adaptive`` or ``per_leaf`` the perturbation is no multiple of ``ε`` and
  is stored too (twice Adam's); see :class:`GraphSAMState`.

  .. note::
    Gradient passes per step: one, given by the caller; plus one call of
    ``grad_fn`` on anchor steps when ``grad_fn`` is passed. ``grad_fn(p)`` must
    return the gradient of the same minibatch loss at ``p``.

  Args:
    optimizer: the base optimizer (Adam in the paper), any optax
      transformation; it receives the updating gradient, the clean weights and
      the extra arguments of :meth:`update`.
    anchor_every: k >= 1, steps between anchors (true perturbation gradients);
      the paper anchors once per epoch, k = steps per epoch. ``1`` anchors
      every step: SAM when ``grad_fn`` is passed.
    rho: ρ >= 0, the radius of the perturbation ball, a float or a schedule of
      the step count (see :func:`rho_decay_schedule`). ``0`` gives the inner
      optimizer exactly.
    beta: β in [0, 1], decay of the moving average (paper: 0.99). ``1`` keeps
      the anchor direction until the next anchor (SAM-k, :func:`sam_k`).
    normalize_anchor: normalize the anchor gradient before it enters the
      moving average (default) or keep it raw as the paper and the authors'
      code do.
    adaptive: scale the perturbation as ASAM does, ``δ = ρ T² ε / ||T ε||``
      with ``T = |w| + adaptive_eta`` (Kwon et al., 2021).
    adaptive_eta: η_A >= 0 of the adaptive scaling (ASAM: 0.01; the authors'
      code: 0).
    per_leaf: normalize per parameter tensor instead of globally, as the
      authors' code does: each tensor of the moving-average input is divided
      by ``||s + 1e-8||``; each tensor of an ordinary step's perturbation has
      norm exactly ``leaf_radius``; an anchor perturbation is computed
      globally with radius ρ and then each tensor is clipped to norm
      ``leaf_radius``.
    leaf_radius: the per-tensor radius of ``per_leaf`` (>= 0, a float or a
      schedule; default: ρ), the authors' ``radius``.

  Returns:
    An :class:`optax.GradientTransformationExtraArgs` with state
    :class:`GraphSAMState`. Its ``update(grads, state, params, *,
    grad_fn=None, **extra_args)`` requires ``params`` (the held, perturbed
    point) and forwards ``extra_args`` to ``optimizer``.

  Raises:
    ValueError: on ``rho`` or ``leaf_radius`` negative or not finite,
      ``beta`` outside [0, 1], ``anchor_every`` not an integer >= 1,
      ``adaptive_eta < 0``, or ``leaf_radius`` without ``per_leaf``; at
      update time when ``params`` is missing.

  References:
    Wang et al., `Efficient Sharpness-Aware Minimization for Molecular Graph
    Transformer Models <https://arxiv.org/abs/2406.13137>`_, ICLR 2024.

    Foret et al., `Sharpness-Aware Minimization for Efficiently Improving
    Generalization <https://arxiv.org/abs/2010.01412>`_, ICLR 2021.

    Kwon et al., `ASAM: Adaptive Sharpness-Aware Minimization
    <https://arxiv.org/abs/2102.11600>`_, ICML 2021.

  Examples:
    >>> import jax, jax.numpy as jnp, optax
    >>> import graphsam_optax
    >>> loss = lambda w: jnp.sum((w - 1.0) ** 2 * jnp.array([1.0, 10.0]))
    >>> # Anchor once per "epoch" of 10 steps; halve rho every epoch.
    >>> rho = graphsam_optax.rho_decay_schedule(0.1, 0.5, steps_per_epoch=10)
    >>> tx = graphsam_optax.graphsam(optax.sgd(0.04), anchor_every=10, rho=rho)
    >>> @jax.jit
    ... def step(params, state):
    ...   grads = jax.grad(loss)(params)  # at the held (perturbed) point
    ...   updates, state = tx.update(
    ...       grads, state, params, grad_fn=jax.grad(loss))
    ...   return optax.apply_updates(params, updates), state
    >>> params = jnp.zeros(2)
    >>> state = tx.init(params)
    >>> for _ in range(100):
    ...   params, state = step(params, state)
    >>> w = graphsam_optax.graphsam_eval_params(state, params)
    >>> print(w.round(3), round(float(loss(w)), 6))
    [1. 1.] 0.0
  """
  _validate(rho, beta, anchor_every, adaptive_eta, per_leaf, leaf_radius)
  optimizer = optax.with_extra_args_support(optimizer)
  radius = rho if leaf_radius is None else leaf_radius
  stores_perturbation = adaptive or per_leaf

  def normalize(tree):
    """The direction of a moving-average input (unit norm)."""
    if per_leaf:
      return jax.tree.map(
        lambda s: s / jnp.linalg.norm(s + _AUTHORS_LEAF_EPS), tree
      )
    return _common.normalized(tree)

  def perturbation(direction, weights, rho_now, radius_now, at_anchor):
    """The offset ``δ`` of radius ρ along ``direction`` (adaptive/per-leaf)."""
    numerator, norm = _common.perturbation_direction(
      direction, weights, adaptive=adaptive, adaptive_eta=adaptive_eta
    )
    if per_leaf and not at_anchor:
      return jax.tree.map(
        lambda d: _common.safe_scale(d, radius_now, jnp.linalg.norm(d)),
        numerator,
      )
    delta = _common.safe_scale(numerator, rho_now, norm)
    if per_leaf:
      return jax.tree.map(lambda d: _clip_to_norm(d, radius_now), delta)
    return delta

  def is_anchor(count):
    return jnp.mod(count, anchor_every) == 0

  def init_fn(params):
    dtype = optax.tree.dtype(params, "lowest")
    count = jnp.zeros([], jnp.int32)
    return GraphSAMState(
      count=count,
      ema=optax.tree.zeros_like(params),
      rho=_common.value_at(rho, count, dtype),
      scale=(
        None
        if stores_perturbation
        else jnp.zeros([], jnp.promote_types(dtype, jnp.float32))
      ),
      perturbation=(
        optax.tree.zeros_like(params) if stores_perturbation else None
      ),
      inner_state=optimizer.init(params),
    )

  def update_fn(
    updates: optax.Updates,
    state: GraphSAMState,
    params: optax.Params | None = None,
    *,
    grad_fn: _common.GradFn | None = None,
    **extra_args: Any,
  ):
    _common.check_call("graphsam", params, grad_fn, needs_grad_fn=False)

    count = state.count
    anchor = is_anchor(count)

    def anchor_direction():
      # At an anchor the held point is w itself (δ = 0 before an anchor), so
      # `updates` is the true gradient at w: it becomes the direction ε.
      return normalize(updates) if normalize_anchor else updates

    def anchor_gradient():
      offset = perturbation(
        anchor_direction(),
        params,
        _common.value_at(rho, count, state.rho.dtype),
        _common.value_at(radius, count, state.rho.dtype),
        True,
      )
      omega = grad_fn(optax.tree.add(params, offset))
      return optax.tree.cast_like(omega, updates)

    updating_grads = updates
    if grad_fn is not None:
      updating_grads = jax.lax.cond(anchor, anchor_gradient, lambda: updates)
    direction = optax.tree.where(anchor, anchor_direction(), state.ema)
    delta = held_perturbation(state)
    weights = optax.tree.cast_like(optax.tree.sub(params, delta), params)
    inner_updates, inner_state = optimizer.update(
      updating_grads, state.inner_state, weights, **extra_args
    )
    ema = jax.tree.map(
      lambda e, u: (beta * e + (1 - beta) * u).astype(e.dtype),
      direction,
      normalize(updating_grads),
    )
    next_count = optax.safe_increment(count)
    next_rho = _common.value_at(rho, next_count, state.rho.dtype)
    before_anchor = is_anchor(next_count)
    scale, stored = None, None
    if stores_perturbation:
      new_weights = optax.apply_updates(weights, inner_updates)
      next_radius = _common.value_at(radius, next_count, state.rho.dtype)
      offset = perturbation(ema, new_weights, next_rho, next_radius, False)
      stored = optax.tree.where(
        before_anchor,
        optax.tree.zeros_like(params),
        optax.tree.cast_like(offset, params),
      )
    else:
      norm = optax.tree.norm(ema)
      scale = jnp.where(
        before_anchor, 0.0, _common.safe_divide(next_rho, norm)
      ).astype(state.scale.dtype)
    new_state = GraphSAMState(
      count=next_count,
      ema=ema,
      rho=next_rho,
      scale=scale,
      perturbation=stored,
      inner_state=inner_state,
    )
    # The held point moves from w + δ to w' + δ': inner step plus change of δ.
    new_updates = jax.tree.map(
      lambda u, new, old: (u + new - old).astype(old.dtype),
      inner_updates,
      held_perturbation(new_state),
      delta,
    )
    return new_updates, new_state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
