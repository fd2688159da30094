"""Every optimizer of the GraphSAM comparison by name, with its defaults.

One training loop runs them all: each name gives an
:class:`optax.GradientTransformationExtraArgs` called as
``tx.update(grads, state, params, grad_fn=grad_fn, **extra_args)``, with
``grads`` the gradient at the held params and ``grad_fn(p)`` the gradient of
the same batch at ``p``. Methods that do not need ``grad_fn`` ignore it.

Each name is built by one function, a factory of this library or a thin
wrapper below: its keyword parameters and their defaults are the name's
hyperparameters, and the first paragraph of its docstring the name's summary,
so that the registry and the factories cannot disagree.
"""

import dataclasses
import inspect
import types
from collections.abc import Callable
from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp
import optax

from graphsam_optax import _common
from graphsam_optax._ae_sam import ae_sam
from graphsam_optax._fsam import fsam
from graphsam_optax._graphsam import graphsam
from graphsam_optax._graphsam_variants import graphsam_authors
from graphsam_optax._graphsam_variants import sam_k
from graphsam_optax._graphsam_variants import sam_one
from graphsam_optax._gsam import gsam
from graphsam_optax._looksam import looksam
from graphsam_optax._msam import msam
from graphsam_optax._rst import rst
from graphsam_optax._sam import sam
from graphsam_optax._schedules import late_phase_schedule
from graphsam_optax._schedules import lr_proportional_schedule
from graphsam_optax._schedules import rho_decay_schedule

_GRAPHSAM_PAPER = (
  "Wang et al., Efficient Sharpness-Aware Minimization for Molecular Graph "
  "Transformer Models, ICLR 2024, https://arxiv.org/abs/2406.13137"
)
# What a method may need besides its hyperparameters, and what it means.
_NEEDS = {
  "steps_per_epoch": "it is the number of optimizer steps in one epoch.",
  "total_steps": "it is the length of training in optimizer steps.",
  "learning_rate": "it is the base optimizer's learning rate (schedule).",
}
# Beyond this many steps the registry's GSAM does not scan the learning-rate
# schedule for its extremes.
_MAX_SCANNED_STEPS = 10**7


def _defaults(function: Callable[..., Any]) -> dict[str, Any]:
  """The parameters of ``function`` that have a default, with it."""
  parameters = inspect.signature(function).parameters.values()
  return {p.name: p.default for p in parameters if p.default is not p.empty}


# The wrappers below take their defaults from the factories they call.
_SAM = _defaults(sam)
_GRAPHSAM = _defaults(graphsam)
_RHO_DECAY = _defaults(rho_decay_schedule)
_MSAM = _defaults(msam)
_GSAM = _defaults(gsam)
_FSAM = _defaults(fsam)
_LATE = _defaults(late_phase_schedule)


@dataclasses.dataclass(frozen=True)
class OptimizerSpec:
  """How :func:`get_optimizer` builds one method, and what it costs.

  ``summary``, ``defaults`` and ``needs`` are read from ``build``.

  Attributes:
    name: the registry name.
    build: ``build(optimizer, **needs, **hyperparameters)`` returns the
      transformation.
    passes: gradient passes per step, in words.
    mean_passes: ``mean_passes(hyperparameters, steps_per_epoch)``, the
      expected gradient passes per step, or ``None`` when data dependent.
    uses_grad_fn: whether ``update`` calls ``grad_fn`` (on some steps).
    reference: the paper.
    notes: where the defaults come from, and deviations.
    summary: what the method does: the first paragraph of ``build``'s
      docstring.
    defaults: every hyperparameter the method accepts, with its default (the
      paper's where it gives one; see ``notes``): the parameters of
      ``build`` that have one.
    needs: which of ``steps_per_epoch``, ``total_steps`` and
      ``learning_rate`` the method needs: the parameters of ``build`` of
      these names without a default.
    optional_needs: those it uses when given (parameters with a default).
  """

  name: str
  build: Callable[..., optax.GradientTransformationExtraArgs]
  passes: str
  mean_passes: Callable[[Mapping[str, Any], int | None], float | None]
  uses_grad_fn: bool = True
  reference: str = ""
  notes: str = ""
  summary: str = dataclasses.field(init=False)
  defaults: Mapping[str, Any] = dataclasses.field(init=False)
  needs: tuple[str, ...] = dataclasses.field(init=False)
  optional_needs: tuple[str, ...] = dataclasses.field(init=False)

  def __post_init__(self):
    parameters = list(inspect.signature(self.build).parameters.values())[1:]
    needs = tuple(
      p.name for p in parameters if p.name in _NEEDS and p.default is p.empty
    )
    optional_needs = tuple(
      p.name
      for p in parameters
      if p.name in _NEEDS and p.default is not p.empty
    )
    defaults = {p.name: p.default for p in parameters if p.name not in _NEEDS}
    if inspect.Parameter.empty in defaults.values():
      raise TypeError(f"every hyperparameter of {self.name} needs a default")
    paragraph = inspect.getdoc(self.build).split("\n\n")[0]
    summary = " ".join(paragraph.split()).replace("``", "")
    object.__setattr__(self, "summary", summary)
    object.__setattr__(self, "defaults", types.MappingProxyType(defaults))
    object.__setattr__(self, "needs", needs)
    object.__setattr__(self, "optional_needs", optional_needs)

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


def _adam(optimizer: optax.GradientTransformation):
  """The base optimizer alone, no sharpness-aware step (Adam in the paper,
  hence the name); ignores grad_fn."""
  optimizer = optax.with_extra_args_support(optimizer)

  def update_fn(updates, state, params=None, *, grad_fn=None, **extra_args):
    del grad_fn
    return optimizer.update(updates, state, params, **extra_args)

  return optax.GradientTransformationExtraArgs(optimizer.init, update_fn)


def _sam(
  optimizer: optax.GradientTransformation,
  steps_per_epoch: int | None = None,
  rho: optax.ScalarOrSchedule = _SAM["rho"],
  gamma: float = 1.0,
  decay_epochs: int = _RHO_DECAY["decay_epochs"],
):
  """SAM: every step takes the gradient at w + rho g/||g||.

  With ``steps_per_epoch``, a float ``rho`` follows GraphSAM's
  ``rho_decay_schedule`` (``gamma`` 1, the default, keeps it constant), so
  that SAM can run on GraphSAM's radius schedule; a schedule is used as is.
  """
  if callable(rho):
    return sam(optimizer, rho)
  _common.check_rho(rho)
  if steps_per_epoch is None:
    if not isinstance(gamma, (int, float)) or gamma != 1:
      raise ValueError(
        f"sam with gamma={gamma!r} needs steps_per_epoch (rho decays once "
        "per decay_epochs epochs): pass get_optimizer('sam', optimizer, "
        "steps_per_epoch=...)."
      )
    return sam(optimizer, rho)
  return sam(
    optimizer,
    rho_decay_schedule(
      rho, gamma, decay_epochs, steps_per_epoch=steps_per_epoch
    ),
  )


def _asam(
  optimizer: optax.GradientTransformation,
  rho: optax.ScalarOrSchedule = _SAM["rho"],
  adaptive_eta: float = _SAM["adaptive_eta"],
):
  """ASAM: SAM with the ball scaled by |w| + adaptive_eta."""
  return sam(optimizer, rho, adaptive=True, adaptive_eta=adaptive_eta)


def _graphsam(
  optimizer: optax.GradientTransformation,
  steps_per_epoch: int,
  rho: optax.ScalarOrSchedule = _GRAPHSAM["rho"],
  beta: float = _GRAPHSAM["beta"],
  gamma: float = _RHO_DECAY["gamma"],
  decay_epochs: int = _RHO_DECAY["decay_epochs"],
  normalize_anchor: bool = _GRAPHSAM["normalize_anchor"],
):
  """GraphSAM: perturbation predicted by a moving average of updating
  gradients, anchored on a true gradient once per epoch.

  A float ``rho`` decays as the paper's ``rho_decay_schedule``; a schedule is
  used as is.
  """
  if not callable(rho):
    _common.check_rho(rho)
    rho = rho_decay_schedule(
      rho, gamma, decay_epochs, steps_per_epoch=steps_per_epoch
    )
  return graphsam(
    optimizer,
    anchor_every=steps_per_epoch,
    rho=rho,
    beta=beta,
    normalize_anchor=normalize_anchor,
  )


def _msam(
  optimizer: optax.GradientTransformation,
  rho: optax.ScalarOrSchedule = _MSAM["rho"],
):
  """MSAM: the gradient at the weights moved by rho along the normalized
  negative momentum of the base optimizer; no extra pass."""
  return msam(optimizer, rho)


def _gsam(
  optimizer: optax.GradientTransformation,
  learning_rate: optax.ScalarOrSchedule | None = None,
  total_steps: int | None = None,
  rho: optax.ScalarOrSchedule = _GSAM["rho"],
  rho_min: float = 0.01,
  alpha: float = _GSAM["alpha"],
):
  """GSAM: SAM's gradient minus alpha times the clean gradient's part
  orthogonal to it (an ascent on the surrogate gap).

  Given the base's ``learning_rate`` schedule and ``total_steps``, a float
  ``rho`` is tied to the learning rate as in the paper: ``rho`` at the largest
  learning rate of the run, ``rho_min`` at the smallest, linear between.
  Otherwise (a constant learning rate) ``rho`` is constant; a schedule is
  used as is.
  """
  _common.check_rho(rho_min, "rho_min")
  if callable(rho):
    return gsam(optimizer, rho, alpha)
  _common.check_rho(rho)
  if (
    _common.is_concrete(rho) and _common.is_concrete(rho_min) and rho_min > rho
  ):
    raise ValueError(
      f"rho_min must be <= rho, got rho_min={rho_min!r} and rho={rho!r}: "
      "rho is GSAM's radius at the largest learning rate, rho_min at the "
      "smallest."
    )
  if callable(learning_rate) and total_steps is not None:
    if total_steps > _MAX_SCANNED_STEPS:
      raise ValueError(
        f"gsam ties rho to the learning rate by scanning its schedule, "
        f"total_steps={total_steps!r} is beyond {_MAX_SCANNED_STEPS}: pass "
        "rho=graphsam_optax.lr_proportional_schedule(...) instead."
      )
    rates = learning_rate(jnp.arange(total_steps))
    rho = lr_proportional_schedule(
      learning_rate,
      rho_max=rho,
      rho_min=rho_min,
      lr_max=jnp.max(rates),
      lr_min=jnp.min(rates),
    )
  return gsam(optimizer, rho, alpha)


def _fsam(
  optimizer: optax.GradientTransformation,
  rho: optax.ScalarOrSchedule = _FSAM["rho"],
  sigma: float = _FSAM["sigma"],
  ema_decay: float = _FSAM["ema_decay"],
):
  """F-SAM: SAM perturbed along the gradient minus sigma times its moving
  average (the batch-specific part)."""
  return fsam(optimizer, rho, sigma, ema_decay)


def _late_sam(
  optimizer: optax.GradientTransformation,
  total_steps: int,
  rho: optax.ScalarOrSchedule = _LATE["rho"],
  start: float = _LATE["start"],
):
  """Late-phase SAM: plain steps until start * total_steps, SAM after."""
  return sam(
    optimizer,
    late_phase_schedule(rho, total_steps=total_steps, start=start),
    skip_zero_rho=True,
  )


_ONCE_PER_EPOCH = "1, plus 1 at the anchor step of each epoch (T + 1 per epoch)"
_SPECS = (
  OptimizerSpec(
    "adam",
    _adam,
    "1",
    lambda hp, spe: 1.0,
    uses_grad_fn=False,
    notes=(
      "the base optimizer given to get_optimizer, unchanged (Adam in the "
      "paper); 'base' is accepted as another name for it."
    ),
  ),
  OptimizerSpec(
    "sam",
    _sam,
    "2",
    lambda hp, spe: 2.0,
    reference="Foret et al., ICLR 2021, https://arxiv.org/abs/2010.01412",
    notes=(
      "rho 0.05 as in the GraphSAM paper's SAM runs, kept constant (gamma "
      "1); gamma < 1 decays it as GraphSAM's schedule, given steps_per_epoch."
    ),
  ),
  OptimizerSpec(
    "asam",
    _asam,
    "2",
    lambda hp, spe: 2.0,
    reference="Kwon et al., ICML 2021, https://arxiv.org/abs/2102.11600",
    notes=(
      "rho 0.05 as the GraphSAM authors' code runs its ASAM-scaled SAM "
      "baseline; Kwon et al. use larger radii."
    ),
  ),
  OptimizerSpec(
    "graphsam",
    _graphsam,
    _ONCE_PER_EPOCH,
    lambda hp, spe: 1.0 + 1.0 / spe,
    reference=_GRAPHSAM_PAPER,
    notes=(
      "rho_e = rho * gamma^floor(e / decay_epochs) per epoch e (paper "
      "defaults); a schedule given as rho is used as is."
    ),
  ),
  OptimizerSpec(
    "graphsam_authors",
    graphsam_authors,
    _ONCE_PER_EPOCH,
    lambda hp, spe: 1.0 + 1.0 / spe,
    reference=_GRAPHSAM_PAPER + "; code github.com/YL-wang/GraphSAM",
    notes=(
      "ASAM-style per-tensor perturbation, clip radius and compounding decay "
      "of rho and radius, as the authors' code."
    ),
  ),
  OptimizerSpec(
    "sam_k",
    sam_k,
    "1, plus 1 every k steps (1 + 1/k)",
    lambda hp, spe: 1.0 + 1.0 / hp["k"],
    reference=_GRAPHSAM_PAPER,
    notes=(
      "the reference notes give no k; 8 matches LookSAM's k, so the two "
      "reuse schemes cost the same."
    ),
  ),
  OptimizerSpec(
    "sam_one",
    sam_one,
    "1, plus 1 at the first step of each epoch (T + 1 per epoch)",
    lambda hp, spe: 1.0 + 1.0 / spe,
    reference=_GRAPHSAM_PAPER,
  ),
  OptimizerSpec(
    "looksam",
    looksam,
    "2 every k steps, 1 otherwise (1 + 1/k)",
    lambda hp, spe: 1.0 + 1.0 / hp["k"],
    reference="Liu et al., CVPR 2022, https://arxiv.org/abs/2203.02714",
    notes="rho 1e-4, alpha 0.2, k 8 as the GraphSAM paper ran LookSAM.",
  ),
  OptimizerSpec(
    "ae_sam",
    ae_sam,
    "2 on SAM steps, 1 otherwise (data dependent)",
    lambda hp, spe: None,
    reference="Jiang et al., ICLR 2023, https://arxiv.org/abs/2304.14647",
    notes="delta, lambda1, lambda2 as in Jiang et al.",
  ),
  OptimizerSpec(
    "rst",
    rst,
    "2 with probability p, 1 otherwise (1 + p)",
    lambda hp, spe: None if callable(hp["p"]) else 1.0 + hp["p"],
    reference=(
      "Zhao, Zhang and Hu, Randomized Sharpness-Aware Training, 2022, "
      "https://openreview.net/forum?id=8foynpwwRb"
    ),
    notes="p 0.5 halves SAM's extra cost.",
  ),
  OptimizerSpec(
    "msam",
    _msam,
    "1",
    lambda hp, spe: 1.0,
    uses_grad_fn=False,
    reference=(
      "Becker, Altrock and Risse, Momentum-SAM, 2024, "
      "https://arxiv.org/abs/2401.12033; code github.com/MarlonBecker/MSAM"
    ),
    notes=(
      "rho 3 as the authors' published runs (SGD and AdamW); the momentum is "
      "the base's own first moment (Adam's mu: the authors' AdamW variant)."
    ),
  ),
  OptimizerSpec(
    "gsam",
    _gsam,
    "2 (1 on steps where rho_t = 0)",
    lambda hp, spe: 2.0,
    reference=(
      "Zhuang et al., ICLR 2022, https://arxiv.org/abs/2203.08065; code "
      "google-research/big_vision, github.com/juntang-zhuang/GSAM"
    ),
    notes=(
      "rho 0.05 (the family's SAM radius) at the largest learning rate, "
      "rho_min 0.01 at the smallest (the authors' ViT config: a sixth); "
      "alpha 0.2 as the authors' PyTorch example."
    ),
  ),
  OptimizerSpec(
    "fsam",
    _fsam,
    "2 (1 on steps where rho_t = 0)",
    lambda hp, spe: 2.0,
    reference=(
      "Li et al., CVPR 2024, https://arxiv.org/abs/2403.12350; code "
      "github.com/nblt/F-SAM"
    ),
    notes=(
      "sigma 1 and ema_decay 0.95 as the authors' run.sh; rho 0.05, the "
      "family's SAM radius (the authors run 0.2 with SGD on CIFAR)."
    ),
  ),
  OptimizerSpec(
    "late_sam",
    _late_sam,
    "1 before start * total_steps, 2 after (2 - start)",
    lambda hp, spe: 2.0 - hp["start"],
    reference=("Zhou et al., ICLR 2025, https://arxiv.org/abs/2410.10373"),
    notes=(
      "start 0.875 as the paper's Figure 1 (SAM for epochs 175-200 of 200); "
      "total_steps is the planned run, which early stopping may cut short."
    ),
  ),
)
_REGISTRY = {spec.name: spec for spec in _SPECS}
# Other names a user may type for a registry name.
_ALIASES = {"base": "adam"}


def optimizer_names() -> tuple[str, ...]:
  """The names :func:`get_optimizer` accepts, in a fixed order.

  Examples:
    >>> from graphsam_optax import optimizer_names
    >>> names = optimizer_names()
    >>> print(" ".join(names[:10]))
    adam sam asam graphsam graphsam_authors sam_k sam_one looksam ae_sam rst
    >>> print(" ".join(names[10:]))
    msam gsam fsam late_sam
  """
  return tuple(_REGISTRY)


def optimizer_spec(name: str) -> OptimizerSpec:
  """The :class:`OptimizerSpec` of ``name``: defaults, cost, description.

  Raises:
    ValueError: if ``name`` is not a registered name; the message lists them.

  Examples:
    >>> from graphsam_optax import optimizer_spec
    >>> print(optimizer_spec("looksam").describe())
    looksam: LookSAM: SAM every k steps, its sharpness component reused between.
      hyperparameters: k=8, alpha=0.2, rho=0.0001
      gradient passes per step: 2 every k steps, 1 otherwise (1 + 1/k)
      notes: rho 1e-4, alpha 0.2, k 8 as the GraphSAM paper ran LookSAM.
      reference: Liu et al., CVPR 2022, https://arxiv.org/abs/2203.02714
  """
  name = _ALIASES.get(name, name)
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
  learning_rate: optax.ScalarOrSchedule | None = None,
  **hyperparameters: Any,
) -> optax.GradientTransformationExtraArgs:
  r"""The method ``name`` wrapped around ``optimizer``, with paper defaults.

  Every method follows one calling convention, so a single training loop
  swaps them by name::

    updates, state = tx.update(grads, state, params, grad_fn=grad_fn)

  with ``grads`` the gradient at the held ``params`` and ``grad_fn(p)`` the
  gradient of the same batch at ``p``. Methods call ``grad_fn`` only when
  their algorithm needs a second pass (see :attr:`OptimizerSpec.passes`);
  ``"adam"`` (the base optimizer alone) ignores it. Evaluate
  ``graphsam_optax.eval_params(state, params)``: GraphSAM's variants hold a
  perturbed point, the others the weights themselves.

  Each name's defaults, cost and sources: :func:`optimizer_spec`, whose
  :meth:`OptimizerSpec.describe` also serves a command line's ``--help``.

  Args:
    name: one of :func:`optimizer_names`.
    optimizer: the base optimizer, any optax transformation (Adam in the
      paper).
    steps_per_epoch: optimizer steps per epoch; needed by ``graphsam``,
      ``graphsam_authors`` and ``sam_one`` (anchor once per epoch, ρ decay
      per epoch), and by ``sam`` with ``gamma`` < 1 (ρ decay); ignored by the
      others.
    total_steps: the length of training in steps; needed by ``ae_sam`` (its
      threshold schedule) and ``late_sam`` (its switch), used by ``gsam``
      (with ``learning_rate``), ignored by the others.
    learning_rate: the base optimizer's learning rate, a float or a
      schedule; ``gsam`` ties its radius to it, the others ignore it.
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
    >>> for name, overrides in (("adam", {}), ("looksam", {"rho": 0.05})):
    ...   tx = get_optimizer(name, optax.adam(0.1), **overrides)
    ...   print(name, f"{train(tx):.4f}")
    adam 0.3676
    looksam 0.3542

    The defaults of every method:

    >>> from graphsam_optax import optimizer_names, optimizer_spec
    >>> for name in optimizer_names():
    ...   defaults = optimizer_spec(name).defaults
    ...   print(name, *(f"{k}={v}" for k, v in defaults.items()))
    adam
    sam rho=0.05 gamma=1.0 decay_epochs=1
    asam rho=0.05 adaptive_eta=0.01
    graphsam rho=0.05 beta=0.99 gamma=0.5 decay_epochs=1 normalize_anchor=True
    graphsam_authors rho=0.05 beta=0.99 gamma=0.5 decay_epochs=1 radius=0.05
    sam_k k=8 rho=0.05
    sam_one rho=0.05
    looksam k=8 alpha=0.2 rho=0.0001
    ae_sam rho=0.05 delta=0.9 lambda1=-1.0 lambda2=1.0
    rst p=0.5 rho=0.05 seed=0
    msam rho=3.0
    gsam rho=0.05 rho_min=0.01 alpha=0.2
    fsam rho=0.05 sigma=1.0 ema_decay=0.95
    late_sam rho=0.05 start=0.875
  """
  spec = optimizer_spec(name)
  unknown = sorted(set(hyperparameters) - set(spec.defaults))
  if unknown:
    valid = ", ".join(spec.defaults) or "(none)"
    raise ValueError(
      f"unknown hyperparameter(s) {', '.join(unknown)} for optimizer "
      f"{name!r}; valid: {valid}."
    )
  given = {
    "steps_per_epoch": steps_per_epoch,
    "total_steps": total_steps,
    "learning_rate": learning_rate,
  }

  def check(needed):
    if needed != "learning_rate":  # a float or a schedule
      _common.check_integer(needed, given[needed], 1, _NEEDS[needed])

  for needed in spec.needs:
    if given[needed] is None:
      raise ValueError(
        f"optimizer {name!r} needs {needed}, got {needed}=None: pass "
        f"get_optimizer({name!r}, optimizer, {needed}=...)."
      )
    check(needed)
  needs = {needed: given[needed] for needed in spec.needs}
  for optional in spec.optional_needs:
    if given[optional] is not None:
      check(optional)
      needs[optional] = given[optional]
  return spec.build(optimizer, **needs, **{**spec.defaults, **hyperparameters})
