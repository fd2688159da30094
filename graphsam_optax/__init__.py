"""GraphSAM and the efficient sharpness-aware family as optax transformations.

Every transformation here wraps a base optax optimizer and follows one calling
convention: ``tx.update(grads, state, params, grad_fn=...)`` where ``grads`` is
the gradient at the params the caller holds and ``grad_fn`` returns the
gradient of the same batch at other params. Evaluate the weights returned by
:func:`eval_params`. :func:`get_optimizer` builds any of them by name.
"""

from graphsam_optax import sharpness
from graphsam_optax._ae_sam import AESAMState
from graphsam_optax._ae_sam import ae_sam
from graphsam_optax._eval_params import eval_params
from graphsam_optax._eval_params import graphsam_eval_params
from graphsam_optax._fsam import FSAMState
from graphsam_optax._fsam import fsam
from graphsam_optax._graphsam import GraphSAMState
from graphsam_optax._graphsam import graphsam
from graphsam_optax._graphsam_variants import graphsam_authors
from graphsam_optax._graphsam_variants import sam_k
from graphsam_optax._graphsam_variants import sam_one
from graphsam_optax._gsam import GSAMState
from graphsam_optax._gsam import gsam
from graphsam_optax._looksam import LookSAMState
from graphsam_optax._looksam import looksam
from graphsam_optax._msam import MSAMState
from graphsam_optax._msam import msam
from graphsam_optax._registry import OptimizerSpec
from graphsam_optax._registry import get_optimizer
from graphsam_optax._registry import optimizer_names
from graphsam_optax._registry import optimizer_spec
from graphsam_optax._rst import RSTState
from graphsam_optax._rst import rst
from graphsam_optax._sam import SAMState
from graphsam_optax._sam import sam
from graphsam_optax._schedules import compounding_rho_schedule
from graphsam_optax._schedules import late_phase_schedule
from graphsam_optax._schedules import lr_proportional_schedule
from graphsam_optax._schedules import rho_decay_schedule

__version__ = "0.1.0"

__all__ = (
  "AESAMState",
  "FSAMState",
  "GSAMState",
  "GraphSAMState",
  "LookSAMState",
  "MSAMState",
  "OptimizerSpec",
  "RSTState",
  "SAMState",
  "ae_sam",
  "compounding_rho_schedule",
  "eval_params",
  "fsam",
  "get_optimizer",
  "graphsam",
  "graphsam_authors",
  "graphsam_eval_params",
  "gsam",
  "late_phase_schedule",
  "looksam",
  "lr_proportional_schedule",
  "msam",
  "optimizer_names",
  "optimizer_spec",
  "rho_decay_schedule",
  "rst",
  "sam",
  "sam_k",
  "sam_one",
  "sharpness",
)
