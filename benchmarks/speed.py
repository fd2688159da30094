"""Training throughput of every optimizer of the registry, in one process.

One process, one dataset, one model (default: BBBP with the paper's
CoMPT-BBBP configuration), every optimizer from the same initial parameters,
trained by the engine's own training loop (``models.train``: batches built
on the host while the device steps, the loss summed on the device). Each
optimizer first compiles its step for every batch shape of the measured
epochs (time reported per optimizer, never in the throughput); then the
optimizers train whole epochs in *rounds*, round ``r`` being epoch ``r`` of
the same shuffled batches for all, in an order rotated from round to round,
so that drift of a shared machine hits every optimizer alike. GraphSAM's
anchor step is in every epoch in its true share.

Reported per optimizer: graphs/s (median and quartiles over rounds), the
ratio to Adam per round (median, min, max), gradient passes per epoch (from
the registry, or counted from the state for AE-SAM and RST), the compiled
train steps and their compile seconds, optimizer-state bytes, and, from a
fresh process per optimizer with no persistent compilation cache (a *cold
start*), the seconds from process start to the end of the first epoch and
that epoch against a warm one. Also: matrix-product GFLOP/s of the model's
own shapes measured in this process beside the step's achieved GFLOP/s, a
profile of one Adam step by component (``benchmarks.step_profile``), the
input pipeline and the evaluation pass alone, resident memory and memory
mappings after compiling and at the end, and the machine with its load.

Run from the repository root::

  python -m benchmarks.speed                        # BBBP, all optimizers
  python -m benchmarks.speed --optimizers adam graphsam sam --cold adam
  python -m benchmarks.speed --smoke --out /tmp/speed

Writes ``speed.json`` and ``speed.md`` to ``--out``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

from benchmarks import common
from models import allocator

NAME = "speed"


def peak_rss_mib() -> float:
  """Peak resident memory of this process so far (Linux: KiB units)."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def memory_now() -> dict:
  """Resident MiB and memory mappings of this process now (Linux)."""
  status = Path("/proc/self/status")
  rss = math.nan
  if status.exists():
    for line in status.read_text().splitlines():
      if line.startswith("VmRSS:"):
        rss = int(line.split()[1]) / 1024
  maps = Path("/proc/self/maps")
  count = len(maps.read_text().splitlines()) if maps.exists() else -1
  return {"rss_mib": rss, "maps": count, "peak_rss_mib": peak_rss_mib()}


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


def matmul_flops(jaxpr, while_trips: int) -> float:
  """Multiply-add FLOPs (2 per MAC) of the matrix products in a jaxpr.

  Counts ``dot_general`` only (elementwise work is ignored); a ``scan`` body
  counts ``length`` times, a ``while`` body ``while_trips`` times (the GRU's
  loops run as many steps as the batch's largest molecule has atoms), a
  ``cond`` its most expensive branch, any other sub-jaxpr once.
  """
  total = 0.0
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    if name == "dot_general":
      (contract, _), _ = eqn.params["dimension_numbers"]
      lhs = eqn.invars[0].aval.shape
      out = eqn.outvars[0].aval.shape
      total += 2.0 * math.prod(out) * math.prod(lhs[d] for d in contract)
    elif name == "cond":
      total += max(
        matmul_flops(j, while_trips) for j in _subjaxprs(eqn.params["branches"])
      )
    elif name == "while":
      body = _subjaxprs(eqn.params["body_jaxpr"])
      total += while_trips * sum(matmul_flops(j, while_trips) for j in body)
    else:
      inner = sum(
        matmul_flops(j, while_trips)
        for v in eqn.params.values()
        for j in _subjaxprs(v)
      )
      total += inner * (eqn.params["length"] if name == "scan" else 1)
  return total


def quartiles(values) -> dict:
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


def run_config(args):
  """The model configuration of the benchmark."""
  from models import configs

  config = configs.get_config(args.config, args.dataset)
  if args.max_molecules is not None:
    config = config.replace(max_molecules=args.max_molecules)
  return config.replace(seed=args.seed)


@dataclasses.dataclass
class Runner:
  """One optimizer under test: its engine, state and measurements."""

  name: str
  config: object
  fns: object
  engine: object
  values: object
  params: object
  state: object
  state_bytes: int
  expected_passes: float | None
  compile_s: float = 0.0
  compiled: int = 0
  epoch_s: list = dataclasses.field(default_factory=list)
  graphs: list = dataclasses.field(default_factory=list)
  passes: list = dataclasses.field(default_factory=list)
  losses: list = dataclasses.field(default_factory=list)


def build_runner(name, config, data, params, log):
  """An optimizer's engine from the training code, with the shared params."""

  import graphsam_optax
  from models import engine as engine_lib
  from models import optim

  cfg = config.replace(optimizer=name)
  task = data.dataset.spec
  steps = data.steps_per_epoch(cfg.drop_last)
  fns = engine_lib.build(cfg, task.num_tasks, task.task_type, steps)
  engine = engine_lib.make_engine(fns, data, cfg, task.task_type, 1, log)
  values = engine.place(optim.hyperparameter_values(cfg))
  state = engine.place(fns.make_tx(values).init(params))
  spec = graphsam_optax.optimizer_spec(name)
  mean = spec.mean_passes(optim.optimizer_hyperparameters(cfg), steps)
  return Runner(
    name=name,
    config=cfg,
    fns=fns,
    engine=engine,
    values=values,
    params=engine.place(params),
    state=state,
    state_bytes=tree_bytes(state),
    expected_passes=None if mean is None else mean * steps,
  )


def compile_shapes(runner: Runner, batches) -> None:
  """Compiles the runner's step for every shape among ``batches``."""
  from models import engine as engine_lib

  before = runner.engine.step.compiled, runner.engine.step.seconds
  totals = runner.engine.place(engine_lib.EpochTotals.zeros())
  for batch, blocks in batches:
    runner.engine.step.get(
      runner.params,
      runner.state,
      totals,
      runner.engine.place(batch),
      runner.values,
      blocks=blocks,
    )
  runner.compiled = runner.engine.step.compiled - before[0]
  runner.compile_s = runner.engine.step.seconds - before[1]


def train_round(runner: Runner, epoch: int) -> None:
  """One epoch of the training loop; records its graphs/s and passes."""
  from models import engine as engine_lib

  start = sam_steps(runner.state)
  runner.params, runner.state, totals, graphs, seconds = engine_lib.train_epoch(
    runner.engine,
    runner.params,
    runner.state,
    runner.values,
    epoch,
    runner.config,
    False,
  )
  runner.epoch_s.append(seconds)
  runner.graphs.append(graphs)
  runner.losses.append(float(totals.loss_sum / max(int(totals.steps), 1)))
  if start is not None:
    steps = int(totals.steps)
    runner.passes.append(steps + sam_steps(runner.state) - start)


def summarize(runners) -> dict:
  """Per-optimizer statistics; ratios to Adam when it was timed."""
  adam = next((r for r in runners if r.name == "adam"), None)
  out = {}
  for r in runners:
    rate = np.asarray(r.graphs, float) / np.asarray(r.epoch_s)
    entry = {
      "graphs_per_s": quartiles(rate),
      "epoch_s": quartiles(r.epoch_s),
      "compile_s": r.compile_s,
      "compiled_steps": r.compiled,
      "passes_per_epoch": {
        "counted": quartiles(r.passes) if r.passes else None,
        "registry": r.expected_passes,
      },
      "state_bytes": r.state_bytes,
      "state_ratio_to_adam": r.state_bytes / adam.state_bytes if adam else None,
      "train_loss": r.losses,
    }
    if adam is not None:
      entry["ratio_to_adam"] = quartiles(
        np.asarray(adam.epoch_s) / np.asarray(r.epoch_s)
      )
    out[r.name] = entry
  return out


def measure_matmuls(shapes: dict, repeats: int = 50) -> dict:
  """GFLOP/s of XLA's matrix product for each ``name: (lhs, rhs)`` shape
  (batched when both have three axes), median over ``repeats`` calls."""
  import jax
  import jax.numpy as jnp

  out = {}
  for name, (lhs, rhs) in shapes.items():
    a = jax.random.normal(jax.random.key(0), lhs)
    b = jax.random.normal(jax.random.key(1), rhs)
    product = jax.jit(jnp.matmul)
    product(a, b).block_until_ready()
    times = []
    for _ in range(repeats):
      tic = time.perf_counter()
      product(a, b).block_until_ready()
      times.append(time.perf_counter() - tic)
    flops = 2.0 * math.prod(lhs) * rhs[-1]
    out[name] = {
      "lhs": list(lhs),
      "rhs": list(rhs),
      "gflops": flops / float(np.median(times)) / 1e9,
    }
  return out


def cold_start(name: str, args) -> dict:
  """A fresh process trains ``name`` for two epochs with no persistent
  compilation cache; returns its timings (see :func:`cold_child`)."""
  env = {
    k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"
  }
  command = [
    sys.executable,
    "-m",
    "benchmarks.speed",
    "--cold-child",
    name,
    "--dataset",
    args.dataset,
    "--config",
    args.config,
    "--seed",
    str(args.seed),
    "--launched-at",
    repr(time.time()),
  ]
  for flag, value in (
    ("--max-molecules", args.max_molecules),
    ("--data-dir", args.data_dir),
    ("--cache-dir", args.cache_dir),
  ):
    if value is not None:
      command += [flag, str(value)]
  done = subprocess.run(
    command, env=env, capture_output=True, text=True, check=False
  )
  if done.returncode != 0:
    raise RuntimeError(f"cold start of {name} failed:\n{done.stderr[-3000:]}")
  return json.loads(done.stdout.strip().splitlines()[-1])


def cold_child(args) -> None:
  """Two epochs of ``train_and_evaluate`` from a cold process; prints JSON:
  seconds from launch to the end of epoch 1, epoch 1 and epoch 2 wall time
  (steps, validation and any compilation), compile seconds, compiled train
  steps, peak memory."""
  from models import train

  marks = []
  config = run_config(args).replace(
    optimizer=args.cold_child, epochs=2, patience=2
  )
  with tempfile.TemporaryDirectory() as workdir:
    start = time.time()
    summary = train.train_and_evaluate(
      config,
      Path(workdir) / "run",
      data_dir=args.data_dir,
      cache_dir=args.cache_dir,
      progress=False,
      log=lambda _: None,
      on_epoch_end=lambda _: marks.append(time.time()),
    )
  print(
    json.dumps(
      {
        "optimizer": args.cold_child,
        "launch_to_first_epoch_s": marks[0] - args.launched_at,
        "train_start_to_first_epoch_s": marks[0] - start,
        "first_epoch_s": marks[0] - start,
        "second_epoch_s": marks[1] - marks[0],
        "compile_s": summary["compile_seconds"],
        "compiled_train_steps": summary["compiled_train_steps"],
        "peak_rss_mib": peak_rss_mib(),
      }
    )
  )


def profile(runner: Runner, batch, blocks) -> dict:
  """:func:`benchmarks.step_profile.profile_step` of one runner's step."""
  from benchmarks import step_profile
  from models import engine as engine_lib

  batch = runner.engine.place(batch)
  totals = runner.engine.place(engine_lib.EpochTotals.zeros())
  args = (runner.params, runner.state, totals, batch, runner.values)
  compiled = runner.engine.step.get(*args, blocks=blocks)
  return step_profile.profile_step(compiled, args)


def main(argv=None) -> dict:
  allocator.retain_freed_memory()  # before JAX runs anything
  from models import engine as engine_lib
  from models import input_pipeline
  from models import optim

  argv = sys.argv[1:] if argv is None else list(argv)
  args = parse_args(argv)
  if args.cold_child:
    cold_child(args)
    return {}
  import jax

  from models import datasets

  command = common.command(NAME, argv)
  info = common.machine()
  load_before = [round(x, 2) for x in os.getloadavg()]
  print(f"command: {command}\nmachine: {info}\nload average: {load_before}")
  config = run_config(args)
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", datasets.InvalidSmilesWarning)
    data = input_pipeline.data_for(config, args.data_dir, args.cache_dir)
  steps = data.steps_per_epoch(config.drop_last)
  tic = time.perf_counter()
  epochs = [
    list(data.train_batches(r, config.seed)) for r in range(args.rounds)
  ]
  pipeline_s = (time.perf_counter() - tic) / args.rounds
  shapes = {}
  for batch in (b for epoch in epochs for b in epoch):
    shapes.setdefault(data.blocks_of(batch), batch)
  print(
    f"{data.dataset.name}: {len(data.split.train)} training molecules, "
    f"{steps} steps per epoch, {len(data.budgets)} batch shapes "
    f"({len(shapes)} in the timed epochs); {args.rounds} rounds"
  )
  spec = data.dataset.spec
  first = epochs[0][0]
  fns = engine_lib.build(
    config.replace(optimizer="adam"), spec.num_tasks, spec.task_type, steps
  )
  values = optim.hyperparameter_values(config)
  params, _ = fns.init(config.seed, first.graphs, values, data.blocks_of(first))
  runners = []
  print("compiling (not timed):")
  for name in args.optimizers:
    runner = build_runner(name, config, data, params, print)
    compile_shapes(runner, [(b, k) for k, b in shapes.items()])
    print(f"  {name}: {runner.compiled} steps in {runner.compile_s:.1f} s")
    runners.append(runner)
  memory = {"compiled": memory_now()}
  load_timing = [round(x, 2) for x in os.getloadavg()]
  print(f"timing rounds (load average {load_timing})", flush=True)
  for rnd in range(args.rounds):
    k = rnd % len(runners)
    for runner in runners[k:] + runners[:k]:
      train_round(runner, rnd + 1)
    line = ", ".join(
      f"{r.name} {r.graphs[-1] / r.epoch_s[-1]:.1f}" for r in runners
    )
    print(f"round {rnd + 1}: graphs/s {line}", flush=True)
  memory["timed"] = memory_now()
  summary = summarize(runners)

  adam = next((r for r in runners if r.name == "adam"), runners[0])
  typical = data.budgets[0]
  # The batch of the typical shape whose largest molecule, which sets the
  # GRU's steps, is the median one.
  candidates = [b for b in epochs[0] if data.blocks_of(b) == typical.blocks]
  largest = [int(np.max(b.graphs.n_node[b.graph_mask])) for b in candidates]
  batch = candidates[int(np.argsort(largest)[len(largest) // 2])]
  totals = engine_lib.EpochTotals.zeros()
  trips = int(np.max(batch.graphs.n_node[batch.graph_mask]))
  traced = adam.fns.train_step.trace(
    adam.params, adam.state, totals, batch, adam.values, blocks=typical.blocks
  )
  step_flops = matmul_flops(traced.jaxpr.jaxpr, trips)
  real = int(batch.graph_mask.sum())
  d, g = config.d_model, typical.n_graph
  size = typical.block_size
  matmuls = measure_matmuls(
    {
      "dense [N, d] x [d, d]": ((typical.n_node, d), (d, d)),
      "GRU input [N, d] x [d, 6d]": ((typical.n_node, d), (d, 6 * d)),
      "GRU step [2, G, d] x [2, d, 3d]": ((2, g, d), (2, d, 3 * d)),
      "attention blocks [B, S, S] x [B, S, d]": (
        (typical.block_count, size, size),
        (typical.block_count, size, d),
      ),
    }
  )
  step_profile = profile(adam, batch, typical.blocks) if args.profile else None
  valid = list(data.eval_batches("valid"))
  predict = adam.fns.predicts
  eval_s = []
  for _ in range(args.eval_repeats):
    tic = time.perf_counter()
    engine_lib.evaluate(
      lambda p, graphs, blocks: predict.get(p, graphs, blocks=blocks)(
        p, graphs
      ),
      adam.params,
      valid,
      spec.task_type,
      data.scaler,
      data.blocks_of,
    )
    eval_s.append(time.perf_counter() - tic)
  cold = {}
  if args.cold:
    print("cold starts (a fresh process each, no compilation cache):")
    for name in args.cold:
      cold[name] = cold_start(name, args)
      c = cold[name]
      print(
        f"  {name}: launch to end of epoch 1 {c['launch_to_first_epoch_s']:.1f}"
        f" s, epoch 1 {c['first_epoch_s']:.1f} s, epoch 2 "
        f"{c['second_epoch_s']:.1f} s",
        flush=True,
      )
  adam_rate = summary[adam.name]["graphs_per_s"]["median"]
  result = {
    "command": command,
    "machine": info,
    "load_before": load_before,
    "load_timing_start": load_timing,
    "load_after": [round(x, 2) for x in os.getloadavg()],
    "note": args.note,
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
    "steps_per_epoch": steps,
    "graphs_per_epoch": runners[0].graphs[0],
    "batch_shapes": [list(b) for b in data.budgets],
    "summary": summary,
    "cold": cold,
    "pipeline": {
      "epoch_s": pipeline_s,
      "graphs_per_s": runners[0].graphs[0] / pipeline_s,
    },
    "evaluation": {
      "graphs": int(sum(b.graph_mask.sum() for b in valid)),
      "seconds": quartiles(eval_s),
    },
    "flops": {
      "per_step": step_flops,
      "per_molecule": step_flops / real,
      "batch": {"molecules": real, "largest_molecule": trips},
      "achieved_gflops": step_flops / real * adam_rate / 1e9,
    },
    "matmuls": matmuls,
    "profile": step_profile,
    "memory": memory,
    "devices": str(jax.devices()[0]),
  }
  result["targets"] = targets(result)
  return write(result, args.out)


def targets(result: dict) -> list[str]:
  """The issue's throughput targets, reported (never asserted)."""
  summary, out = result["summary"], []
  for name, goal in (("graphsam", 0.95),):
    entry = summary.get(name, {}).get("ratio_to_adam")
    if entry:
      out.append(
        f"GraphSAM >= {goal} x Adam: {entry['median']:.3f} -> "
        f"{'met' if entry['median'] >= goal else 'not met'}"
      )
  graphsam = summary.get("graphsam", {}).get("graphs_per_s")
  sam = summary.get("sam", {}).get("graphs_per_s")
  if graphsam and sam:
    ratio = graphsam["median"] / sam["median"]
    out.append(
      f"GraphSAM >= 1.8 x SAM: {ratio:.2f} -> "
      f"{'met' if ratio >= 1.8 else 'not met'}"
    )
  for name, c in result["cold"].items():
    ratio = c["first_epoch_s"] / c["second_epoch_s"]
    out.append(
      f"{name}: cold first epoch <= 2 x a warm one: {ratio:.2f} -> "
      f"{'met' if ratio <= 2 else 'not met'}"
    )
  return out


def markdown(result: dict) -> str:
  """The report: settings, the optimizer table, cold starts, profile."""
  s, cold = result["summary"], result["cold"]
  lines = [
    "# Training throughput per optimizer",
    "",
    f"Command: `{result['command']}`",
    "",
    f"Machine: {common.machine_line(result['machine'])}.",
    "",
    f"Load average (1, 5, 15 min) at start: {result['load_before']}, when "
    f"the timed rounds began: {result['load_timing_start']}, at the end: "
    f"{result['load_after']}.",
    "",
    *([result["note"], ""] if result["note"] else []),
    f"Dataset {result['dataset']} ({result['config_name']} config: "
    f"{result['model']}), batch {result['batch_size']}, "
    f"{result['steps_per_epoch']} steps and {result['graphs_per_epoch']} "
    f"graphs per epoch, {result['rounds']} rounds (one epoch each); batch "
    f"shapes (atoms, pairs, graphs, blocks, block size): "
    f"{', '.join(str(tuple(b)) for b in result['batch_shapes'])}.",
    "",
    "| optimizer | graphs/s (median [q1, q3]) | ratio to Adam (median [min, "
    "max]) | grad passes/epoch | compiled steps | compile s | state MiB "
    "(vs Adam) | cold: launch to end of epoch 1 (s) | cold epoch 1 / warm "
    "epoch 2 |",
    "|---" * 9 + "|",
  ]
  for name, e in s.items():
    g = e["graphs_per_s"]
    ratio = e.get("ratio_to_adam")
    ratio_text = (
      f"{ratio['median']:.3f} [{ratio['min']:.3f}, {ratio['max']:.3f}]"
      if ratio
      else "—"
    )
    passes = e["passes_per_epoch"]
    passes_text = (
      f"{passes['counted']['median']:.0f} (counted)"
      if passes["counted"] is not None
      else f"{passes['registry']:.0f}"
    )
    state_ratio = e["state_ratio_to_adam"]
    c = cold.get(name)
    cold_text = (
      (
        f"{c['launch_to_first_epoch_s']:.1f}",
        f"{c['first_epoch_s']:.1f} / {c['second_epoch_s']:.1f} = "
        f"{c['first_epoch_s'] / c['second_epoch_s']:.2f}",
      )
      if c
      else ("—", "—")
    )
    lines.append(
      f"| {name} | {g['median']:.1f} [{g['q1']:.1f}, {g['q3']:.1f}] | "
      f"{ratio_text} | {passes_text} | {e['compiled_steps']} | "
      f"{e['compile_s']:.1f} | {e['state_bytes'] / 2**20:.1f} "
      f"({'—' if state_ratio is None else f'{state_ratio:.2f}'}) | "
      f"{cold_text[0]} | {cold_text[1]} |"
    )
  f, p, ev = result["flops"], result["pipeline"], result["evaluation"]
  lines += [
    "",
    "Columns: graphs/s of each round's epoch through the training loop "
    "(host batching overlapped, compilation excluded); ratio to Adam = "
    "Adam's epoch time / this one's, per round; gradient passes per epoch "
    "from the registry, counted from the state for the data-dependent "
    "methods; compiled steps and compile seconds in this process; cold = a "
    "fresh process per optimizer training two epochs with no persistent "
    "compilation cache (epoch times include that epoch's compilation and "
    "validation).",
    "",
    f"- Adam step: {f['per_molecule'] / 1e9:.3f} GFLOP per molecule (matrix "
    f"products of a typical batch, {f['batch']['molecules']} molecules, the "
    f"largest of {f['batch']['largest_molecule']} atoms setting the GRU's "
    f"steps), {f['achieved_gflops']:.1f} GFLOP/s achieved at Adam's median "
    "throughput.",
    "- XLA's matrix product on the model's own shapes, this process: "
    + "; ".join(
      f"{name} {m['gflops']:.1f} GFLOP/s"
      for name, m in result["matmuls"].items()
    )
    + ".",
    f"- Input pipeline alone (host NumPy batching): "
    f"{p['graphs_per_s']:.0f} graphs/s ({p['epoch_s']:.2f} s per epoch).",
    f"- Evaluation pass (validation, {ev['graphs']} molecules): "
    f"{ev['seconds']['median']:.2f} s.",
    f"- Memory: after compiling every optimizer "
    f"{result['memory']['compiled']['rss_mib']:.0f} MiB resident, "
    f"{result['memory']['compiled']['maps']} mappings; after the timed rounds "
    f"{result['memory']['timed']['rss_mib']:.0f} MiB, "
    f"{result['memory']['timed']['maps']} mappings; peak "
    f"{result['memory']['timed']['peak_rss_mib']:.0f} MiB.",
  ]
  if result["profile"]:
    lines += ["", *profile_lines(result["profile"])]
  lines += ["", "Targets (reported, not asserted):", ""]
  lines += [f"- {line}" for line in result["targets"]]
  return "\n".join(lines) + "\n"


def profile_lines(p: dict) -> list[str]:
  total = p["op_ms"]
  rows = [
    (
      name,
      f"{parts['forward']:.1f}",
      f"{parts['backward']:.1f}",
      f"{100 * (parts['forward'] + parts['backward']) / total:.0f}%",
    )
    for name, parts in p["components"].items()
  ]
  t = p["threads"]
  return [
    "## Where an Adam step's time goes",
    "",
    f"One typical batch, XLA's trace (`benchmarks/step_profile.py`): "
    f"{p['wall_ms']:.0f} ms per step without the profiler; the operations "
    f"take {total:.0f} ms per step summed over threads, with no thread busy "
    f"{100 * t['idle']:.0f}% of the time, one {100 * t['one']:.0f}%, two "
    f"{100 * t['two_or_more']:.0f}%.",
    "",
    common.markdown_table(
      ("component", "forward ms", "backward ms", "share"), rows
    ),
  ]


def parse_args(argv=None) -> argparse.Namespace:

  from models import optim

  parser = argparse.ArgumentParser(
    prog="python -m benchmarks.speed",
    description=__doc__.split("\n")[0],
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  parser.add_argument("--dataset", default="bbbp")
  parser.add_argument(
    "--optimizers",
    nargs="+",
    default=list(optim.OPTIMIZERS),
    choices=optim.OPTIMIZERS,
    metavar="NAME",
    help=f"of {', '.join(optim.OPTIMIZERS)} (default all)",
  )
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--max-molecules", type=int)
  parser.add_argument(
    "--config", choices=("default", "test"), default="default"
  )
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--eval-repeats", type=int, default=3)
  parser.add_argument(
    "--cold",
    nargs="*",
    metavar="NAME",
    help="optimizers to start cold, a fresh process each (default: all "
    "timed; none without names)",
  )
  parser.add_argument(
    "--no-profile",
    dest="profile",
    action="store_false",
    help="skip the profile of an Adam step",
  )
  parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
  parser.add_argument("--note", default="", help="a remark for the report")
  parser.add_argument("--data-dir", help="MoleculeNet CSVs")
  parser.add_argument("--cache-dir", help="downloads and featurized molecules")
  parser.add_argument(
    "--smoke",
    action="store_true",
    help="offline dataset, tiny model, 2 rounds (seconds)",
  )
  parser.add_argument("--cold-child", help=argparse.SUPPRESS)
  parser.add_argument("--launched-at", type=float, help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  if args.smoke:
    args.dataset, args.config = "nci5k-tpsa", "test"
    args.rounds, args.eval_repeats = 2, 1
  if args.rounds < 1:
    parser.error(f"--rounds must be >= 1, got {args.rounds}")
  if args.cold is None:
    args.cold = args.optimizers
  return args


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
