"""Schedules for GraphSAM's perturbation radius ρ.

GraphSAM shrinks ρ once per ``decay_epochs`` epochs. The paper writes the
schedule as ``ρ_e = ρ0 · γ^(e/λ)``; the authors' code multiplies ρ in place by
``γ^(e/λ)`` at the start of every ``λ``-th epoch, so its decays compound. Both
are step functions of the optimizer step, built here as ordinary optax
schedules so they plug into ``graphsam(rho=...)``.
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

from graphsam_optax import _common


def _staircase(
  init_rho: float,
  gamma: float,
  decay_epochs: int,
  steps_per_epoch: int,
  exponent: Callable[[jax.Array], jax.Array],
) -> optax.Schedule:
  """``init_rho · gamma^exponent(m)`` after ``m`` decays, validated.

  Computed in the default float dtype (float64 when x64 is enabled), whatever
  the dtype of the step count; ``init_rho`` and ``gamma`` may be arrays.
  """
  _common.check_rho(init_rho, "init_rho")
  _common.check_float(
    "gamma",
    gamma,
    "it is the factor by which rho shrinks at each decay.",
    low=0,
    high=1,
    low_open=True,
  )
  _common.check_integer(
    "decay_epochs",
    decay_epochs,
    1,
    "it is the number of epochs between decays.",
  )
  _common.check_integer(
    "steps_per_epoch",
    steps_per_epoch,
    1,
    "it is the number of optimizer steps in one epoch.",
  )
  steps_per_decay = decay_epochs * steps_per_epoch

  def schedule(count):
    dtype = jnp.result_type(float)
    decays = jnp.floor_divide(count, steps_per_decay).astype(dtype)
    return init_rho * jnp.power(jnp.asarray(gamma, dtype), exponent(decays))

  return schedule


def rho_decay_schedule(
  init_rho: float = 0.05,
  gamma: float = 0.5,
  decay_epochs: int = 1,
  *,
  steps_per_epoch: int,
) -> optax.Schedule:
  r"""The paper's radius schedule, ``ρ0 · γ^floor(epoch / decay_epochs)``.

  .. math::
    \rho_t = \rho_0 \, \gamma^{\lfloor e_t / \lambda \rfloor},
    \qquad e_t = \lfloor t / \text{steps\_per\_epoch} \rfloor

  The paper does not say whether ``e/λ`` is floored; flooring keeps ρ constant
  within an epoch, as in the authors' code.

  Args:
    init_rho: ρ0, the radius during the first epoch (>= 0; paper: 0.05).
    gamma: γ in (0, 1], the factor applied at each decay (paper: 0.5).
    decay_epochs: λ >= 1, epochs between decays (paper: 1).
    steps_per_epoch: optimizer steps in one epoch (>= 1).

  Returns:
    An optax schedule mapping the step count to ρ.

  References:
    Wang et al., `Efficient Sharpness-Aware Minimization for Molecular Graph
    Transformer Models <https://arxiv.org/abs/2406.13137>`_, ICLR 2024.

  Examples:
    >>> import graphsam_optax
    >>> schedule = graphsam_optax.rho_decay_schedule(
    ...     0.05, 0.5, steps_per_epoch=10)
    >>> [round(float(schedule(10 * e)), 6) for e in range(5)]
    [0.05, 0.025, 0.0125, 0.00625, 0.003125]
  """
  return _staircase(
    init_rho, gamma, decay_epochs, steps_per_epoch, lambda decays: decays
  )


def compounding_rho_schedule(
  init_rho: float = 0.05,
  gamma: float = 0.5,
  decay_epochs: int = 1,
  *,
  steps_per_epoch: int,
) -> optax.Schedule:
  r"""The authors' code's radius schedule, whose decays compound.

  At the start of epoch ``e = mλ`` the authors' code updates
  ``ρ ← ρ · γ^(e/λ)`` in place, so during epochs ``mλ … (m+1)λ - 1``

  .. math::
    \rho = \rho_0 \, \gamma^{m (m + 1) / 2}.

  With the defaults ρ is 0.05, 0.025, 0.00625, 7.8e-4, 4.9e-5, … in epochs
  0, 1, 2, 3, 4: the perturbation is practically gone after four epochs.

  Args:
    init_rho: ρ0, the radius during the first ``decay_epochs`` epochs (>= 0).
    gamma: γ in (0, 1].
    decay_epochs: λ >= 1, epochs between decays.
    steps_per_epoch: optimizer steps in one epoch (>= 1).

  Returns:
    An optax schedule mapping the step count to ρ.

  Examples:
    >>> import graphsam_optax
    >>> schedule = graphsam_optax.compounding_rho_schedule(
    ...     0.05, 0.5, steps_per_epoch=10)
    >>> [round(float(schedule(10 * e)), 8) for e in range(4)]
    [0.05, 0.025, 0.00625, 0.00078125]
  """
  return _staircase(
    init_rho,
    gamma,
    decay_epochs,
    steps_per_epoch,
    lambda decays: decays * (decays + 1) / 2,
  )


def late_phase_schedule(
  rho: optax.ScalarOrSchedule = 0.05,
  *,
  total_steps: int,
  start: float = 0.875,
) -> optax.Schedule:
  r"""Late-phase SAM: radius zero until ``start · total_steps``, then ``rho``.

  .. math::
    \rho_t = \begin{cases} 0 & t < s\,T \\ \rho(t) & t \ge s\,T \end{cases}

  Zhou et al. (2025) find that SAM switched on only for the last part of
  training (their Figure 1: epochs 175 to 200 of 200, ``start = 0.875``)
  reaches nearly the generalization and flatness of SAM run throughout. Every
  method of this library takes ρ as a schedule, so each can run late-phase;
  SAM, GSAM and F-SAM also skip their second gradient pass while ρ is zero,
  so the early phase costs what the base optimizer costs.

  ``total_steps`` is the planned length of training; a run stopped early
  (early stopping) may never reach the late phase.

  Args:
    rho: the radius of the late phase, a float or a schedule of the step
      count (>= 0; default 0.05, the family's SAM radius).
    total_steps: T, the length of training in optimizer steps (>= 1).
    start: s in [0, 1], the fraction of training before the switch (default
      0.875, the paper's Figure 1). Step ``t`` is a SAM step when
      ``t >= s T``: ``0`` is SAM throughout, ``1`` never.

  Returns:
    An optax schedule mapping the step count to ρ.

  References:
    Zhou et al., `Sharpness-Aware Minimization Efficiently Selects Flatter
    Minima Late in Training <https://arxiv.org/abs/2410.10373>`_, ICLR 2025.

  Examples:
    >>> import graphsam_optax
    >>> schedule = graphsam_optax.late_phase_schedule(
    ...     0.05, total_steps=10, start=0.8)
    >>> [round(float(schedule(t)), 3) for t in range(10)]
    [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.05, 0.05]
  """
  _common.check_rho(rho)
  _common.check_integer(
    "total_steps",
    total_steps,
    1,
    "it is the length of training in optimizer steps.",
  )
  _common.check_float(
    "start",
    start,
    "it is the fraction of training before SAM is switched on.",
    low=0,
    high=1,
  )

  def schedule(count):
    late = count >= start * total_steps
    return jnp.where(late, _common.value_at(rho, count), 0.0)

  return schedule


def lr_proportional_schedule(
  learning_rate: optax.Schedule,
  *,
  rho_max: float,
  rho_min: float,
  lr_max: float,
  lr_min: float,
) -> optax.Schedule:
  r"""GSAM's radius, tied to the learning rate: linear in ``lr_t``.

  .. math::
    \rho_t = \rho_{\min} + (\rho_{\max} - \rho_{\min})
      \frac{\eta_t - \eta_{\min}}{\eta_{\max} - \eta_{\min}}

  As Zhuang et al. (2022) schedule ρ; with ``lr_max == lr_min`` (a constant
  learning rate) ρ is ``rho_max``, as in the authors' code.

  Args:
    learning_rate: the base optimizer's learning-rate schedule η.
    rho_max: ρ at the largest learning rate (>= 0).
    rho_min: ρ at the smallest learning rate (>= 0).
    lr_max: the largest learning rate of the schedule.
    lr_min: the smallest learning rate of the schedule.

  Returns:
    An optax schedule mapping the step count to ρ.

  References:
    Zhuang et al., `Surrogate Gap Minimization Improves Sharpness-Aware
    Training <https://arxiv.org/abs/2203.08065>`_, ICLR 2022.

  Examples:
    >>> import optax, graphsam_optax
    >>> lr = optax.linear_schedule(1e-3, 1e-4, transition_steps=9)
    >>> rho = graphsam_optax.lr_proportional_schedule(
    ...     lr, rho_max=0.05, rho_min=0.01, lr_max=1e-3, lr_min=1e-4)
    >>> [round(float(rho(t)), 4) for t in (0, 3, 9)]
    [0.05, 0.0367, 0.01]
  """
  _common.check_rho(rho_max, "rho_max")
  _common.check_rho(rho_min, "rho_min")

  def schedule(count):
    span = jnp.asarray(lr_max - lr_min)
    safe_span = jnp.where(span > 0, span, 1.0)
    fraction = (learning_rate(count) - lr_min) / safe_span
    fraction = jnp.where(span > 0, fraction, 1.0)
    return rho_min + (rho_max - rho_min) * fraction

  return schedule
