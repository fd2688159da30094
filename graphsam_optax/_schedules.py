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
