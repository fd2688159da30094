"""Variants of GraphSAM: SAM-k, SAM-One and the authors' preset.

Each is :func:`graphsam_optax.graphsam` with fixed options; they validate their
own arguments first, so that an error names the argument the caller passed.
"""

import optax

from graphsam_optax import _common
from graphsam_optax import _schedules
from graphsam_optax._graphsam import graphsam


def sam_k(
  optimizer: optax.GradientTransformation,
  k: int = 8,
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
    k: steps between perturbation recomputations, an integer >= 1 (default
      8, LookSAM's ``k``, so that the two reuse schemes cost the same).
    rho: the perturbation radius, float or schedule (>= 0).

  Returns:
    A :func:`graphsam` transformation.

  Raises:
    ValueError: on ``k`` not an integer >= 1 or an invalid ``rho``.

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
  _common.check_integer(
    "k", k, 1, "it is the number of steps between SAM perturbations."
  )
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
    steps_per_epoch: optimizer steps per epoch, an integer >= 1.
    rho: the perturbation radius, float or schedule (>= 0).

  Returns:
    A :func:`graphsam` transformation.

  Raises:
    ValueError: on ``steps_per_epoch`` not an integer >= 1 or an invalid
      ``rho``.

  References:
    Wang et al., `Efficient Sharpness-Aware Minimization for Molecular Graph
    Transformer Models <https://arxiv.org/abs/2406.13137>`_, ICLR 2024.

  Examples:
    >>> import optax, graphsam_optax
    >>> tx = graphsam_optax.sam_one(optax.adam(1e-3), steps_per_epoch=64)
    >>> print(type(tx).__name__)
    GradientTransformationExtraArgs
  """
  _check_steps_per_epoch(steps_per_epoch)
  return graphsam(optimizer, anchor_every=steps_per_epoch, rho=rho, beta=1.0)


def _check_steps_per_epoch(steps_per_epoch):
  _common.check_integer(
    "steps_per_epoch",
    steps_per_epoch,
    1,
    "it is the number of optimizer steps in one epoch.",
  )


def graphsam_authors(
  optimizer: optax.GradientTransformation,
  steps_per_epoch: int,
  rho: float = 0.05,
  beta: float = 0.99,
  gamma: float = 0.5,
  decay_epochs: int = 1,
  radius: float = 0.05,
) -> optax.GradientTransformationExtraArgs:
  r"""GraphSAM as the authors' code runs it (CoMPT training path).

  The same :func:`graphsam` with the options that reproduce what the code at
  github.com/YL-wang/GraphSAM (commit 1381480) does where it differs from the
  paper, point by point:

  1. ASAM-style perturbation ``ρ w² ⊙ h / ||w ⊙ g||`` (``adaptive=True``,
     ``adaptive_eta=0``), each tensor clipped to norm ``radius``
     (``per_leaf=True``, ``leaf_radius``).
  2. On ordinary steps the code divides by the norm of just-zeroed gradients,
     so every tensor is clipped: each tensor's perturbation has norm exactly
     ``radius`` along ``w² ⊙ h``, and ρ has no effect there.
  3. The moving average starts from the raw anchor gradient
     (``normalize_anchor=False``) and normalizes each later tensor ``s`` as
     ``s / ||s + 1e-8||`` (``per_leaf=True``).
  4. The loss-seeded backward pass is the caller's part, as a choice of what
     to differentiate on which pass. The anchor's own pass, at ``w``, is a
     plain ``∇L``: it starts the moving average. Every other pass, at a
     perturbed point, is seeded with the loss value, ``L ∇L = ∇(½L²)``: Adam
     receives it, and it enters the moving average (per tensor normalized,
     where the factor ``L`` cancels up to the ``1e-8``). So differentiate
     ``L`` on the caller's pass of an anchor step (the first step of each
     epoch, ``state.count % steps_per_epoch == 0``) and ``½L²`` on the
     caller's pass of every other step and in ``grad_fn`` (see the example).
  5. Anchors at the first batch of every epoch (``anchor_every =
     steps_per_epoch``); ``decay_epochs`` (λ) only controls the decay of ρ
     and of the clip radius, which compounds
     (:func:`compounding_rho_schedule`).

  ``rho`` and ``radius`` are separate arguments there, both 0.05 by default:
  ρ scales the anchor perturbation before its clipping, ``radius`` is the
  per-tensor norm of every perturbation after an anchor.

  .. note::
    Gradient passes per step as in :func:`graphsam`.

  Args:
    optimizer: the base optimizer (Adam in the authors' code).
    steps_per_epoch: optimizer steps per epoch (>= 1).
    rho: ρ0 (>= 0), the radius of the anchor perturbation during the first
      ``decay_epochs`` epochs.
    beta: β in [0, 1].
    gamma: γ in (0, 1], the decay factor of ρ and of the radius.
    decay_epochs: λ >= 1.
    radius: the per-tensor clip radius during the first ``decay_epochs``
      epochs (>= 0; the authors' ``radius``).

  Returns:
    A :func:`graphsam` transformation.

  Raises:
    ValueError: on an invalid argument, named.

  References:
    Wang et al., `Efficient Sharpness-Aware Minimization for Molecular Graph
    Transformer Models <https://arxiv.org/abs/2406.13137>`_, ICLR 2024.

  Examples:
    The authors' training step, with the loss-seeded passes of point 4:

    >>> import jax, jax.numpy as jnp, optax, graphsam_optax
    >>> spe = 4  # steps per epoch
    >>> tx = graphsam_optax.graphsam_authors(optax.adam(0.05), spe)
    >>> loss = lambda w: jnp.sum((w - 1.0) ** 2)
    >>> seeded = lambda w: 0.5 * loss(w) ** 2  # its gradient is L ∇L
    >>> @jax.jit
    ... def step(params, state):
    ...   anchor = state.count % spe == 0
    ...   grads = jax.lax.cond(
    ...       anchor, jax.grad(loss), jax.grad(seeded), params)
    ...   updates, state = tx.update(
    ...       grads, state, params, grad_fn=jax.grad(seeded))
    ...   return optax.apply_updates(params, updates), state
    >>> params = jnp.full(3, 2.0)
    >>> state = tx.init(params)
    >>> for _ in range(3 * spe):
    ...   params, state = step(params, state)
    >>> w = graphsam_optax.graphsam_eval_params(state, params)
    >>> print(f"{float(loss(w)):.4f}", f"{float(state.rho):.6f}")
    0.6787 0.000781
  """
  _check_steps_per_epoch(steps_per_epoch)
  _common.check_rho(rho)
  _common.check_rho(radius, "radius")

  def compounding(init):
    return _schedules.compounding_rho_schedule(
      init, gamma, decay_epochs, steps_per_epoch=steps_per_epoch
    )

  return graphsam(
    optimizer,
    anchor_every=steps_per_epoch,
    rho=compounding(rho),
    beta=beta,
    normalize_anchor=False,
    adaptive=True,
    adaptive_eta=0.0,
    per_leaf=True,
    leaf_radius=compounding(radius),
  )
