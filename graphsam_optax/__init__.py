"""GraphSAM and the efficient sharpness-aware family as optax transformations.

Every transformation here wraps a base optax optimizer and follows one calling
convention: ``tx.update(grads, state, params, grad_fn=...)`` where ``grads`` is
the gradient at the params the caller holds and ``grad_fn`` (optional for
GraphSAM) returns the gradient of the same batch at other params. Evaluate the
weights returned by :func:`eval_params`.
"""

from graphsam_optax._eval_params import eval_params
from graphsam_optax._eval_params import graphsam_eval_params
from graphsam_optax._graphsam import GraphSAMState
from graphsam_optax._graphsam import graphsam
from graphsam_optax._graphsam import graphsam_authors
from graphsam_optax._graphsam import sam_k
from graphsam_optax._graphsam import sam_one
from graphsam_optax._schedules import compounding_rho_schedule
from graphsam_optax._schedules import rho_decay_schedule

__version__ = "0.1.0"

__all__ = (
  "GraphSAMState",
  "compounding_rho_schedule",
  "eval_params",
  "graphsam",
  "graphsam_authors",
  "graphsam_eval_params",
  "rho_decay_schedule",
  "sam_k",
  "sam_one",
)
