"""Every optimizer of the GraphSAM comparison by name, with its defaults.

One training loop runs them all: each name gives an
:class:`optax.GradientTransformationExtraArgs` called as
``tx.update(grads, state, params, grad_fn=grad_fn, **extra_args)``, with
``grads`` the gradient at the held params and ``grad_fn(p)`` the gradient of
the same batch at ``p``. Methods that do not need ``grad_fn`` ignore it.
"""

import dataclasses
import types
from collections.abc import Callable
from collections.abc import Mapping
from typing import Any

import optax

from graphsam_optax import _ae_sam
from graphsam_optax import _graphsam
from graphsam_optax import _looksam
from graphsam_optax import _rst
from graphsam_optax import _sam
from graphsam_optax import _schedules

_GRAPHSAM_PAPER = (
  "Wang et al., Efficient Sharpness-Aware Minimization for Molecular Graph "
  "Transformer Models, ICLR 2024, https://arxiv.org/abs/2406.13137"
)


@dataclasses.dataclass(frozen=True)
class OptimizerSpec:
  """How :func:`get_optimizer` builds one method, and what it costs.

  Attributes:
    name: the registry name.
    summary: one line saying what the method does.
    defaults: every hyperparameter the method accepts, with its default (the
      paper's where it gives one; see ``notes``).
    passes: gradient passes per step, in words.
    needs: which of ``steps_per_epoch`` and ``total_steps`` the method needs.
    uses_grad_fn: whether ``update`` calls ``grad_fn`` (on some steps).
    reference: the paper.
    notes: where the defaults come from, and deviations.
    build: ``build(optimizer, hyperparameters, steps_per_epoch,
      total_steps)`` returns the transformation.
    mean_passes: ``mean_passes(hyperparameters, steps_per_epoch)``, the
      expected gradient passes per step, or ``None`` when data dependent.
  """

  name: str
  summary: str
  defaults: Mapping[str, Any]
  passes: str
  needs: tuple[str, ...]
  uses_grad_fn: bool
  reference: str
  notes: str
  build: Callable[..., optax.GradientTransformationExtraArgs]
  mean_passes: Callable[[Mapping[str, Any], int | None], float | None]

  def describe(self) -> str:
    """A paragraph for a command line's ``--help``."""
    defaults = ", ".join(f"{k}={v!r}" for k, v in self.defaults.items())
    lines = [
      f"{self.name}: {self.summary}",
      f"  hyperparameters: {defaults or '(none)'}",
      f"  gradient passes per step: {self.passes}",
    ]
    if self.needs:
      lines.append(f"  needs: {', '.join(self.needs)}")
    if self.notes:
      lines.append(f"  notes: {self.notes}")
    if self.reference:
      lines.append(f"  reference: {self.reference}")
    return "\n".join(lines)


def _base(optimizer):
  """The base optimizer alone, accepting and ignoring ``grad_fn``."""
  optimizer = optax.with_extra_args_support(optimizer)

  def update_fn(updates, state, params=None, *, grad_fn=None, **extra_args):
    del grad_fn
    return optimizer.update(updates, state, params, **extra_args)

  return optax.GradientTransformationExtraArgs(optimizer.init, update_fn)


def _graphsam_rho(hp, steps_per_epoch):
  """The paper's step-decayed radius, unless ``rho`` is already a schedule."""
  if callable(hp["rho"]):
    return hp["rho"]
  return _schedules.rho_decay_schedule(
    hp["rho"],
    hp["gamma"],
    hp["decay_epochs"],
    steps_per_epoch=steps_per_epoch,
  )


def _spec(name, summary, defaults, passes, build, mean_passes, **fields):
  fields.setdefault("needs", ())
  fields.setdefault("uses_grad_fn", True)
  fields.setdefault("reference", "")
  fields.setdefault("notes", "")
  return OptimizerSpec(
    name=name,
    summary=summary,
    defaults=types.MappingProxyType(dict(defaults)),
    passes=passes,
    build=build,
    mean_passes=mean_passes,
    **fields,
  )


_SPECS = (
  _spec(
    "base",
    "the base optimizer alone (Adam in the paper); ignores grad_fn.",
    {},
    "1",
    lambda opt, hp, spe, total: _base(opt),
    lambda hp, spe: 1.0,
    uses_grad_fn=False,
  ),
  _spec(
    "sam",
    "SAM: every step takes the gradient at w + rho g/||g||.",
    {"rho": 0.05},
    "2",
    lambda opt, hp, spe, total: _sam.sam(opt, **hp),
    lambda hp, spe: 2.0,
    reference="Foret et al., ICLR 2021, https://arxiv.org/abs/2010.01412",
    notes="rho 0.05 as in the GraphSAM paper's SAM runs.",
  ),
  _spec(
    "asam",
    "ASAM: SAM with the ball scaled by |w| + adaptive_eta.",
    {"rho": 0.05, "adaptive_eta": 0.01},
    "2",
    lambda opt, hp, spe, total: _sam.sam(opt, adaptive=True, **hp),
    lambda hp, spe: 2.0,
    reference="Kwon et al., ICML 2021, https://arxiv.org/abs/2102.11600",
    notes=(
      "rho 0.05 as the GraphSAM authors' code runs its ASAM-scaled SAM "
      "baseline; Kwon et al. use larger radii."
    ),
  ),
  _spec(
    "graphsam",
    "GraphSAM: perturbation predicted by a moving average of updating "
    "gradients, anchored on a true gradient once per epoch.",
    {
      "rho": 0.05,
      "beta": 0.99,
      "gamma": 0.5,
      "decay_epochs": 1,
      "normalize_anchor": True,
    },
    "1, plus 1 at the anchor step of each epoch (T + 1 per epoch)",
    lambda opt, hp, spe, total: _graphsam.graphsam(
      opt,
      anchor_every=spe,
      rho=_graphsam_rho(hp, spe),
      beta=hp["beta"],
      normalize_anchor=hp["normalize_anchor"],
    ),
    lambda hp, spe: 1.0 + 1.0 / spe,
    needs=("steps_per_epoch",),
    reference=_GRAPHSAM_PAPER,
    notes=(
      "rho_e = rho * gamma^floor(e / decay_epochs) per epoch e (paper "
      "defaults); a schedule given as rho is used as is."
    ),
  ),
  _spec(
    "graphsam_authors",
    "GraphSAM as the authors' code runs it (ASAM-style per-tensor "
    "perturbation, compounding rho decay).",
    {"rho": 0.05, "beta": 0.99, "gamma": 0.5, "decay_epochs": 1},
    "1, plus 1 at the anchor step of each epoch (T + 1 per epoch)",
    lambda opt, hp, spe, total: _graphsam.graphsam_authors(opt, spe, **hp),
    lambda hp, spe: 1.0 + 1.0 / spe,
    needs=("steps_per_epoch",),
    reference=_GRAPHSAM_PAPER + "; code github.com/YL-wang/GraphSAM",
  ),
  _spec(
    "sam_k",
    "SAM-k: the SAM perturbation recomputed every k steps, reused between.",
    {"k": 8, "rho": 0.05},
    "1, plus 1 every k steps (1 + 1/k)",
    lambda opt, hp, spe, total: _graphsam.sam_k(opt, **hp),
    lambda hp, spe: 1.0 + 1.0 / hp["k"],
    reference=_GRAPHSAM_PAPER,
    notes=(
      "the reference notes give no k; 8 matches LookSAM's k, so the two "
      "reuse schemes cost the same."
    ),
  ),
  _spec(
    "sam_one",
    "SAM-One: one true perturbation gradient per epoch, reused all epoch.",
    {"rho": 0.05},
    "1, plus 1 at the first step of each epoch (T + 1 per epoch)",
    lambda opt, hp, spe, total: _graphsam.sam_one(opt, spe, **hp),
    lambda hp, spe: 1.0 + 1.0 / spe,
    needs=("steps_per_epoch",),
    reference=_GRAPHSAM_PAPER,
  ),
  _spec(
    "looksam",
    "LookSAM: a SAM step every k steps; between, the stored sharpness "
    "direction g_v is added to the clean gradient.",
    {"k": 8, "alpha": 0.2, "rho": 1e-4},
    "2 every k steps, 1 otherwise (1 + 1/k)",
    lambda opt, hp, spe, total: _looksam.looksam(opt, **hp),
    lambda hp, spe: 1.0 + 1.0 / hp["k"],
    reference="Liu et al., CVPR 2022, https://arxiv.org/abs/2203.02714",
    notes="rho 1e-4, alpha 0.2, k 8 as the GraphSAM paper ran LookSAM.",
  ),
  _spec(
    "ae_sam",
    "AE-SAM: a SAM step when ||g||^2 >= mu + c_t sigma (moving averages), "
    "c_t linear from lambda1 to lambda2 over total_steps.",
    {"rho": 0.05, "delta": 0.9, "lambda1": -1.0, "lambda2": 1.0},
    "2 on SAM steps, 1 otherwise (data dependent)",
    lambda opt, hp, spe, total: _ae_sam.ae_sam(opt, total, **hp),
    lambda hp, spe: None,
    needs=("total_steps",),
    reference="Jiang et al., ICLR 2023, https://arxiv.org/abs/2304.14647",
    notes="delta, lambda1, lambda2 as in Jiang et al.",
  ),
  _spec(
    "rst",
    "RST: each step is a SAM step with probability p (float or schedule).",
    {"p": 0.5, "rho": 0.05, "seed": 0},
    "2 with probability p, 1 otherwise (1 + p)",
    lambda opt, hp, spe, total: _rst.rst(opt, **hp),
    lambda hp, spe: None if callable(hp["p"]) else 1.0 + hp["p"],
    reference=(
      "Zhao, Zhang and Hu, Randomized Sharpness-Aware Training, 2022, "
      "https://openreview.net/forum?id=8foynpwwRb"
    ),
    notes="p 0.5 halves SAM's extra cost.",
  ),
)
_REGISTRY = {spec.name: spec for spec in _SPECS}


def optimizer_names() -> tuple[str, ...]:
  """The names :func:`get_optimizer` accepts, in a fixed order.

  Examples:
    >>> from graphsam_optax import optimizer_names
    >>> print(" ".join(optimizer_names()))
    base sam asam graphsam graphsam_authors sam_k sam_one looksam ae_sam rst
  """
  return tuple(_REGISTRY)


def optimizer_spec(name: str) -> OptimizerSpec:
  """The :class:`OptimizerSpec` of ``name``: defaults, cost, description.

  Raises:
    ValueError: if ``name`` is not a registered name; the message lists them.

  Examples:
    >>> from graphsam_optax import optimizer_spec
    >>> print(optimizer_spec("looksam").describe())  # doctest: +ELLIPSIS
    looksam: LookSAM: a SAM step every k steps; ...
      hyperparameters: k=8, alpha=0.2, rho=0.0001
      gradient passes per step: 2 every k steps, 1 otherwise (1 + 1/k)
      notes: rho 1e-4, alpha 0.2, k 8 as the GraphSAM paper ran LookSAM.
      reference: Liu et al., CVPR 2022, https://arxiv.org/abs/2203.02714
  """
  if name not in _REGISTRY:
    raise ValueError(
      f"unknown optimizer name={name!r}; valid names: "
      f"{', '.join(optimizer_names())}."
    )
  return _REGISTRY[name]


def get_optimizer(
  name: str,
  optimizer: optax.GradientTransformation,
  *,
  steps_per_epoch: int | None = None,
  total_steps: int | None = None,
  **hyperparameters: Any,
) -> optax.GradientTransformationExtraArgs:
  r"""The method ``name`` wrapped around ``optimizer``, with paper defaults.

  Every method follows one calling convention, so a single training loop
  swaps them by name::

    updates, state = tx.update(grads, state, params, grad_fn=grad_fn)

  with ``grads`` the gradient at the held ``params`` and ``grad_fn(p)`` the
  gradient of the same batch at ``p``. Methods call ``grad_fn`` only when
  their algorithm needs a second pass (see :attr:`OptimizerSpec.passes`);
  ``"base"`` ignores it. Evaluate ``graphsam_optax.eval_params(state,
  params)``: GraphSAM's variants hold a perturbed point, the others the
  weights themselves.

  Each name's defaults, cost and sources: :func:`optimizer_spec`, whose
  :meth:`OptimizerSpec.describe` also serves a command line's ``--help``.

  Args:
    name: one of :func:`optimizer_names`.
    optimizer: the base optimizer, any optax transformation (Adam in the
      paper).
    steps_per_epoch: optimizer steps per epoch; needed by ``graphsam``,
      ``graphsam_authors`` and ``sam_one`` (anchor once per epoch, ρ decay
      per epoch), ignored by the others.
    total_steps: the length of training in steps; needed by ``ae_sam`` (its
      threshold schedule), ignored by the others.
    **hyperparameters: overrides of the defaults of ``name``; floats may be
      optax schedules where the method's factory accepts them.

  Returns:
    An :class:`optax.GradientTransformationExtraArgs`.

  Raises:
    ValueError: on an unknown name or hyperparameter (the message lists the
      valid ones), on a missing ``steps_per_epoch`` or ``total_steps``, and
      on invalid values (from the method's factory).

  Examples:
    >>> import jax, jax.numpy as jnp, optax
    >>> from graphsam_optax import get_optimizer
    >>> loss = lambda w: jnp.sum(w**2 * jnp.array([1.0, 4.0]))
    >>> grad_fn = jax.grad(loss)
    >>> def train(tx, steps=20):
    ...   @jax.jit
    ...   def step(params, state):
    ...     grads = grad_fn(params)
    ...     updates, state = tx.update(grads, state, params, grad_fn=grad_fn)
    ...     return optax.apply_updates(params, updates), state
    ...   params = jnp.ones(2)
    ...   state = tx.init(params)
    ...   for _ in range(steps):
    ...     params, state = step(params, state)
    ...   return float(loss(params))
    >>> for name, overrides in (("base", {}), ("looksam", {"rho": 0.05})):
    ...   tx = get_optimizer(name, optax.adam(0.1), **overrides)
    ...   print(name, f"{train(tx):.4f}")
    base 0.3676
    looksam 0.3542

    The defaults of every method:

    >>> from graphsam_optax import optimizer_names, optimizer_spec
    >>> for name in optimizer_names():
    ...   defaults = optimizer_spec(name).defaults
    ...   print(name, *(f"{k}={v}" for k, v in defaults.items()))
    base
    sam rho=0.05
    asam rho=0.05 adaptive_eta=0.01
    graphsam rho=0.05 beta=0.99 gamma=0.5 decay_epochs=1 normalize_anchor=True
    graphsam_authors rho=0.05 beta=0.99 gamma=0.5 decay_epochs=1
    sam_k k=8 rho=0.05
    sam_one rho=0.05
    looksam k=8 alpha=0.2 rho=0.0001
    ae_sam rho=0.05 delta=0.9 lambda1=-1.0 lambda2=1.0
    rst p=0.5 rho=0.05 seed=0
  """
  spec = optimizer_spec(name)
  unknown = sorted(set(hyperparameters) - set(spec.defaults))
  if unknown:
    valid = ", ".join(spec.defaults) or "(none)"
    raise ValueError(
      f"unknown hyperparameter(s) {', '.join(unknown)} for optimizer "
      f"{name!r}; valid: {valid}."
    )
  given = {"steps_per_epoch": steps_per_epoch, "total_steps": total_steps}
  for needed in spec.needs:
    if given[needed] is None:
      raise ValueError(
        f"optimizer {name!r} needs {needed}, got {needed}=None: pass "
        f"get_optimizer({name!r}, optimizer, {needed}=...)."
      )
  merged = {**spec.defaults, **hyperparameters}
  return spec.build(optimizer, merged, steps_per_epoch, total_steps)
