"""GraphSAM: sharpness-aware minimization at the cost of the base optimizer."""

from typing import Any
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from graphsam_optax import _common
from graphsam_optax import _schedules

# The authors' code normalizes each tensor s as s / ||s + 1e-8||.
_AUTHORS_LEAF_EPS = 1e-8


class GraphSAMState(NamedTuple):
  """State of :func:`graphsam`.

  Attributes:
    count: number of updates done so far (``int32[]``). Step ``count`` is an
      anchor step when ``count % anchor_every == 0``.
    ema: the perturbation direction ε for the step ``count`` (pytree like the
      params): the anchor gradient after an anchor, then the exponential moving
      average of the normalized updating gradients.
    rho: the radius ρ of the perturbation currently held (``float[]``, dtype of
      the params).
    perturbation: the offset δ that the held params carry, ``params = w + δ``
      with ``w`` the clean weights (pytree like the params; zero before an
      anchor step).
    inner_state: state of the wrapped optimizer, which always sees the clean
      weights.
  """

  count: jax.Array
  ema: optax.Updates
  rho: jax.Array
  perturbation: optax.Updates
  inner_state: optax.OptState


def _validate(rho, beta, anchor_every, adaptive_eta):
  _common.check_rho(rho)
  if _common.is_concrete(beta) and not 0 <= beta <= 1:
    raise ValueError(
      f"beta must be in [0, 1], got beta={beta!r}: it is the decay of the "
      "moving average of updating gradients (1 reuses the anchor direction)."
    )
  _common.check_integer(
    "anchor_every",
    anchor_every,
    1,
    "it is the number of steps between true perturbation gradients (the "
    "paper anchors once per epoch: steps per epoch).",
  )
  _common.check_at_least(
    "adaptive_eta", adaptive_eta, 0, "it is the offset of ASAM's |w| + eta."
  )


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
      norm exactly ρ; an anchor perturbation is computed globally and then
      each tensor is clipped to norm ρ.

  Returns:
    An :class:`optax.GradientTransformationExtraArgs` with state
    :class:`GraphSAMState`. Its ``update(grads, state, params, *,
    grad_fn=None, **extra_args)`` requires ``params`` (the held, perturbed
    point) and forwards ``extra_args`` to ``optimizer``.

  Raises:
    ValueError: on ``rho < 0``, ``beta`` outside [0, 1], ``anchor_every < 1``
      or ``adaptive_eta < 0``; at update time when ``params`` is missing.

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
  _validate(rho, beta, anchor_every, adaptive_eta)
  optimizer = optax.with_extra_args_support(optimizer)

  def normalize(tree):
    """The direction of a moving-average input (unit norm)."""
    if per_leaf:
      return jax.tree.map(
        lambda s: s / jnp.linalg.norm(s + _AUTHORS_LEAF_EPS), tree
      )
    return _common.safe_scale(tree, 1.0, optax.tree.norm(tree))

  def perturbation(direction, radius, weights, at_anchor):
    """The offset ``δ`` of norm ``radius`` along ``direction``."""
    numerator, norm = _common.perturbation_direction(
      direction, weights, adaptive=adaptive, adaptive_eta=adaptive_eta
    )
    if per_leaf and not at_anchor:
      return jax.tree.map(
        lambda d: _common.safe_scale(d, radius, jnp.linalg.norm(d)), numerator
      )
    delta = _common.safe_scale(numerator, radius, norm)
    if per_leaf:
      return jax.tree.map(lambda d: _clip_to_norm(d, radius), delta)
    return delta

  def rho_at(count, dtype):
    value = rho(count) if callable(rho) else rho
    return jnp.asarray(value, dtype=dtype)

  def is_anchor(count):
    return jnp.mod(count, anchor_every) == 0

  def init_fn(params):
    dtype = optax.tree.dtype(params, "lowest")
    count = jnp.zeros([], jnp.int32)
    return GraphSAMState(
      count=count,
      ema=optax.tree.zeros_like(params),
      rho=rho_at(count, dtype),
      perturbation=optax.tree.zeros_like(params),
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
    if params is None:
      raise ValueError(
        "graphsam needs params: call tx.update(grads, state, params) with the "
        "params the gradient was taken at."
      )
    count = state.count
    weights = optax.tree.sub(params, state.perturbation)
    anchor = is_anchor(count)

    # At an anchor the held point is w itself, so `updates` is the true
    # gradient there: it becomes the perturbation direction.
    anchor_direction = normalize(updates) if normalize_anchor else updates
    direction = optax.tree.where(anchor, anchor_direction, state.ema)

    if grad_fn is None:
      updating_grads = updates
    else:
      updating_grads = jax.lax.cond(
        anchor,
        lambda: optax.tree.cast_like(
          grad_fn(
            optax.tree.add(
              weights,
              perturbation(anchor_direction, state.rho, weights, True),
            )
          ),
          updates,
        ),
        lambda: updates,
      )

    inner_updates, inner_state = optimizer.update(
      updating_grads, state.inner_state, weights, **extra_args
    )
    new_weights = optax.apply_updates(weights, inner_updates)

    next_count = optax.safe_increment(count)
    next_ema = jax.tree.map(
      lambda e, u: (beta * e + (1 - beta) * u).astype(e.dtype),
      direction,
      normalize(updating_grads),
    )
    next_rho = rho_at(next_count, state.rho.dtype)
    next_perturbation = jax.lax.cond(
      is_anchor(next_count),
      lambda: optax.tree.zeros_like(params),
      lambda: optax.tree.cast_like(
        perturbation(next_ema, next_rho, new_weights, False), params
      ),
    )
    # Held point moves from w + δ to w' + δ': inner step plus change of δ.
    new_updates = jax.tree.map(
      lambda u, new, old: (u + new - old).astype(old.dtype),
      inner_updates,
      next_perturbation,
      state.perturbation,
    )
    new_state = GraphSAMState(
      count=next_count,
      ema=next_ema,
      rho=next_rho,
      perturbation=next_perturbation,
      inner_state=inner_state,
    )
    return new_updates, new_state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def sam_k(
  optimizer: optax.GradientTransformation,
  k: int,
  rho: optax.ScalarOrSchedule = 0.05,
) -> optax.GradientTransformationExtraArgs:
  r"""SAM-k: recompute the SAM perturbation every ``k`` steps, reuse it between.

  The GraphSAM paper's baseline: the perturbation direction is the true
  gradient of the anchor step and stays fixed until the next anchor. It is
  :func:`graphsam` with ``beta = 1`` and ``anchor_every = k``.

  .. note::
    Gradient passes per step: one, plus one call of ``grad_fn`` every ``k``
    steps when ``grad_fn`` is passed (without it the anchor step is a plain
    inner step).

  Args:
    optimizer: the base optimizer.
    k: steps between perturbation recomputations (>= 1).
    rho: the perturbation radius, float or schedule (>= 0).

  Returns:
    A :func:`graphsam` transformation.

  References:
    Wang et al., `Efficient Sharpness-Aware Minimization for Molecular Graph
    Transformer Models <https://arxiv.org/abs/2406.13137>`_, ICLR 2024.

  Examples:
    >>> import jax, jax.numpy as jnp, optax, graphsam_optax
    >>> loss = lambda w: jnp.sum(w**2 * jnp.array([1.0, 4.0]))
    >>> tx = graphsam_optax.sam_k(optax.sgd(0.1), k=5, rho=0.05)
    >>> @jax.jit
    ... def step(params, state):
    ...   updates, state = tx.update(
    ...       jax.grad(loss)(params), state, params, grad_fn=jax.grad(loss))
    ...   return optax.apply_updates(params, updates), state
    >>> params = jnp.ones(2)
    >>> state = tx.init(params)
    >>> for _ in range(20):
    ...   params, state = step(params, state)
    >>> # With a constant rho the clean weights settle where the gradient at
    >>> # the (reused) perturbed point vanishes, rho away from the minimum.
    >>> print(graphsam_optax.graphsam_eval_params(state, params).round(3))
    [0.001 0.05 ]
  """
  return graphsam(optimizer, anchor_every=k, rho=rho, beta=1.0)


def sam_one(
  optimizer: optax.GradientTransformation,
  steps_per_epoch: int,
  rho: optax.ScalarOrSchedule = 0.05,
) -> optax.GradientTransformationExtraArgs:
  r"""SAM-One: one true perturbation gradient per epoch, reused all epoch.

  :func:`graphsam` with ``beta = 1`` and ``anchor_every = steps_per_epoch``
  (:func:`sam_k` with ``k`` one epoch); the GraphSAM paper's weakest
  approximation of SAM.

  .. note::
    Gradient passes per step: one, plus one call of ``grad_fn`` at the first
    step of each epoch when ``grad_fn`` is passed.

  Args:
    optimizer: the base optimizer.
    steps_per_epoch: optimizer steps per epoch (>= 1).
    rho: the perturbation radius, float or schedule (>= 0).

  Returns:
    A :func:`graphsam` transformation.

  References:
    Wang et al., `Efficient Sharpness-Aware Minimization for Molecular Graph
    Transformer Models <https://arxiv.org/abs/2406.13137>`_, ICLR 2024.

  Examples:
    >>> import optax, graphsam_optax
    >>> tx = graphsam_optax.sam_one(optax.adam(1e-3), steps_per_epoch=64)
    >>> print(type(tx).__name__)
    GradientTransformationExtraArgs
  """
  return graphsam(optimizer, anchor_every=steps_per_epoch, rho=rho, beta=1.0)


def graphsam_authors(
  optimizer: optax.GradientTransformation,
  steps_per_epoch: int,
  rho: float = 0.05,
  beta: float = 0.99,
  gamma: float = 0.5,
  decay_epochs: int = 1,
) -> optax.GradientTransformationExtraArgs:
  r"""GraphSAM as the authors' code runs it (CoMPT training path).

  The same :func:`graphsam` with the options that reproduce what the code at
  github.com/YL-wang/GraphSAM (commit 1381480) does where it differs from the
  paper, point by point:

  1. ASAM-style perturbation ``ρ w² ⊙ h / ||w ⊙ g||`` (``adaptive=True``,
     ``adaptive_eta=0``), each tensor clipped to norm ρ (``per_leaf=True``).
  2. On ordinary steps the code divides by the norm of just-zeroed gradients,
     so every tensor is clipped: each tensor's perturbation has norm exactly ρ
     along ``w² ⊙ h`` (``per_leaf=True``).
  3. The moving average starts from the raw anchor gradient
     (``normalize_anchor=False``) and normalizes each later tensor ``s`` as
     ``s / ||s + 1e-8||`` (``per_leaf=True``).
  4. Not reproduced: the code seeds the backward pass with the loss value, so
     Adam receives ``L(w + ε) ∇L(w + ε)``. That is a choice of loss, not of
     optimizer; scale your loss to reproduce it.
  5. Anchors at the first batch of every epoch (``anchor_every =
     steps_per_epoch``); ``decay_epochs`` (λ) only controls the decay of ρ,
     which compounds (:func:`compounding_rho_schedule`). The clip radius
     decays with ρ.

  .. note::
    Gradient passes per step as in :func:`graphsam`.

  Args:
    optimizer: the base optimizer (Adam in the authors' code).
    steps_per_epoch: optimizer steps per epoch (>= 1).
    rho: ρ0 (>= 0), the radius during the first epoch.
    beta: β in [0, 1].
    gamma: γ in (0, 1], the decay factor of ρ.
    decay_epochs: λ >= 1.

  Returns:
    A :func:`graphsam` transformation.

  References:
    Wang et al., `Efficient Sharpness-Aware Minimization for Molecular Graph
    Transformer Models <https://arxiv.org/abs/2406.13137>`_, ICLR 2024.

  Examples:
    >>> import jax.numpy as jnp, optax, graphsam_optax
    >>> tx = graphsam_optax.graphsam_authors(optax.adam(1e-3), 10)
    >>> state = tx.init(jnp.ones(3))
    >>> print(round(float(state.rho), 6))
    0.05
  """
  return graphsam(
    optimizer,
    anchor_every=steps_per_epoch,
    rho=_schedules.compounding_rho_schedule(
      rho, gamma, decay_epochs, steps_per_epoch=steps_per_epoch
    ),
    beta=beta,
    normalize_anchor=False,
    adaptive=True,
    adaptive_eta=0.0,
    per_leaf=True,
  )
