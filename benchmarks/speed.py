"""Training throughput of every optimizer of the registry, side by side.

One process, one dataset, one model (default: BBBP with the paper's CoMPT-BBBP
configuration), every optimizer starting from the same initial parameters.
After a warm-up that compiles every batch shape of the measured windows
(compile time reported per optimizer, never in the timings), the optimizers
run in repeated *rounds*: in each round every optimizer trains ``--steps``
steps on the same real batches (each round another epoch's shuffled
batches), in an order rotated from round to round, so that drift of a shared
machine hits every optimizer alike. The window is the optimizers' epoch
(``steps_per_epoch = --steps``, by default a whole real epoch), so GraphSAM's
anchor step (its once-per-epoch extra gradient pass) is in every window in its
true share; a shorter ``--steps`` makes anchors more frequent than in
training, which only penalizes GraphSAM.

Each step is the training step of ``models.train.make_train_step``,
unchanged, and is waited for, as the training loop does when it reads the
loss. Gradient passes per epoch come from the registry
(``OptimizerSpec.mean_passes``) and, for the data-dependent methods (AE-SAM,
RST), are counted from their states' ``sam_steps``. (Counting every
``grad_fn`` call with ``jax.debug.callback`` was tried and dropped: on this
CPU a host callback costs tens of milliseconds per call, which would bias
the timings.) The per-batch step-time ratios to Adam show the passes too: an
anchor step costs about two ordinary ones.

Reported per optimizer: graphs/s and ms/step (median and quartiles over
rounds), the ratio to Adam per round (median, min, max), the median over
batches of the per-batch step-time ratio to Adam (and, for methods anchored
once per epoch, that ratio on the anchor step), gradient passes per epoch,
compile time, optimizer-state bytes and their ratio to Adam. Also: the input
pipeline alone (host batching), the evaluation pass (validation set), matmul
FLOPs per molecule of the Adam step (counted on the step's jaxpr) and the
achieved GFLOP/s, peak process memory, and the machine with its load
average before and after.

Run from the repository root::

  python benchmarks/speed.py                        # BBBP, all optimizers
  python benchmarks/speed.py --dataset nci5k-tpsa   # offline dataset
  python benchmarks/speed.py --smoke --out /tmp/speed

Writes ``speed.json`` and ``speed.md`` to ``--out``.

Memory: XLA keeps every compiled step, and on BBBP each (optimizer, batch
shape) executable holds hundreds of MiB; all 10 optimizers over an epoch's 10
shapes exhausted this machine's 24 GiB (LLVM "Cannot allocate memory" while
compiling the fifth optimizer). Then time the optimizers in groups, one
process each with Adam in every group, and merge the reports; every ratio to
Adam stays within its own group's interleaved rounds::

  python benchmarks/speed.py --optimizers adam graphsam sam asam --out g1
  python benchmarks/speed.py --optimizers adam sam_k sam_one looksam --out g2
  python benchmarks/speed.py --combine g1/speed.json g2/speed.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import resource
import shlex
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

NAME = "speed"


def cpu_model() -> str:
  try:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
      if line.startswith("model name"):
        return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def machine() -> dict:
  import flax
  import jax
  import optax

  return {
    "cpu": cpu_model(),
    "cpu_count": os.cpu_count(),
    "usable_cpus": len(os.sched_getaffinity(0)),
    "platform": platform.platform(),
    "python": platform.python_version(),
    "jax": jax.__version__,
    "jaxlib": jax.lib.__version__ if hasattr(jax.lib, "__version__") else "",
    "optax": optax.__version__,
    "flax": flax.__version__,
    "device": str(jax.devices()[0]),
    "xla_flags": os.environ.get("XLA_FLAGS", ""),
  }


def peak_rss_mib() -> float:
  """Peak resident memory of this process so far (Linux: KiB units)."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def tree_bytes(tree) -> int:
  import jax

  return int(sum(np.asarray(x).nbytes for x in jax.tree.leaves(tree)))


def _subjaxprs(value):
  """The jaxprs held by an equation parameter (one, a sequence, or none)."""
  from jax.extend import core

  if isinstance(value, core.ClosedJaxpr):
    return [value.jaxpr]
  if isinstance(value, core.Jaxpr):
    return [value]
  if isinstance(value, (tuple, list)):
    return [j for v in value for j in _subjaxprs(v)]
  return []


def matmul_flops(jaxpr) -> float:
  """Multiply-add FLOPs (2 per MAC) of the matrix products in a jaxpr.

  Counts ``dot_general`` only (elementwise work is ignored); a ``scan`` body
  counts ``length`` times, a ``cond`` its most expensive branch, any other
  sub-jaxpr (jit, custom derivatives, remat) once.
  """
  total = 0.0
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    if name == "dot_general":
      (contract, _), (batch, _) = eqn.params["dimension_numbers"]
      lhs, rhs = (v.aval.shape for v in eqn.invars)
      out = eqn.outvars[0].aval.shape
      macs = math.prod(out) * math.prod(lhs[d] for d in contract)
      del rhs, batch
      total += 2.0 * macs
    elif name == "cond":
      total += max(matmul_flops(j) for j in _subjaxprs(eqn.params["branches"]))
    else:
      inner = sum(
        matmul_flops(j) for v in eqn.params.values() for j in _subjaxprs(v)
      )
      total += inner * (eqn.params["length"] if name == "scan" else 1)
  return total


def quartiles(values: Sequence[float]) -> dict:
  v = np.asarray(values, float)
  return {
    "median": float(np.median(v)),
    "q1": float(np.percentile(v, 25)),
    "q3": float(np.percentile(v, 75)),
    "min": float(v.min()),
    "max": float(v.max()),
  }


def sam_steps(state) -> int | None:
  """Total of the ``sam_steps`` counters in an optimizer state, if any.

  AE-SAM and RST count the steps on which they took the second gradient
  pass; the other methods' extra passes follow from their step count.
  """
  import jax

  found = []

  def visit(node):
    if hasattr(node, "_fields") and "sam_steps" in node._fields:
      found.append(int(node.sam_steps))
    return node

  jax.tree.map(visit, state, is_leaf=lambda n: hasattr(n, "_fields"))
  return sum(found) if found else None


@dataclasses.dataclass
class Runner:
  """One optimizer under test: its step, state and measurements."""

  name: str
  step: object
  params: object
  state: object
  state_bytes: int
  expected_passes: float | None
  anchored_per_epoch: bool
  compile_s: float = 0.0
  step_times: list = dataclasses.field(default_factory=list)
  passes: list = dataclasses.field(default_factory=list)
  losses: list = dataclasses.field(default_factory=list)


def build_runners(names, config, data, params, steps):
  """One Runner per optimizer, with the training code's jitted step."""
  import graphsam_optax
  from models import train

  task = data.dataset.spec
  runners = []
  for name in names:
    cfg = config.replace(optimizer=name)
    fns = train.build(cfg, task.num_tasks, task.task_type, steps)
    state = fns.tx.init(params)
    spec = graphsam_optax.optimizer_spec(train.registry_name(name))
    mean = spec.mean_passes(
      {**spec.defaults, **dict(cfg.hyperparameters)}, steps
    )
    runners.append(
      Runner(
        name=name,
        step=fns.train_step,
        params=params,
        state=state,
        state_bytes=tree_bytes(state),
        expected_passes=None if mean is None else mean * steps,
        anchored_per_epoch="steps_per_epoch" in spec.needs,
      )
    )
  return runners


def signature(batch, block: int) -> tuple:
  import jax

  return (
    tuple(np.shape(x) for x in jax.tree.leaves(batch)),
    block,
  )


def warm_up(runner: Runner, representatives, log) -> None:
  """Compiles every batch signature; compile time = first call - second."""
  import jax

  for batch, block in representatives:
    times = []
    for _ in range(2):
      tic = time.perf_counter()
      out = runner.step(runner.params, runner.state, batch, block)
      jax.block_until_ready(out)
      times.append(time.perf_counter() - tic)
    runner.compile_s += max(times[0] - times[1], 0.0)
  log(f"  {runner.name}: compiled in {runner.compile_s:.1f} s")


def run_window(runner: Runner, batches, blocks) -> None:
  """Trains ``runner`` over one window, timing every step."""
  start = sam_steps(runner.state)
  params, state, times = runner.params, runner.state, []
  for batch, block in zip(batches, blocks, strict=True):
    tic = time.perf_counter()
    params, state, loss = runner.step(params, state, batch, block)
    loss.block_until_ready()  # the training loop reads every loss
    times.append(time.perf_counter() - tic)
  runner.params, runner.state = params, state
  runner.step_times.append(times)
  if start is not None:
    runner.passes.append(len(times) + sam_steps(state) - start)
  runner.losses.append(float(loss))


def summarize(runners, rounds_graphs, steps, adam_name="adam") -> dict:
  """Per-optimizer statistics; ratios against ``adam_name`` when present."""
  adam = next((r for r in runners if r.name == adam_name), None)
  adam_state = adam.state_bytes if adam else None
  out = {}
  for r in runners:
    window = np.array([sum(t) for t in r.step_times])
    rate = np.asarray(rounds_graphs, float) / window
    entry = {
      "graphs_per_s": quartiles(rate),
      "ms_per_step": quartiles(window / steps * 1e3),
      "compile_s": r.compile_s,
      "passes_per_epoch": {
        "counted": quartiles(r.passes) if r.passes else None,
        "registry": r.expected_passes,
      },
      "state_bytes": r.state_bytes,
      "state_ratio_to_adam": r.state_bytes / adam_state if adam else None,
      "final_loss": r.losses,
      "window_s": window.tolist(),
      "step_s": r.step_times,
    }
    if adam is not None:
      adam_window = np.array([sum(t) for t in adam.step_times])
      entry["ratio_to_adam"] = quartiles(adam_window / window)
      per_batch = np.asarray(r.step_times) / np.asarray(adam.step_times)
      entry["step_cost_vs_adam"] = float(np.median(per_batch[:, 1:]))
      if r.anchored_per_epoch:
        entry["anchor_step_cost_vs_adam"] = float(np.median(per_batch[:, 0]))
    out[r.name] = entry
  return out


def prepare(args):
  """Data, model, initial parameters and the measured windows' batches."""
  from models import train
  from models.configs import default
  from models.configs import test

  configs = {"default": default, "test": test}
  config = configs[args.config].get_config(args.dataset)
  overrides = {
    "batch_size": args.batch_size,
    "max_molecules": args.max_molecules,
  }
  config = config.replace(
    seed=args.seed, **{k: v for k, v in overrides.items() if v is not None}
  )
  data = train.prepare_data(config, args.data_dir, args.cache_dir)
  epoch_steps = data.steps_per_epoch(config.drop_last)
  steps = args.steps or epoch_steps
  if not 1 <= steps <= epoch_steps:
    raise ValueError(
      f"--steps must be in [1, {epoch_steps}] (one epoch), got {steps}"
    )
  pipeline_s, windows = [], []
  for r in range(args.rounds):
    tic = time.perf_counter()
    batches = []
    for batch in data.train_batches(r, config.seed, config.drop_last):
      batches.append(batch)
      if len(batches) == steps:
        break
    pipeline_s.append(time.perf_counter() - tic)
    windows.append(batches)
  spec = data.dataset.spec
  fns = train.build(config, spec.num_tasks, spec.task_type, steps)
  blocks = train.block_function(config, data)
  first = windows[0][0]
  params = fns.init(config.seed, first.graphs, blocks(first))
  return config, data, fns, params, steps, epoch_steps, windows, pipeline_s


def signature_flops(step, params, state, representatives) -> dict:
  """Matmul FLOPs of one step per batch signature (traced, not run)."""
  out = {}
  for key, (batch, block) in representatives.items():
    traced = step.trace(params, state, batch, max_atoms=block)
    out[key] = matmul_flops(traced.jaxpr.jaxpr)
  return out


def time_eval(predict, params, batches, data, blocks, repeats) -> list:
  from models import train

  times = []
  for _ in range(repeats):
    tic = time.perf_counter()
    train.evaluate(
      predict, params, batches, data.dataset.task_type, data.scaler, blocks
    )
    times.append(time.perf_counter() - tic)
  return times


def markdown(result: dict) -> str:
  """The report: settings, the optimizer table, pipeline/eval, targets."""
  s = result["summary"]
  names = list(s)
  lines = [
    "# Training throughput per optimizer",
    "",
    f"Command: `{result['command']}`",
    "",
    f"Machine: {result['machine']['cpu']}, {result['machine']['cpu_count']} "
    f"CPUs ({result['machine']['usable_cpus']} usable), "
    f"jax {result['machine']['jax']}, optax {result['machine']['optax']}, "
    f"flax {result['machine']['flax']}; {result['machine']['platform']}.",
    "",
    *(
      _groups_lines(result)
      if "groups" in result
      else [
        f"Load average (1, 5, 15 min) at start: {result['load_before']}, "
        f"when the timed rounds began: {result['load_timing_start']}, at the "
        f"end: {result['load_after']}. On a shared machine absolute numbers "
        "move with its load; ratios are per round, so drift hits all alike.",
        "",
      ]
    ),
    *([result["note"], ""] if result["note"] else []),
    *(
      [
        f"A persistent compilation cache ({result['jax_cache']}) was used: "
        "executables found there load instead of compiling, so their "
        "compile times are load times.",
        "",
      ]
      if result["jax_cache"]
      else []
    ),
    f"Dataset {result['dataset']} ({result['config_name']} config: "
    f"{result['model']}), batch {result['batch_size']}; "
    f"{result['rounds']} rounds of {result['steps']} steps "
    f"({result['steps_per_real_epoch']} per real epoch), "
    f"{result['graphs_per_round']} graphs per round.",
    "",
    "| optimizer | graphs/s (median [q1, q3]) | ratio to Adam (median "
    "[min, max]) | ms/step | step cost vs Adam (per batch) | anchor step "
    "vs Adam | grad passes/epoch | compile s | state MiB "
    "(vs Adam) |",
    "|---" * 9 + "|",
  ]
  for n in names:
    e = s[n]
    g, ms = e["graphs_per_s"], e["ms_per_step"]
    ratio = e.get("ratio_to_adam")
    ratio_text = (
      f"{ratio['median']:.3f} [{ratio['min']:.3f}, {ratio['max']:.3f}]"
      if ratio
      else "—"
    )
    anchor = e.get("anchor_step_cost_vs_adam")
    passes = e["passes_per_epoch"]
    if passes["counted"] is not None:
      passes_text = f"{passes['counted']['median']:.0f} (counted, median)"
    else:
      passes_text = f"{passes['registry']:.0f}"
    state_ratio = e["state_ratio_to_adam"]
    group = f" (group {e['group']})" if "group" in e else ""
    lines.append(
      f"| {n}{group} | {g['median']:.1f} [{g['q1']:.1f}, {g['q3']:.1f}] | "
      f"{ratio_text} | {ms['median']:.0f} | "
      f"{e.get('step_cost_vs_adam', math.nan):.3f} | "
      f"{'—' if anchor is None else f'{anchor:.2f}'} | "
      f"{passes_text} | "
      f"{e['compile_s']:.0f} | {e['state_bytes'] / 2**20:.1f} "
      f"({'—' if state_ratio is None else f'{state_ratio:.2f}'}) |"
    )
  p, ev, f = result["pipeline"], result["evaluation"], result["flops"]
  lines += [
    "",
    "Columns: graphs/s over each round's window (steps waited for, host "
    "batches prebuilt); ratio to Adam = Adam's window time / this one's, "
    "per round; step cost vs Adam = median over rounds and batches of this "
    "step's time / Adam's on the same batch (first step of each window "
    "excluded); anchor step = the same on the first step of each epoch, "
    "where the once-per-epoch methods take their extra pass; grad passes per "
    "epoch (of the measured window) from the registry, counted from the "
    "state's sam_steps for the data-dependent methods; compile s = first "
    "call - second call, summed over batch shapes.",
    "",
    f"- Input pipeline alone (host NumPy batching): "
    f"{p['graphs_per_s']['median']:.0f} graphs/s, "
    f"{p['ms_per_batch']['median']:.1f} ms per batch.",
    f"- Evaluation pass (validation, {ev['graphs']} molecules, batches "
    f"prebuilt): {ev['graphs_per_s']['median']:.0f} graphs/s, "
    f"{ev['seconds']['median']:.2f} s; building its batches "
    f"{ev['batching_s']['median']:.2f} s.",
    f"- Adam step: {f['per_molecule'] / 1e9:.3f} GFLOP per molecule "
    f"(matmul FLOPs on padded shapes, {f['per_step'] / 1e9:.2f} GFLOP per "
    f"step; the GRU counted over its whole block), "
    f"{f['achieved_gflops']:.1f} GFLOP/s achieved.",
    f"- Peak process memory: {result['peak_rss_mib']['end']:.0f} MiB "
    f"(after set-up {result['peak_rss_mib']['setup']:.0f}, after compiling "
    f"{result['peak_rss_mib']['compiled']:.0f})"
    f"{' in group 1' if 'groups' in result else ''}; one process holds every "
    "optimizer of its group, so this is not per optimizer.",
  ]
  t = result["targets"]
  lines += ["", "Targets (reported, not asserted):", ""]
  lines += [f"- {line}" for line in t]
  return "\n".join(lines) + "\n"


def targets(summary: dict) -> list[str]:
  out = []
  adam = summary.get("adam")
  if adam:
    rate = adam["graphs_per_s"]["median"]
    out.append(
      f"Adam >= 100 graphs/s (reference notes §8): {rate:.1f} -> "
      f"{'met' if rate >= 100 else 'not met'}"
    )
  for name, goal in (("graphsam", ">= 0.95"), ("sam", "about 0.5")):
    entry = summary.get(name, {}).get("ratio_to_adam")
    if entry:
      ratio = entry["median"]
      met = ratio >= 0.95 if name == "graphsam" else abs(ratio - 0.5) <= 0.1
      out.append(
        f"{name}/Adam throughput {goal}: {ratio:.3f} -> "
        f"{'met' if met else 'not met'}"
      )
  return out


def combine(paths: Sequence[Path]) -> dict:
  """One report from several runs of this script, each of which timed Adam.

  Each optimizer's entry comes from the first run that timed it, so its
  ratios to Adam are those of its own process's interleaved rounds; Adam's
  entry is the first run's, and every run's Adam throughput is kept in
  ``groups``.
  """
  runs = [json.loads(Path(p).read_text()) for p in paths]
  same = ("dataset", "config_name", "batch_size", "steps", "rounds")
  for path, run in zip(paths, runs, strict=True):
    if "adam" not in run["summary"]:
      raise ValueError(
        f"{path} did not time adam, the reference of its ratios (it timed "
        f"{', '.join(run['summary'])}); rerun that group with adam in "
        "--optimizers"
      )
    differs = [k for k in same if run[k] != runs[0][k]]
    if differs:
      raise ValueError(
        f"{path} differs from {paths[0]} in {', '.join(differs)}: merged "
        "groups must measure the same dataset, model, batch and window"
      )
  summary = {}
  for group, run in enumerate(runs, start=1):
    for name, entry in run["summary"].items():
      summary.setdefault(name, {**entry, "group": group})
  groups = [
    {
      "command": run["command"],
      "optimizers": list(run["summary"]),
      "adam_graphs_per_s": run["summary"]["adam"]["graphs_per_s"]["median"],
      "load_timing_start": run["load_timing_start"],
      "load_after": run["load_after"],
      "peak_rss_mib": run["peak_rss_mib"],
      "note": run["note"],
    }
    for run in runs
  ]
  # The groups' notes and memory are in ``groups``; set-up, pipeline,
  # evaluation and FLOPs are the first group's.
  result = {**runs[0], "summary": summary, "groups": groups, "note": ""}
  result["targets"] = targets(summary)
  return result


def _groups_lines(result: dict) -> list[str]:
  lines = [
    f"Measured in {len(result['groups'])} processes, each timing Adam beside "
    "its group of optimizers (one process holding every optimizer's "
    "compiled steps for every batch shape ran out of memory); each "
    "optimizer's ratios to Adam are within its group's interleaved rounds.",
    "",
    "| group | command | Adam graphs/s | load when timing began | peak MiB "
    "| note |",
    "|---|---|---|---|---|---|",
  ]
  for i, g in enumerate(result["groups"], start=1):
    lines.append(
      f"| {i} | `{g['command']}` | {g['adam_graphs_per_s']:.1f} | "
      f"{g['load_timing_start']} | {g['peak_rss_mib']['end']:.0f} | "
      f"{g['note']} |"
    )
  return [*lines, ""]


def parse_args(argv=None) -> argparse.Namespace:
  from models import train

  parser = argparse.ArgumentParser(
    description=__doc__.split("\n")[0],
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  parser.add_argument("--dataset", default="bbbp")
  parser.add_argument(
    "--optimizers",
    nargs="+",
    default=list(train.OPTIMIZERS),
    choices=train.OPTIMIZERS,
    metavar="NAME",
    help=f"of {', '.join(train.OPTIMIZERS)} (default all)",
  )
  parser.add_argument("--rounds", type=int, default=5)
  parser.add_argument(
    "--steps", type=int, help="steps per round (default: one real epoch)"
  )
  parser.add_argument("--batch-size", type=int)
  parser.add_argument("--max-molecules", type=int)
  parser.add_argument(
    "--config", choices=("default", "test"), default="default"
  )
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument(
    "--eval-repeats", type=int, default=3, help="timed evaluation passes"
  )
  parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
  parser.add_argument(
    "--note", default="", help="a remark on the run for the report"
  )
  parser.add_argument("--data-dir", help="MoleculeNet CSVs")
  parser.add_argument("--cache-dir", help="downloads and featurized molecules")
  parser.add_argument(
    "--jax-cache",
    help="persistent XLA compilation cache directory (development: the "
    "compile times then include cache loads, and say so in the report)",
  )
  parser.add_argument(
    "--combine",
    nargs="+",
    type=Path,
    metavar="JSON",
    help="merge the speed.json of runs made in separate processes (each "
    "with adam) into one report under --out; nothing is timed",
  )
  parser.add_argument(
    "--smoke",
    action="store_true",
    help="offline dataset, tiny model, 2 rounds of 3 steps (seconds)",
  )
  args = parser.parse_args(argv)
  if args.smoke:
    args.dataset, args.config = "nci5k-tpsa", "test"
    args.rounds, args.steps, args.eval_repeats = 2, 3, 1
    args.max_molecules = args.max_molecules or 64
  if args.rounds < 1:
    parser.error(f"--rounds must be >= 1, got {args.rounds}")
  return args


def main(argv=None) -> dict:
  import jax

  from models import datasets
  from models import train

  argv = sys.argv[1:] if argv is None else list(argv)
  args = parse_args(argv)
  command = shlex.join(["python", "benchmarks/speed.py", *argv])
  if args.combine:
    return write({**combine(args.combine), "command": command}, args.out)
  if args.jax_cache:
    jax.config.update("jax_compilation_cache_dir", args.jax_cache)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
  info = machine()
  load_before = [round(x, 2) for x in os.getloadavg()]
  print(f"command: {command}\nmachine: {info}\nload average: {load_before}")
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", datasets.InvalidSmilesWarning)
    config, data, fns, params, steps, epoch_steps, windows, pipeline_s = (
      prepare(args)
    )
  block_of = train.block_function(config, data)
  blocks = [[block_of(b) for b in w] for w in windows]
  graphs = [int(sum(b.graph_mask.sum() for b in w)) for w in windows]
  representatives = {}
  for w, bl in zip(windows, blocks, strict=True):
    for b, m in zip(w, bl, strict=True):
      representatives.setdefault(signature(b, m), (b, m))
  print(
    f"{data.dataset.name}: {len(data.split.train)} training molecules, "
    f"{epoch_steps} steps per epoch; timing {args.rounds} rounds of {steps} "
    f"steps, {len(representatives)} batch shapes"
  )
  rss = {"setup": peak_rss_mib()}
  runners = build_runners(args.optimizers, config, data, params, steps)
  print("compiling (warm-up, not timed):")
  for r in runners:
    warm_up(r, list(representatives.values()), print)
  predict = fns.predict
  valid = list(data.eval_batches("valid"))
  # Timing only: the initial parameters serve as well as trained ones.
  eval_compile = time_eval(predict, params, valid, data, block_of, 1)

  rss["compiled"] = peak_rss_mib()

  load_timing = [round(x, 2) for x in os.getloadavg()]
  print(f"timing rounds (load average {load_timing})", flush=True)
  eval_s, valid_batching_s = [], []
  for rnd in range(args.rounds):
    k = rnd % len(runners)
    order = runners[k:] + runners[:k]
    for r in order:
      run_window(r, windows[rnd], blocks[rnd])
    eval_s += time_eval(
      predict, params, valid, data, block_of, args.eval_repeats
    )
    tic = time.perf_counter()
    valid = list(data.eval_batches("valid"))
    valid_batching_s.append(time.perf_counter() - tic)
    line = ", ".join(
      f"{r.name} {graphs[rnd] / sum(r.step_times[-1]):.1f}" for r in runners
    )
    print(f"round {rnd + 1}: graphs/s {line}", flush=True)
  rss["end"] = peak_rss_mib()

  summary = summarize(runners, graphs, steps)
  adam = next((r for r in runners if r.name == "adam"), runners[0])
  sig_flops = signature_flops(adam.step, params, adam.state, representatives)
  round_flops = np.array(
    [
      sum(sig_flops[signature(b, m)] for b, m in zip(w, bl, strict=True))
      for w, bl in zip(windows, blocks, strict=True)
    ]
  )
  adam_windows = np.array([sum(t) for t in adam.step_times])
  valid_graphs = int(sum(b.graph_mask.sum() for b in valid))
  result = {
    "command": command,
    "machine": info,
    "load_before": load_before,
    "load_timing_start": load_timing,
    "load_after": [round(x, 2) for x in os.getloadavg()],
    "note": args.note,
    "jax_cache": args.jax_cache,
    "dataset": data.dataset.name,
    "config_name": args.config,
    "model": (
      f"d_model {config.d_model}, {config.num_layers} layers, "
      f"{config.num_heads} heads, {config.kernel} kernel, {config.norm} norm, "
      f"{config.readout} readout"
    ),
    "config": dataclasses.asdict(config),
    "batch_size": config.batch_size,
    "rounds": args.rounds,
    "steps": steps,
    "steps_per_real_epoch": epoch_steps,
    "graphs_per_round": graphs[0],
    "batch_shapes": len(representatives),
    "summary": summary,
    "pipeline": {
      "graphs_per_s": quartiles(np.asarray(graphs) / np.asarray(pipeline_s)),
      "ms_per_batch": quartiles(np.asarray(pipeline_s) / steps * 1e3),
    },
    "evaluation": {
      "graphs": valid_graphs,
      "seconds": quartiles(eval_s),
      "graphs_per_s": quartiles(valid_graphs / np.asarray(eval_s)),
      "compile_and_first_s": eval_compile[0],
      "batching_s": quartiles(valid_batching_s),
    },
    "flops": {
      "optimizer": adam.name,
      "per_step": float(round_flops.sum() / (steps * args.rounds)),
      "per_molecule": float(round_flops.sum() / sum(graphs)),
      "achieved_gflops": float(np.median(round_flops / adam_windows) / 1e9),
    },
    "peak_rss_mib": rss,
  }
  result["targets"] = targets(summary)
  return write(result, args.out)


def write(result: dict, out: Path) -> dict:
  out.mkdir(parents=True, exist_ok=True)
  (out / f"{NAME}.json").write_text(json.dumps(result, indent=1) + "\n")
  text = markdown(result)
  (out / f"{NAME}.md").write_text(text)
  print(text)
  print(f"wrote {out / NAME}.json and .md")
  return result


if __name__ == "__main__":
  main()
