"""The optimizer of a run: the registry method around the paper's Adam.

:func:`create_optimizer` builds ``config.optimizer`` from the
``graphsam_optax`` registry around Adam with the paper's learning-rate
schedule (:func:`learning_rate_schedule`). Every float hyperparameter
(schedule, Adam's, ρ, β, ...) can be an array
(:func:`float_hyperparameters`), so a compiled step takes them as data and a
sweep over them compiles once.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp
import numpy as np
import optax

import graphsam_optax
from models.configs import default

OPTIMIZERS = graphsam_optax.optimizer_names()


# The Config fields of the learning-rate schedule and of Adam: floats that
# reach the compiled step as arrays, like the optimizer's own.
SCHEDULE_FIELDS = (
  "init_lr",
  "max_lr",
  "final_lr",
  "warmup_epochs",
  "lr_decay_epochs",
  "adam_b1",
  "adam_b2",
  "adam_eps",
)


def learning_rate_schedule(
  config: default.Config,
  steps_per_epoch: int,
  values: Mapping[str, Any] | None = None,
) -> optax.Schedule:
  """The paper's per-step learning rate.

  Linear warm-up from ``init_lr`` to ``max_lr`` over ``warmup_epochs``, then
  exponential decay reaching ``final_lr`` at ``lr_decay_epochs``, constant
  afterwards (the ``NoamLR`` of the authors' code). The formulas are optax's
  ``linear_schedule`` and ``exponential_decay`` joined at the warm-up's end,
  written so that every value may be an array (a tracer inside a jitted
  step).

  Args:
    config: the run; its schedule fields are the defaults of ``values``.
    steps_per_epoch: optimizer steps per epoch.
    values: overrides of the schedule fields (``SCHEDULE_FIELDS``), floats
      or arrays.

  Examples:
    >>> from models.configs import default
    >>> schedule = learning_rate_schedule(default.get_config("bbbp"), 10)
    >>> [f"{float(schedule(s)):.1e}" for s in (0, 10, 20, 300, 1000)]
    ['1.0e-04', '5.5e-04', '1.0e-03', '1.0e-04', '1.0e-04']
  """
  v = {f: getattr(config, f) for f in SCHEDULE_FIELDS}
  v.update(values or {})
  warmup = jnp.maximum(1.0, jnp.round(v["warmup_epochs"] * steps_per_epoch))
  decay = jnp.maximum(
    1.0, jnp.round(v["lr_decay_epochs"] * steps_per_epoch) - warmup
  )
  rate = v["final_lr"] / v["max_lr"]

  def schedule(count):
    ramp = 1 - jnp.clip(count, 0, warmup) / warmup
    rising = (v["init_lr"] - v["max_lr"]) * ramp + v["max_lr"]
    after = count - warmup
    falling = jnp.where(
      after <= 0, v["max_lr"], v["max_lr"] * jnp.power(rate, after / decay)
    )
    falling = jnp.where(
      rate < 1,
      jnp.maximum(falling, v["final_lr"]),
      jnp.minimum(falling, v["final_lr"]),
    )
    return jnp.where(count < warmup, rising, falling)

  return schedule


def optimizer_hyperparameters(config: default.Config) -> dict[str, Any]:
  """The optimizer's hyperparameters: registry defaults, then the config's.

  A method's ``seed`` defaults to the run's.
  """
  if config.optimizer not in OPTIMIZERS:
    raise ValueError(
      f"optimizer={config.optimizer!r} is unknown; choose one of "
      f"{', '.join(OPTIMIZERS)}"
    )
  defaults = graphsam_optax.optimizer_spec(config.optimizer).defaults
  merged = {**defaults, **config.hyperparameters}
  if "seed" in defaults and "seed" not in config.hyperparameters:
    merged["seed"] = config.seed
  return merged


def _is_float_hyperparameter(name: str, default: Any, value: Any) -> bool:
  del name
  return (
    isinstance(default, float)
    and isinstance(value, (int, float))
    and not isinstance(value, bool)
  )


def float_hyperparameters(config: default.Config) -> dict[str, float]:
  """Every float the optimizer depends on, by name: schedule, Adam, method.

  These reach the compiled step as arrays (see :func:`make_train_step`); the
  rest of :func:`optimizer_hyperparameters` (integers, booleans, schedules)
  is part of what the step is compiled for.
  """
  defaults = graphsam_optax.optimizer_spec(config.optimizer).defaults
  out = {f: float(getattr(config, f)) for f in SCHEDULE_FIELDS}
  for name, value in optimizer_hyperparameters(config).items():
    if _is_float_hyperparameter(name, defaults.get(name), value):
      out[name] = float(value)
  return out


def hyperparameter_values(config: default.Config) -> dict[str, np.float32]:
  """:func:`float_hyperparameters` as float32 scalars, the step's ``values``
  argument (place them with ``Engine.place`` before training)."""
  return {k: np.float32(v) for k, v in float_hyperparameters(config).items()}


def create_optimizer(
  config: default.Config,
  steps_per_epoch: int,
  values: Mapping[str, Any] | None = None,
) -> optax.GradientTransformationExtraArgs:
  """``config.optimizer`` from the registry around the paper's Adam.

  Args:
    config: the run.
    steps_per_epoch: optimizer steps per epoch.
    values: overrides of :func:`float_hyperparameters` (arrays inside a
      jitted step); None takes the config's.

  Raises:
    ValueError: on an unknown optimizer or hyperparameter, or an invalid
      value (the registry's message names it).
  """
  hyperparameters = optimizer_hyperparameters(config)
  v = {**float_hyperparameters(config), **(values or {})}
  learning_rate = learning_rate_schedule(config, steps_per_epoch, v)
  base = optax.adam(
    learning_rate,
    b1=v["adam_b1"],
    b2=v["adam_b2"],
    eps=v["adam_eps"],
  )
  hyperparameters.update(
    {k: v[k] for k in hyperparameters if k in v and k not in SCHEDULE_FIELDS}
  )
  return graphsam_optax.get_optimizer(
    config.optimizer,
    base,
    steps_per_epoch=steps_per_epoch,
    total_steps=steps_per_epoch * config.epochs,
    learning_rate=learning_rate,  # GSAM ties its radius to it
    **hyperparameters,
  )
