"""RST: each step is a SAM step with probability p(t), else a plain step."""

from typing import Any
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from graphsam_optax import _common


class RSTState(NamedTuple):
  """State of :func:`rst`.

  Attributes:
    count: number of updates done so far (``int32[]``); schedules of ``p``
      and ``rho`` are evaluated on it.
    key: the PRNG key of the next Bernoulli trial (``uint32[2]``, from
      ``jax.random.PRNGKey(seed)`` at init); it is split at every step.
    sam_steps: number of SAM steps taken so far (``int32[]``).
    inner_state: state of the wrapped optimizer.
  """

  count: jax.Array
  key: jax.Array
  sam_steps: jax.Array
  inner_state: optax.OptState


def rst(
  optimizer: optax.GradientTransformation,
  p: optax.ScalarOrSchedule = 0.5,
  rho: optax.ScalarOrSchedule = 0.05,
  seed: int = 0,
) -> optax.GradientTransformationExtraArgs:
  r"""RST: each step is a SAM step with probability ``p``, else a plain step.

  Randomized sharpness-aware training (RST, first called SS-SAM). Each step
  draws a Bernoulli trial with probability :math:`p_t`, a float or a schedule
  of the step count: on success a SAM step, otherwise a plain step of the base
  optimizer:

  .. math::
    g_t &= \nabla L_{B_t}(w_t), \qquad u_t \sim \mathcal{U}[0, 1) \\
    d_t &= \begin{cases}
      \nabla L_{B_t}(w_t + \rho_t\, g_t / \|g_t\|) & u_t < p_t
        \text{ (SAM step)} \\
      g_t & \text{otherwise}
    \end{cases} \\
    w_{t+1} &= w_t + \mathrm{optimizer}(d_t)

  The random stream lives in the state: the key is seeded at ``init`` from
  ``seed`` and split at every step, so a run is reproducible, jit-compatible,
  and checkpoints with the state. :math:`p_t = 1` is :func:`sam`,
  :math:`p_t = 0` the base optimizer. The paper studies schedules of
  :math:`p` (constant, increasing, ...); any optax schedule works, e.g.
  ``optax.linear_schedule(0.0, 1.0, total_steps)``.

  .. note::
    Gradient passes per step: two on SAM steps, one otherwise; ``1 + p`` on
    average. ``grad_fn(params)`` is required and must return the gradient of
    the same minibatch loss at ``params``; it is called inside a
    ``jax.lax.cond`` branch that runs on SAM steps only. ``state.sam_steps``
    counts them.

  Args:
    optimizer: the base optimizer, any optax transformation; it receives
      :math:`d_t`, the weights and the extra arguments of ``update``.
    p: the probability of a SAM step, a float in [0, 1] or a schedule of the
      step count (default 0.5: half of SAM's extra cost).
    rho: ρ >= 0, the radius of the perturbation ball, a float or a schedule of
      the step count (default 0.05).
    seed: the integer seed of the Bernoulli trials (default 0).

  Returns:
    An :class:`optax.GradientTransformationExtraArgs` with state
    :class:`RSTState`. Its ``update(grads, state, params, *, grad_fn,
    **extra_args)`` requires ``params`` and ``grad_fn`` and forwards
    ``extra_args`` to ``optimizer``.

  Raises:
    ValueError: on a float ``p`` outside [0, 1], ``rho < 0`` or a ``seed``
      that is not an integer; at update time when ``params`` or ``grad_fn``
      is missing.

  References:
    Zhao, Zhang and Hu, `Randomized Sharpness-Aware Training for Boosting
    Computational Efficiency in Deep Learning
    <https://openreview.net/forum?id=8foynpwwRb>`_, 2022 (first titled SS-SAM:
    Stochastic Scheduled Sharpness-Aware Minimization).

  Examples:
    >>> import jax, jax.numpy as jnp, optax
    >>> from graphsam_optax import rst
    >>> loss = lambda w: jnp.sum(w**2 * jnp.array([1.0, 4.0]))
    >>> tx = rst(optax.sgd(0.05), p=0.5, rho=0.1, seed=1)
    >>> grad_fn = jax.grad(loss)
    >>> @jax.jit
    ... def step(params, state):
    ...   grads = grad_fn(params)
    ...   updates, state = tx.update(grads, state, params, grad_fn=grad_fn)
    ...   return optax.apply_updates(params, updates), state
    >>> params = jnp.ones(2)
    >>> state = tx.init(params)
    >>> for _ in range(10):
    ...   params, state = step(params, state)
    >>> print(int(state.sam_steps), f"{float(loss(params)):.4f}")
    5 0.1021
  """
  _common.check_float(
    "p", p, "it is the probability of a SAM step.", low=0, high=1
  )
  _common.check_rho(rho)
  if isinstance(seed, bool) or not isinstance(seed, (int, jax.Array)):
    raise ValueError(
      f"seed must be an integer, got seed={seed!r}: it seeds the Bernoulli "
      "trials."
    )
  optimizer = optax.with_extra_args_support(optimizer)

  def init_fn(params: optax.Params) -> RSTState:
    return RSTState(
      count=jnp.zeros([], jnp.int32),
      key=jax.random.PRNGKey(seed),
      sam_steps=jnp.zeros([], jnp.int32),
      inner_state=optimizer.init(params),
    )

  def update_fn(
    updates: optax.Updates,
    state: RSTState,
    params: optax.Params | None = None,
    *,
    grad_fn: _common.GradFn | None = None,
    **extra_args: Any,
  ) -> tuple[optax.Updates, RSTState]:
    _common.check_call("rst", params, grad_fn)
    key, trial_key = jax.random.split(state.key)
    is_sam = jax.random.uniform(trial_key) < _common.value_at(p, state.count)
    new_updates, inner_state = _common.sam_or_plain_update(
      is_sam,
      updates,
      params,
      grad_fn,
      _common.value_at(rho, state.count),
      optimizer,
      state.inner_state,
      **extra_args,
    )
    return new_updates, RSTState(
      count=optax.safe_increment(state.count),
      key=key,
      sam_steps=_common.count_if(is_sam, state.sam_steps),
      inner_state=inner_state,
    )

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
