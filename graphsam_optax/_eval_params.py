"""Clean weights for evaluation, from any state of this library."""

import jax
import optax

from graphsam_optax import _graphsam
from graphsam_optax import _msam

# The states whose caller holds a perturbed point, and its offset.
_HELD = {
  _graphsam.GraphSAMState: lambda state, params: _graphsam.held_perturbation(
    state
  ),
  _msam.MSAMState: _msam.held_perturbation,
}


def _is_perturbed(value) -> bool:
  return isinstance(value, tuple(_HELD))


def _is_graphsam(value) -> bool:
  return isinstance(value, _graphsam.GraphSAMState)


def _states(state: optax.OptState, is_state) -> list:
  """The states in ``state`` for which ``is_state`` holds, however nested."""
  leaves = jax.tree.leaves(state, is_leaf=is_state)
  return [leaf for leaf in leaves if is_state(leaf)]


def _remove(params, states):
  if len(states) > 1:
    raise ValueError(
      f"the optimizer state holds {len(states)} perturbed-point states "
      "(GraphSAM, MSAM); one perturbed transformation per optimizer is "
      "supported."
    )
  if not states:
    return params
  offset = _HELD[type(states[0])](states[0], params)
  return jax.tree.map(lambda p, d: (p - d).astype(p.dtype), params, offset)


def eval_params(state: optax.OptState, params: optax.Params) -> optax.Params:
  """The clean weights behind the params held during training.

  GraphSAM and MSAM make the caller hold the perturbed point ``w + δ`` (see
  :func:`graphsam_optax.graphsam`, :func:`graphsam_optax.msam`); every other
  transformation of this library and of optax holds ``w`` itself. This
  returns ``w`` for any of them, also when the state is nested in
  ``optax.chain``, ``optax.inject_hyperparams`` or ``optax.MultiSteps``:
  evaluate, checkpoint and export what it returns. Only a
  :class:`graphsam_optax.GraphSAMState` or :class:`graphsam_optax.MSAMState`
  counts: other states, whatever their fields, leave ``params`` unchanged.

  Args:
    state: the optimizer state.
    params: the params held by the training loop.

  Returns:
    The weights to evaluate: ``params`` minus the perturbation of the
    GraphSAM or MSAM state found in ``state``, or ``params`` unchanged when
    there is none.

  Raises:
    ValueError: if the state holds more than one such state.

  Examples:
    >>> import jax.numpy as jnp, optax, graphsam_optax
    >>> params = jnp.ones(2)
    >>> state = optax.adam(1e-3).init(params)
    >>> print(graphsam_optax.eval_params(state, params))
    [1. 1.]
  """
  return _remove(params, _states(state, _is_perturbed))


def graphsam_eval_params(
  state: optax.OptState, params: optax.Params
) -> optax.Params:
  """Clean weights of :func:`graphsam_optax.graphsam`, ``params - δ``.

  The GraphSAM counterpart of ``optax.contrib.schedule_free_eval_params``:
  like :func:`eval_params`, but the state must contain a
  :class:`graphsam_optax.GraphSAMState` (possibly nested).

  Args:
    state: a GraphSAM state, or a state that contains one.
    params: the params held by the training loop.

  Returns:
    The clean weights ``w``.

  Raises:
    ValueError: if ``state`` holds no GraphSAM state.

  Examples:
    >>> import jax.numpy as jnp, optax, graphsam_optax
    >>> tx = graphsam_optax.graphsam(optax.sgd(0.1), anchor_every=10)
    >>> params = jnp.ones(2)
    >>> print(graphsam_optax.graphsam_eval_params(tx.init(params), params))
    [1. 1.]
  """
  states = _states(state, _is_graphsam)
  if not states:
    raise ValueError(
      "graphsam_eval_params needs a state produced by graphsam (or containing "
      f"one), got a {type(state).__name__}. Use graphsam_optax.eval_params for "
      "states of other optimizers."
    )
  return _remove(params, states)
