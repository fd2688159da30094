"""AE-SAM: SAM steps only where the squared gradient norm is unusually large."""

from typing import Any
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from graphsam_optax import _common


class AESAMState(NamedTuple):
  """State of :func:`ae_sam`.

  Attributes:
    count: number of updates done so far (``int32[]``); the threshold factor
      ``c_t`` and schedules of ``rho`` are evaluated on it.
    mean: μ, the moving average of ``||g||²`` (``float32[]``, 0 at init).
    variance: σ², the moving average of ``(||g||² - μ)²`` (``float32[]``, 0
      at init).
    sam_steps: number of SAM steps taken so far (``int32[]``).
    inner_state: state of the wrapped optimizer.
  """

  count: jax.Array
  mean: jax.Array
  variance: jax.Array
  sam_steps: jax.Array
  inner_state: optax.OptState


def ae_sam(
  optimizer: optax.GradientTransformation,
  total_steps: int,
  rho: optax.ScalarOrSchedule = 0.05,
  delta: float = 0.9,
  lambda1: float = -1.0,
  lambda2: float = 1.0,
) -> optax.GradientTransformationExtraArgs:
  r"""AE-SAM: SAM on the steps whose squared gradient norm is large.

  A large stochastic gradient norm signals a sharp region. AE-SAM tracks the
  mean and variance of :math:`n_t = \|g_t\|^2` by exponential moving averages
  and takes a SAM step when :math:`n_t` exceeds the mean by :math:`c_t`
  standard deviations, a plain step otherwise. The factor :math:`c_t` moves
  linearly from :math:`\lambda_1` to :math:`\lambda_2` over training, so SAM
  steps are frequent early and rare late:

  .. math::
    n_t &= \|g_t\|^2, \qquad g_t = \nabla L_{B_t}(w_t) \\
    \mu_t &= \delta\, \mu_{t-1} + (1 - \delta)\, n_t \\
    \sigma_t^2 &= \delta\, \sigma_{t-1}^2 + (1 - \delta)\, (n_t - \mu_t)^2 \\
    c_t &= \lambda_1 + (\lambda_2 - \lambda_1) \min(t / T, 1) \\
    d_t &= \begin{cases}
      \nabla L_{B_t}(w_t + \rho_t\, g_t / \|g_t\|)
        & n_t \ge \mu_t + c_t\, \sigma_t \text{ (SAM step)} \\
      g_t & \text{otherwise}
    \end{cases} \\
    w_{t+1} &= w_t + \mathrm{optimizer}(d_t)

  with :math:`t = 0, 1, \ldots` the step count and :math:`T` =
  ``total_steps``. Conventions (the paper leaves them open): the statistics
  start at :math:`\mu_{-1} = \sigma_{-1}^2 = 0` without bias correction, and
  the current :math:`n_t` enters them before the comparison, as written
  above. With the defaults the first steps are therefore SAM steps while the
  averages warm up (at :math:`t = 0`, :math:`\mu_0 + c_0 \sigma_0 =
  (1 - \delta - \delta\sqrt{1 - \delta})\, n_0 < n_0`). After ``total_steps``
  the factor stays at :math:`\lambda_2`. The statistics are kept in float32.

  .. note::
    Gradient passes per step: two on SAM steps, one otherwise (data
    dependent). ``grad_fn(p)`` is required and must return the gradient of
    the same minibatch loss at ``p``; it is called inside a ``jax.lax.cond``
    branch that runs on SAM steps only. ``state.sam_steps`` counts them.

  Args:
    optimizer: the base optimizer, any optax transformation; it receives
      :math:`d_t`, the weights and the extra arguments of ``update``.
    total_steps: :math:`T`, the number of training steps over which
      :math:`c_t` moves from ``lambda1`` to ``lambda2`` (integer >= 1).
    rho: ρ >= 0, the radius of the perturbation ball, a float or a schedule of
      the step count (default 0.05).
    delta: δ in [0, 1), the decay of the moving averages (default 0.9, Jiang
      et al.).
    lambda1: :math:`\lambda_1`, the threshold factor at the first step
      (default -1, Jiang et al.).
    lambda2: :math:`\lambda_2`, the threshold factor from step ``total_steps``
      on (default 1, Jiang et al.).

  Returns:
    An :class:`optax.GradientTransformationExtraArgs` with state
    :class:`AESAMState`. Its ``update(grads, state, params, *, grad_fn,
    **extra_args)`` requires ``params`` and ``grad_fn`` and forwards
    ``extra_args`` to ``optimizer``.

  Raises:
    ValueError: on ``total_steps`` not an integer >= 1, ``rho < 0``,
      ``delta`` outside [0, 1) or a non-finite ``lambda1``/``lambda2``; at
      update time when ``params`` or ``grad_fn`` is missing.

  References:
    Jiang et al., `An Adaptive Policy to Employ Sharpness-Aware Minimization
    <https://arxiv.org/abs/2304.14647>`_, ICLR 2023.

  Examples:
    >>> import jax, jax.numpy as jnp, optax
    >>> from graphsam_optax import ae_sam
    >>> loss = lambda w: jnp.sum(w**2 * jnp.array([1.0, 4.0]))
    >>> tx = ae_sam(optax.sgd(0.05), total_steps=10, rho=0.1)
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
    4 0.1152
  """
  _common.check_integer(
    "total_steps",
    total_steps,
    1,
    "it is the number of steps over which the threshold factor moves from "
    "lambda1 to lambda2.",
  )
  _common.check_rho(rho)
  _common.check_float(
    "delta",
    delta,
    "it is the decay of the moving averages of the squared gradient norm.",
    low=0,
    high=1,
    high_open=True,
  )
  for name, value in (("lambda1", lambda1), ("lambda2", lambda2)):
    _common.check_float(
      name, value, "it is an end of the threshold factor's linear schedule."
    )
  optimizer = optax.with_extra_args_support(optimizer)

  def init_fn(params: optax.Params) -> AESAMState:
    return AESAMState(
      count=jnp.zeros([], jnp.int32),
      mean=jnp.zeros([], jnp.float32),
      variance=jnp.zeros([], jnp.float32),
      sam_steps=jnp.zeros([], jnp.int32),
      inner_state=optimizer.init(params),
    )

  def update_fn(
    updates: optax.Updates,
    state: AESAMState,
    params: optax.Params | None = None,
    *,
    grad_fn: _common.GradFn | None = None,
    **extra_args: Any,
  ) -> tuple[optax.Updates, AESAMState]:
    _common.check_call("ae_sam", params, grad_fn)
    squared_norm = _common.norm(updates, squared=True).astype(jnp.float32)
    mean = delta * state.mean + (1 - delta) * squared_norm
    variance = delta * state.variance + (1 - delta) * (squared_norm - mean) ** 2
    progress = jnp.minimum(state.count / total_steps, 1.0)
    factor = lambda1 + (lambda2 - lambda1) * progress
    is_sam = squared_norm >= mean + factor * jnp.sqrt(variance)

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
    return new_updates, AESAMState(
      count=optax.safe_increment(state.count),
      mean=mean.astype(jnp.float32),
      variance=variance.astype(jnp.float32),
      sam_steps=_common.count_if(is_sam, state.sam_steps),
      inner_state=inner_state,
    )

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
