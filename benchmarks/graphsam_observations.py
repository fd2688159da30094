"""What motivates GraphSAM, measured along a SAM run of CoMPT on BBBP.

GraphSAM (Wang et al., ICLR 2024) saves SAM's first gradient pass by
predicting the perturbation direction from earlier updating gradients. This
script measures the observations behind that choice on the paper's
CoMPT/BBBP set-up (``models.configs.default``: random split, batch 32, Adam
with the paper's learning-rate schedule) trained with SAM (``rho`` 0.05):

(a) How fast the two gradients change. At every step ``t`` SAM computes the
    true perturbation gradient ``g_t = grad L_B(w_t)`` and the updating
    gradient ``omega_t = grad L_B(w_t + rho g_t / ||g_t||)``; both are taken
    from SAM's own two passes (no extra cost). Recorded: the cosine of
    successive ``g``'s and of successive ``omega``'s, their norms and
    relative changes, and ``cos(omega_{t-1}, g_t)``. Successive vectors come
    from different minibatches, so these include minibatch noise.
(b) How often each cheap approximation of the perturbation direction points
    the same way as the true ``g_t``:

    * GraphSAM: ``eps_t = beta eps_{t-1} + (1 - beta) omega_{t-1} /
      ||omega_{t-1}||``, re-anchored to ``g_t`` at the first step of every
      epoch; tracked with the anchor normalized (``graphsam_optax``'s
      default) and raw (the paper's pseudocode);
    * SAM-k: the ``g`` of the last anchor, anchors every ``k`` steps
      (``graphsam_optax.sam_k``'s default, ``k = 8``);
    * SAM-One: the ``g`` of the first step of the epoch.

    "Points the same way" is defined as ``cos(approximation, g_t) > 0``; the
    mean cosine and the share of steps with ``cos > 0.5`` are reported too,
    all over the steps where the method uses its approximation (its own
    anchor steps, where the cosine is 1 by construction, are excluded; the
    shares over all steps are in the JSON). The paper reports 72.5%
    (GraphSAM), 56.7% (SAM-k) and 40.1% (SAM-One) without a definition we
    could confirm, so those numbers may measure something else. Every
    approximation is a passive observer of the SAM trajectory: all of them
    see the same weights and minibatches, which isolates the quality of the
    approximation from the training dynamics it would cause (GraphSAM's
    ``omega`` would otherwise be taken at its own perturbed point).
(c) The sharpness reached by Adam, SAM and GraphSAM (``graphsam_optax``
    registry defaults, ``rho`` decayed per epoch) after the same short
    schedule from the same initialization and batch order: ``||H||`` by
    power iteration (``graphsam_optax.sharpness.top_eigenvalue``, exact
    Hessian-vector products) of the loss on a fixed subset of the training
    set, at the clean weights (``graphsam_optax.eval_params``).

Run from the repository root (``GRAPHSAM_DATA_DIR`` names the MoleculeNet
CSVs)::

  python -m benchmarks.graphsam_observations            # BBBP, 2 epochs
  python -m benchmarks.graphsam_observations --smoke --out /tmp/obs

Every batch is padded to one shape (``Config.fixed_shapes``) and molecules
of more than ``--max-atoms`` (64) atoms are dropped (13 of BBBP's 2039):
on 2 shared CPU cores each distinct shape costs over a minute of
compilation per method. ``||H||`` is measured by at most
``--hessian-iters`` power iterations on the first ``--hessian-molecules``
training molecules. The defaults (2 epochs, 128 molecules) fit about 20
minutes on 2 loaded CPU cores; on a free machine use for example
``--epochs 5 --hessian-molecules 256``.

Writes ``graphsam_observations.json``, ``.png`` and ``.md`` to ``--out``
(default ``benchmarks/results``).
"""

import argparse
import dataclasses
import functools
import json
import time
from pathlib import Path
from typing import Any
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

import graphsam_optax
from benchmarks import common
from graphsam_optax import sharpness
from models import allocator
from models import engine
from models import input_pipeline
from models import model as model_lib
from models import optim
from models.configs import default
from models.configs import test as test_config

NAME = "graphsam_observations"
APPROXIMATIONS = ("graphsam", "graphsam_raw_anchor", "sam_k", "sam_one")
CHANGES = (
  "cos_successive_g",
  "cos_successive_omega",
  "cos_prev_omega_g",
  "cos_g_omega",
  "rel_change_g",
  "rel_change_omega",
  "grad_norm",
  "omega_norm",
)
PAPER_SHARES = {"graphsam": 0.725, "sam_k": 0.567, "sam_one": 0.401}
TINY = 1e-30


class Observers(NamedTuple):
  """What the passive observers carry from one SAM step to the next.

  Attributes:
    prev_g: the previous step's perturbation gradient ``g_{t-1}``.
    prev_omega: the previous step's updating gradient ``omega_{t-1}``.
    graphsam: GraphSAM's direction ``eps_{t-1}``, anchor normalized.
    graphsam_raw_anchor: the same with the raw anchor gradient.
    sam_k: the ``g`` of SAM-k's last anchor.
    sam_one: the ``g`` of the epoch's first step.
  """

  prev_g: Any
  prev_omega: Any
  graphsam: Any
  graphsam_raw_anchor: Any
  sam_k: Any
  sam_one: Any


def _cosine(a, b) -> jax.Array:
  norms = optax.tree.norm(a) * optax.tree.norm(b)
  return optax.tree.vdot(a, b) / jnp.maximum(norms, TINY)


def _unit(tree):
  return optax.tree.scale(1.0 / jnp.maximum(optax.tree.norm(tree), TINY), tree)


def observe(
  observers: Observers,
  g,
  omega,
  count: jax.Array,
  *,
  beta: float,
  k: int,
  steps_per_epoch: int,
) -> tuple[Observers, dict[str, jax.Array]]:
  """One step of every observer and the step's record (scalars).

  Quantities comparing with the previous step are NaN at step 0.
  """
  epoch_start = count % steps_per_epoch == 0
  first = count == 0

  def since_last(value):
    return jnp.where(first, jnp.nan, value)

  def ema(direction):
    return optax.tree.update_moment(
      _unit(observers.prev_omega), direction, beta, 1
    )

  new = Observers(
    prev_g=g,
    prev_omega=omega,
    graphsam=optax.tree.where(epoch_start, _unit(g), ema(observers.graphsam)),
    graphsam_raw_anchor=optax.tree.where(
      epoch_start, g, ema(observers.graphsam_raw_anchor)
    ),
    sam_k=optax.tree.where(count % k == 0, g, observers.sam_k),
    sam_one=optax.tree.where(epoch_start, g, observers.sam_one),
  )
  g_norm, omega_norm = optax.tree.norm(g), optax.tree.norm(omega)
  prev_g_norm = optax.tree.norm(observers.prev_g)
  prev_omega_norm = optax.tree.norm(observers.prev_omega)
  record = {
    "epoch_start": epoch_start,
    "sam_k_anchor": count % k == 0,
    "grad_norm": g_norm,
    "omega_norm": omega_norm,
    "cos_g_omega": _cosine(g, omega),
    "cos_successive_g": since_last(_cosine(g, observers.prev_g)),
    "cos_successive_omega": since_last(_cosine(omega, observers.prev_omega)),
    "cos_prev_omega_g": since_last(_cosine(observers.prev_omega, g)),
    "rel_change_g": since_last(
      optax.tree.norm(optax.tree.sub(g, observers.prev_g))
      / jnp.maximum(prev_g_norm, TINY)
    ),
    "rel_change_omega": since_last(
      optax.tree.norm(optax.tree.sub(omega, observers.prev_omega))
      / jnp.maximum(prev_omega_norm, TINY)
    ),
  }
  for name in APPROXIMATIONS:
    record[f"cos_{name}"] = _cosine(getattr(new, name), g)
  return new, record


def init_observers(params) -> Observers:
  zeros = optax.tree.zeros_like(params)
  return Observers(*([zeros] * len(Observers._fields)))


def make_observed_sam_step(
  loss_fn, make_tx, compiler_options=None, **observe_kwargs
):
  """A jitted SAM step that also returns the record of both SAM gradients.

  The engine's step (``engine.optimizer_step``: the optimizer built inside
  the step from the float hyperparameters ``values``, the loss summed into
  a ``engine.EpochTotals``) with its two gradients captured rather than
  recomputed, so observing costs no extra pass. ``loss_fn(params, batch,
  blocks)`` is the minibatch loss and ``make_tx(values)`` must build SAM:
  its first gradient is ``g_t``, its single ``grad_fn`` call ``omega_t``.
  ``compiler_options`` go to ``jax.jit``, ``observe_kwargs`` to
  :func:`observe`.

  Returns:
    ``step(params, opt_state, totals, observers, count, batch, values,
    blocks)`` -> ``(params, opt_state, totals, observers, record)``, with
    ``blocks`` static (``PreparedData.blocks_of``).
  """

  @functools.partial(
    jax.jit, static_argnames="blocks", compiler_options=compiler_options
  )
  def step(params, opt_state, totals, observers, count, batch, values, blocks):
    value_and_grad = jax.value_and_grad(lambda p: loss_fn(p, batch, blocks))
    calls = []

    def captured(p):
      calls.append(value_and_grad(p))
      return calls[-1]

    params, opt_state, totals = engine.optimizer_step(
      make_tx, captured, params, opt_state, totals, values
    )
    if len(calls) != 2:
      raise ValueError(f"SAM took {len(calls)} gradients, not two")
    (loss, g), (_, omega) = calls
    observers, record = observe(observers, g, omega, count, **observe_kwargs)
    record["loss"] = loss
    return params, opt_state, totals, observers, record

  return step


class HessianSubset(NamedTuple):
  """The fixed training subset whose loss ``||H||`` is measured on.

  Attributes:
    batches: a GraphBatch whose leaves carry a leading chunk axis.
    weights: f32[chunks], each chunk's share of the subset's labels.
    shape: the padded shape of every chunk; ``shape.blocks`` is their
      static attention layout.
  """

  batches: input_pipeline.GraphBatch
  weights: np.ndarray
  shape: input_pipeline.BatchShape


def hessian_subset(
  data: input_pipeline.PreparedData, molecules: int
) -> HessianSubset:
  """The first ``molecules`` training molecules, in chunks of a batch.

  Every chunk is padded to one shape, the one that holds any batch of the
  subset (``padding_budgets``) tightened to the chunks' largest atom, pair
  and block counts, so the subset's loss is a single ``lax.map`` (one
  compilation, one block layout) at a fraction of the cost of the training
  shape, which must fit the dataset's largest molecules.
  """
  idx = data.split.train[:molecules]
  n_atoms = data.dataset.n_atoms
  chunks = [
    idx[start : start + data.batch_size]
    for start in range(0, len(idx), data.batch_size)
  ]
  largest = input_pipeline.padding_budgets(n_atoms[idx], data.batch_size)[-1]
  nodes, pairs, blocks = np.max(
    [
      input_pipeline.batch_totals(n_atoms, c, largest.block_size)
      for c in chunks
    ],
    axis=0,
  )
  shape = largest._replace(
    n_node=int(nodes) + 1, n_edge=int(pairs), block_count=int(blocks)
  )
  labels = data.dataset.labels
  batches = [
    input_pipeline.make_batch(
      data.dataset.graphs, labels, c, [shape], scaler=data.scaler
    )
    for c in chunks
  ]
  total = np.count_nonzero(~np.isnan(labels[idx]))
  return HessianSubset(
    batches=jax.tree.map(lambda *x: np.stack(x), *batches),
    weights=np.array([b.label_mask.sum() / total for b in batches], np.float32),
    shape=shape,
  )


def make_subset_loss(loss_fn, subset: HessianSubset):
  """``(params, batches) -> loss``: label-weighted mean of chunk losses.

  For a per-label mean loss (BBBP's cross-entropy) this is the subset's
  mean loss; for RMSE it is the weighted mean of the chunks' RMSEs.
  """

  def subset_loss(params, batches):
    losses = jax.lax.map(
      lambda b: loss_fn(params, b, subset.shape.blocks), batches
    )
    return jnp.sum(subset.weights * losses)

  return subset_loss


def make_sharpness_fn(subset_loss, rtol: float, max_iters: int):
  """Jitted ``(params, batches) -> dict`` of ``||H||`` and the loss."""

  @jax.jit
  def measure(params, batches):
    def loss(p):
      return subset_loss(p, batches)

    top = sharpness.top_eigenvalue(
      loss, params, key=jax.random.key(0), rtol=rtol, max_iters=max_iters
    )
    return {
      "sharpness": jnp.abs(top.eigenvalue),
      "power_iterations": top.num_iterations,
      "converged": top.converged,
      "loss": loss(params),
    }

  return measure


def _place(tree):
  """``tree`` committed to the default device, like the engine's state, so
  that every call of a jitted function sees the same input shardings (one
  compilation)."""
  return jax.device_put(tree, jax.devices()[0])


def train_run(config, data, model, params, observe_kwargs, log=print) -> dict:
  """Trains ``config.optimizer`` for ``config.epochs`` epochs.

  SAM runs with the observers; the other methods with ``train``'s step.
  Both are built once per run from ``optim.float_hyperparameters`` as
  arrays, like the engine's, and each compiles once per batch shape.

  Returns:
    The clean final weights, the per-step records (SAM only), the mean
    training loss per epoch and timings.
  """
  task_type = data.dataset.task_type
  steps_per_epoch = data.steps_per_epoch(config.drop_last)
  optim.create_optimizer(config, steps_per_epoch)  # validates the values

  def make_tx(values):
    return optim.create_optimizer(config, steps_per_epoch, values)

  values = _place(optim.hyperparameter_values(config))
  opt_state = jax.jit(lambda p, v: make_tx(v).init(p))(params, values)
  params, opt_state = _place((params, opt_state))
  observed = config.optimizer == "sam"
  options = engine.compiler_options(config.fast_compile)
  if observed:
    step = make_observed_sam_step(
      engine.make_loss_fn(model, task_type),
      make_tx,
      options,
      steps_per_epoch=steps_per_epoch,
      **observe_kwargs,
    )
    observers = _place(init_observers(params))
  else:
    step = engine.make_train_step(model, task_type, make_tx, options)
  records, epoch_losses = [], []
  start = time.perf_counter()
  count = 0
  for epoch in range(config.epochs):
    totals = _place(engine.EpochTotals.zeros())
    for batch in data.train_batches(epoch, config.seed, config.drop_last):
      blocks = data.blocks_of(batch)
      batch = _place(batch)
      if observed:
        params, opt_state, totals, observers, record = step(
          params,
          opt_state,
          totals,
          observers,
          jnp.int32(count),
          batch,
          values,
          blocks,
        )
        records.append(record)
      else:
        params, opt_state, totals = step(
          params, opt_state, totals, batch, values, blocks
        )
      if count == 0:
        totals.steps.block_until_ready()
        first_step = time.perf_counter() - start
      count += 1
    totals = jax.device_get(totals)
    epoch_losses.append(float(totals.loss_sum / max(int(totals.steps), 1)))
    log(
      f"  {config.optimizer} epoch {epoch + 1}/{config.epochs}: train loss "
      f"{epoch_losses[-1]:.4f} ({time.perf_counter() - start:.0f} s)"
    )
  records = jax.device_get(records)
  history = {
    name: [float(r[name]) for r in records] for name in (records or [{}])[0]
  }
  return {
    "params": graphsam_optax.eval_params(opt_state, params),
    "history": history,
    "epoch_train_loss": epoch_losses,
    "steps": count,
    "seconds": time.perf_counter() - start,
    # The first step includes the compilation.
    "first_step_seconds": first_step,
  }


def _share_stats(cosines: np.ndarray) -> dict:
  return {
    "steps": int(cosines.size),
    "share_cos_positive": float(np.mean(cosines > 0)),
    "share_cos_above_half": float(np.mean(cosines > 0.5)),
    "mean_cos": float(np.mean(cosines)),
    "median_cos": float(np.median(cosines)),
  }


def summarize_observations(history: dict) -> dict:
  """Shares and mean cosines per approximation; change statistics.

  Each approximation's statistics are over the steps where it is used (its
  anchor steps excluded), with those over all steps and per epoch beside.
  """
  epoch_start = np.asarray(history["epoch_start"], bool)
  epoch = np.cumsum(epoch_start) - 1
  anchors = {
    "graphsam": epoch_start,
    "graphsam_raw_anchor": epoch_start,
    "sam_one": epoch_start,
    "sam_k": np.asarray(history["sam_k_anchor"], bool),
  }
  approximations = {}
  for name in APPROXIMATIONS:
    cosines = np.asarray(history[f"cos_{name}"])
    used = ~anchors[name]
    approximations[name] = {
      **_share_stats(cosines[used]),
      "all_steps": _share_stats(cosines),
      "per_epoch": [
        _share_stats(cosines[used & (epoch == e)])
        for e in range(epoch.max() + 1)
      ],
      "paper_share": PAPER_SHARES.get(name),
    }
  changes = {}
  for name in CHANGES:
    values = np.asarray(history[name])
    values = values[np.isfinite(values)]
    changes[name] = {
      "mean": float(np.mean(values)),
      "median": float(np.median(values)),
      "quartiles": np.quantile(values, [0.25, 0.75]).tolist(),
    }
  return {"approximations": approximations, "changes": changes}


def _smooth(values, width: int) -> np.ndarray:
  """Centered moving mean over the finite values within the window."""
  values = np.asarray(values, float)
  finite = np.isfinite(values)
  kernel = np.ones(max(1, width))
  sums = np.convolve(np.where(finite, values, 0.0), kernel, mode="same")
  counts = np.convolve(finite.astype(float), kernel, mode="same")
  return sums / np.maximum(counts, 1)


def plot(history: dict, sharpness_values: dict, steps_per_epoch, path) -> None:
  """Four panels: successive cosines, norms, approximations, ``||H||``."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  step = np.arange(len(history["loss"]))
  width = max(1, steps_per_epoch // 5)
  fig, axes = plt.subplots(2, 2, figsize=(12, 8))
  (changes, norms), (approx, bars) = axes
  for name, label in (
    ("cos_successive_g", r"$\cos(g_t, g_{t-1})$"),
    ("cos_successive_omega", r"$\cos(\omega_t, \omega_{t-1})$"),
    ("cos_prev_omega_g", r"$\cos(\omega_{t-1}, g_t)$"),
    ("cos_g_omega", r"$\cos(g_t, \omega_t)$"),
  ):
    (line,) = changes.plot(step, _smooth(history[name], width), label=label)
    changes.plot(step, history[name], color=line.get_color(), alpha=0.15)
  changes.set_ylabel(f"cosine (moving mean of {width} steps)")
  changes.legend(fontsize=8)
  norms.semilogy(step, history["grad_norm"], label=r"$\|g_t\|$")
  norms.semilogy(step, history["omega_norm"], label=r"$\|\omega_t\|$")
  norms.set_ylabel("gradient norm")
  norms.legend(fontsize=8)
  for name in APPROXIMATIONS:
    (line,) = approx.plot(
      step, _smooth(history[f"cos_{name}"], width), label=name
    )
    approx.plot(
      step, history[f"cos_{name}"], color=line.get_color(), alpha=0.15
    )
  approx.axhline(0, color="k", lw=0.5)
  approx.set_ylabel(r"cosine with the true $g_t$")
  approx.legend(fontsize=8)
  for ax in (changes, norms, approx):
    for boundary in range(0, step.size, steps_per_epoch):
      ax.axvline(boundary, color="gray", lw=0.5, ls=":")
    ax.set_xlabel("SAM step")
  labels = list(sharpness_values)
  bars.bar(labels, [sharpness_values[k] for k in labels], color="tab:gray")
  bars.set_yscale("log")
  bars.set_ylabel(r"$\|H\|$ on the fixed training subset")
  bars.set_title("sharpness at the clean weights")
  fig.suptitle("GraphSAM's observations along a SAM run (passive observers)")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def _cell(value) -> str:
  return "" if value is None else f"{value:.4f}"


def markdown(result: dict) -> str:
  """The short summary written beside the JSON."""
  cfg = {**result["config"], **result["args"]}
  obs = result["observations"]
  lines = [
    "# GraphSAM's observations on CoMPT",
    "",
    f"Command: `{result['command']}`  ",
    f"Machine: {common.machine_line(result['machine'])}  ",
    f"Data: {cfg['dataset']}, random split seed {cfg['seed']}, batch "
    f"{cfg['batch_size']}, {result['steps_per_epoch']} steps per epoch, "
    f"{cfg['epochs']} epochs; model d_model {cfg['d_model']}, "
    f"{cfg['num_layers']} layers; total {result['seconds']:.0f} s.",
    "",
    f"## Approximations of the perturbation direction (SAM, rho "
    f"{cfg['rho']:g}; beta {cfg['beta']:g}, k {cfg['k']})",
    "",
    "Every approximation observes the SAM run passively (same weights and "
    "minibatches). Steps counted: those where the method uses its "
    'approximation (its anchor steps excluded). "Same way" means '
    "cos(approximation, g_t) > 0; the paper's shares may use another "
    "definition.",
    "",
    common.markdown_table(
      [
        "approximation",
        "steps",
        "cos > 0",
        "cos > 0.5",
        "mean cos",
        "cos > 0 by epoch",
        "paper",
      ],
      (
        (
          name,
          s["steps"],
          f"{s['share_cos_positive']:.1%}",
          f"{s['share_cos_above_half']:.1%}",
          f"{s['mean_cos']:.3f}",
          " / ".join(f"{e['share_cos_positive']:.0%}" for e in s["per_epoch"]),
          f"{s['paper_share']:.1%}" if s["paper_share"] else "",
        )
        for name, s in obs["approximations"].items()
      ),
    ),
    "",
    "## How fast the gradients change between steps",
    "",
    common.markdown_table(
      ["quantity", "mean", "median", "quartiles"],
      (
        (
          name,
          f"{s['mean']:.4g}",
          f"{s['median']:.4g}",
          f"{s['quartiles'][0]:.4g} .. {s['quartiles'][1]:.4g}",
        )
        for name, s in obs["changes"].items()
      ),
    ),
    "",
    f"## Sharpness after {cfg['epochs']} epochs (‖H‖ of the loss on "
    f"{cfg['hessian_molecules']} training molecules, clean weights)",
    "",
    common.markdown_table(
      [
        "weights",
        "‖H‖",
        "loss on the subset",
        "power iterations",
        "train loss (last epoch)",
        f"valid {result['metric']}",
      ],
      (
        (
          name,
          f"{s['sharpness']:.4g}",
          f"{s['loss']:.4f}",
          f"{s['power_iterations']}{'' if s['converged'] else ' (cap)'}",
          _cell(s.get("train_loss")),
          _cell(s.get("valid_metric")),
        )
        for name, s in result["sharpness"].items()
      ),
    ),
  ]
  lines += ["", "## Reading", "", *reading(result), ""]
  lines += [f"![observations]({NAME}.png)", ""]
  return "\n".join(lines)


def _share(mask: np.ndarray) -> str:
  return f"{np.mean(mask):.0%}"


def reading(result: dict) -> list[str]:
  """Facts computed from the run that help read the tables."""
  history, cfg = result["history"], {**result["config"], **result["args"]}
  steps_per_epoch = result["steps_per_epoch"]
  omega = np.asarray(history["cos_successive_omega"])[1:]
  g = np.asarray(history["cos_successive_g"])[1:]
  gap = np.abs(
    np.asarray(history["cos_graphsam"]) - np.asarray(history["cos_sam_one"])
  )
  sharp = {k: v["sharpness"] for k, v in result["sharpness"].items()}
  flattest = min((k for k in sharp if k != "init"), key=sharp.get)
  return [
    f"- Same step: g_t and omega_t point almost the same way (median cos "
    f"{np.median(history['cos_g_omega']):.3f}). Between steps (different "
    f"minibatches) both often reverse: cos < -0.5 for {_share(g < -0.5)} of "
    f"successive g's and {_share(omega < -0.5)} of successive omega's, while "
    f"|cos| > 0.9 for {_share(np.abs(g) > 0.9)} and "
    f"{_share(np.abs(omega) > 0.9)}, as if one dominant direction's sign "
    "followed the minibatch.",
    f"- With beta {cfg['beta']:g} the moving average keeps a weight "
    f"beta^{steps_per_epoch - 1} = {cfg['beta'] ** (steps_per_epoch - 1):.2f} "
    f"on the anchor at the last step of a {steps_per_epoch}-step epoch, so "
    "GraphSAM's direction stays close to SAM-One's: their cosines with g_t "
    f"differ by at most {gap.max():.3f} (median {np.median(gap):.3f}).",
    f"- Flattest clean weights after {cfg['epochs']} epochs: {flattest} "
    f"(‖H‖ {sharp[flattest]:.4g}); one seed and a short run, so read the "
    "sharpness ranking as indicative only.",
    f"- Set-up: every batch padded to one shape, molecules of more than "
    f"{cfg['max_molecule_atoms']} atoms dropped "
    f"({result['training_molecules']} training molecules remain); "
    f"{cfg['epochs']} epochs against a learning-rate warm-up of "
    f"{cfg['warmup_epochs']:g}; GraphSAM's rho decays per epoch (registry "
    "default), SAM's stays fixed; the approximations are measured while the "
    "weights still change fast.",
  ]


def parse_args(argv=None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--dataset", default=None, help="default bbbp")
  parser.add_argument("--epochs", type=int, default=2)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--rho", type=float, default=0.05)
  parser.add_argument("--beta", type=float, default=0.99)
  parser.add_argument(
    "--k", type=int, default=None, help="SAM-k period (registry default 8)"
  )
  parser.add_argument(
    "--max-atoms",
    type=int,
    default=64,
    help="drop molecules with more atoms (0 keeps all)",
  )
  parser.add_argument("--hessian-molecules", type=int, default=128)
  parser.add_argument("--hessian-rtol", type=float, default=1e-3)
  parser.add_argument("--hessian-iters", type=int, default=20)
  parser.add_argument("--data-dir", default=None)
  parser.add_argument("--cache-dir", default=None)
  parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
  parser.add_argument("--smoke", action="store_true", help="tiny, seconds")
  args = parser.parse_args(argv)
  if args.k is None:
    args.k = graphsam_optax.optimizer_spec("sam_k").defaults["k"]
  if args.smoke:
    args.dataset = args.dataset or "nci5k-tpsa"
    args.epochs, args.hessian_molecules, args.hessian_iters = 2, 16, 20
  args.dataset = args.dataset or "bbbp"
  for name in ("epochs", "k", "hessian_molecules", "hessian_iters"):
    if getattr(args, name) < 1:
      parser.error(f"--{name.replace('_', '-')} must be >= 1")
  return args


def make_config(args) -> default.Config:
  """The paper's set-up (the tiny test one with ``--smoke``), truncated.

  Every batch is padded to one shape (``fixed_shapes``): on 2 shared CPU
  cores each shape costs over a minute of compilation per method, more than
  the steps it would save; ``--max-atoms`` keeps that shape small.
  """
  if args.smoke:
    # The exp kernel: the softmax kernel's Hessian-vector products are NaN
    # (its row normalization is not twice differentiable on padding rows).
    config = test_config.get_config(args.dataset).replace(
      max_molecules=96, kernel="exp"
    )
  else:
    config = default.get_config(args.dataset).replace(
      fixed_shapes=True, max_molecule_atoms=args.max_atoms or None
    )
  return config.replace(epochs=args.epochs, seed=args.seed)


def main(argv=None) -> dict:
  allocator.retain_freed_memory()  # before JAX runs anything
  args = parse_args(argv)
  start = time.perf_counter()
  command = common.command("graphsam_observations", argv)
  info = common.machine()
  print(f"command: {command}\nmachine: {info}")
  config = make_config(args)
  data = input_pipeline.data_for(config, args.data_dir, args.cache_dir)
  steps_per_epoch = data.steps_per_epoch(config.drop_last)
  spec = data.dataset.spec
  model = engine.create_model(config, spec.num_tasks)
  first = next(data.train_batches(0, config.seed, config.drop_last))
  # The engine's initial weights (its optimizer state is left to each run).
  init, _ = engine.make_init(
    model,
    functools.partial(optim.create_optimizer, config, steps_per_epoch),
    engine.compiler_options(config.fast_compile),
  )(
    config.seed,
    first.graphs,
    optim.hyperparameter_values(config),
    data.blocks_of(first),
  )
  init = _place(init)  # as the runs' weights: ||H|| compiles once
  print(
    f"data: {spec.name}, {len(data.split.train)} training molecules, "
    f"{steps_per_epoch} steps per epoch; "
    f"{model_lib.count_params(init)} parameters"
  )
  loss_fn = engine.make_loss_fn(model, spec.task_type)
  subset = hessian_subset(data, args.hessian_molecules)
  measure = make_sharpness_fn(
    make_subset_loss(loss_fn, subset), args.hessian_rtol, args.hessian_iters
  )
  predict = engine.predict_steps(model, config.fast_compile).jitted
  subset_info = {
    "molecules": int(min(args.hessian_molecules, len(data.split.train))),
    "chunks": len(subset.weights),
    "blocks": list(subset.shape.blocks),
    "padded_atoms_per_chunk": int(subset.batches.graphs.nodes.shape[1]),
  }
  print(f"hessian subset: {subset_info}")

  def sharpness_at(params) -> dict:
    tic = time.perf_counter()
    values = jax.device_get(measure(params, subset.batches))
    return {
      "hessian_seconds": time.perf_counter() - tic,
      "sharpness": float(values["sharpness"]),
      "loss": float(values["loss"]),
      "power_iterations": int(values["power_iterations"]),
      "converged": bool(values["converged"]),
    }

  results = {"init": sharpness_at(init)}
  print(f"  init: {results['init']}")
  if not np.isfinite(results["init"]["sharpness"]):
    raise ValueError(
      f"||H|| at the initial weights is {results['init']['sharpness']}: the "
      f"model's Hessian-vector products are not finite (kernel="
      f"{config.kernel!r}; the softmax kernel is known to give NaN)"
    )
  observe_kwargs = {"beta": args.beta, "k": args.k}
  runs = {}
  for optimizer, hyperparameters in (
    ("sam", {"rho": args.rho}),
    ("adam", {}),
    ("graphsam", {"rho": args.rho, "beta": args.beta}),
  ):
    run_config = config.replace(
      optimizer=optimizer, hyperparameters=hyperparameters
    )
    print(f"{optimizer}: {hyperparameters}")
    run = train_run(run_config, data, model, init, observe_kwargs)
    valid = engine.evaluate(
      predict,
      run["params"],
      data.eval_batches("valid"),
      spec.task_type,
      data.scaler,
      data.blocks_of,
    )
    results[optimizer] = {
      **sharpness_at(run["params"]),
      "train_loss": run["epoch_train_loss"][-1],
      "valid_metric": valid[spec.metric],
      "train_seconds": run["seconds"],
      "first_step_seconds": run["first_step_seconds"],
    }
    print(f"  {optimizer}: {results[optimizer]}")
    runs[optimizer] = run
  history = runs["sam"]["history"]
  result = {
    "command": command,
    "machine": info,
    "args": {**vars(args), "out": str(args.out)},
    "config": {
      k: v
      for k, v in dataclasses.asdict(config).items()
      if k not in ("optimizer", "hyperparameters")
    },
    "steps_per_epoch": steps_per_epoch,
    "training_molecules": len(data.split.train),
    "hessian_subset": subset_info,
    "metric": spec.metric,
    "observations": summarize_observations(history),
    "sharpness": results,
    "epoch_train_loss": {k: r["epoch_train_loss"] for k, r in runs.items()},
    "history": history,
    "seconds": time.perf_counter() - start,
  }
  args.out.mkdir(parents=True, exist_ok=True)
  (args.out / f"{NAME}.json").write_text(json.dumps(result, indent=1) + "\n")
  plot(
    history,
    {k: v["sharpness"] for k, v in results.items()},
    steps_per_epoch,
    args.out / f"{NAME}.png",
  )
  (args.out / f"{NAME}.md").write_text(markdown(result))
  for name, s in result["observations"]["approximations"].items():
    print(
      f"  {name:<20} cos>0 {s['share_cos_positive']:.1%}  cos>0.5 "
      f"{s['share_cos_above_half']:.1%}  mean cos {s['mean_cos']:.3f}"
    )
  print(
    "  ||H||: "
    + ", ".join(f"{k} {v['sharpness']:.4g}" for k, v in results.items())
  )
  print(
    f"wrote {args.out / NAME}.json, .png and .md ({result['seconds']:.0f} s)"
  )
  return result


if __name__ == "__main__":
  main()
