"""Optimizer-step cost and state size of every optimizer of the registry.

The update of a sharpness-aware wrapper is elementwise work on
parameter-sized arrays, so on an accelerator it is memory-bound: its floor is
the number of parameter-sized arrays read and written. This script measures
it, side by side in one process, on a transformer-like pytree of
``--params`` float32 parameters (square matrices and bias vectors).

Each optimizer is the registry's method around ``optax.adam(1e-3)``. The timed
step is what a training loop compiles::

  updates, state = tx.update(grads, state, params, grad_fn=grad_fn)
  params = optax.apply_updates(params, updates)

in one ``jax.jit`` with params and state donated; ``grads`` is a fixed input,
and ``grad_fn(p) = grads + 1e-3 p`` is an elementwise stand-in for a gradient
pass (one read of its point), so the times are the optimizers' own work. A
real gradient pass adds a forward and backward pass where a method calls
``grad_fn``: on every step for SAM, on some steps for the others (see the
registry's ``passes``). GraphSAM's anchors, once per epoch, are outside the
measured window (``steps_per_epoch`` is beyond it): the table is its ordinary
step. The periodic methods (SAM-k, LookSAM, ``k = 8``) are timed over whole
periods of 8 steps.

The optimizers run in ``--rounds`` rounds, each timing ``--steps`` steps of
every optimizer in an order rotated from round to round; the ratio to Adam is
taken within each round (median over rounds), so the load of a shared
machine hits all alike. Reported per optimizer: state bytes (and ratio to
Adam's), milliseconds per step (median, quartiles), ratio to Adam, and XLA's
static account of the compiled step: bytes accessed and temporary buffer
bytes, in parameter-sized arrays.

Run from the repository root::

  python -m benchmarks.update_cost                     # 10M parameters
  python -m benchmarks.update_cost --smoke --out /tmp/update_cost

Writes ``update_cost.json`` and ``update_cost.md`` to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks import common
from benchmarks import speed
from models import allocator

NAME = "update_cost"
WIDTH = 1000  # matrices WIDTH x WIDTH, bias vectors of WIDTH
PERIOD = 8  # SAM-k's and LookSAM's k: steps per rep cover whole periods


def make_params(count: int, width: int):
  """Square matrices and bias vectors, ``count`` parameters in all."""
  import jax

  layers = max(1, round(count / (width * width + width)))
  shapes = [(width, width), (width,)] * layers
  keys = jax.random.split(jax.random.key(0), len(shapes))
  return [
    0.1 * jax.random.normal(key, shape)
    for key, shape in zip(keys, shapes, strict=True)
  ]


class Runner:
  """One optimizer's compiled step, its live params and state, its times."""

  def __init__(self, name, params, grads):
    import jax
    import optax

    import graphsam_optax

    self.name = name
    tx = graphsam_optax.get_optimizer(
      name,
      optax.adam(1e-3),
      steps_per_epoch=10**9,
      total_steps=10**9,
    )

    def grad_fn(point):
      return jax.tree.map(lambda p, g: g + 1e-3 * p, point, grads)

    def step(params, state, grads):
      updates, state = tx.update(grads, state, params, grad_fn=grad_fn)
      return optax.apply_updates(params, updates), state

    self.params = jax.tree.map(lambda p: p.copy(), params)
    self.state = tx.init(self.params)
    self.state_bytes = speed.tree_bytes(self.state)
    jitted = jax.jit(step, donate_argnums=(0, 1))
    compiled = jitted.lower(self.params, self.state, grads).compile()
    param_bytes = speed.tree_bytes(params)
    self.bytes_accessed = compiled.cost_analysis()["bytes accessed"]
    self.bytes_accessed /= param_bytes
    self.temp = compiled.memory_analysis().temp_size_in_bytes / param_bytes
    self.step = compiled
    self.grads = grads
    self.times, self.cpu_times = [], []
    self.run(2)  # the first steps: GraphSAM's anchor, LookSAM's SAM step

  def run(self, steps: int) -> None:
    """Runs ``steps`` steps, waited for; records seconds per step."""
    import jax

    tic, cpu = time.perf_counter(), time.process_time()
    for _ in range(steps):
      self.params, self.state = self.step(self.params, self.state, self.grads)
    jax.block_until_ready((self.params, self.state))
    self.times.append((time.perf_counter() - tic) / steps)
    self.cpu_times.append((time.process_time() - cpu) / steps)


def measure(args) -> dict:
  import jax

  params = make_params(args.params, args.width)
  grads = jax.tree.map(lambda p: 1e-2 * p + 1e-3, params)
  count = sum(p.size for p in params)
  print(f"{count} parameters in {len(params)} arrays; compiling", flush=True)
  runners = [Runner(name, params, grads) for name in args.optimizers]
  load_timing = [round(x, 2) for x in os.getloadavg()]
  for rnd in range(args.rounds):
    k = rnd % len(runners)
    for runner in runners[k:] + runners[:k]:
      runner.run(args.steps)
    line = ", ".join(f"{r.name} {r.times[-1] * 1e3:.1f}" for r in runners)
    print(f"round {rnd + 1}: ms/step {line}", flush=True)
  adam, adam_cpu = (
    np.asarray(runners[0].times),
    np.asarray(runners[0].cpu_times),
  )
  return {
    "parameters": int(count),
    "arrays": len(params),
    "load_timing_start": load_timing,
    "summary": {
      r.name: {
        "state_bytes": r.state_bytes,
        "state_ratio_to_adam": r.state_bytes / runners[0].state_bytes,
        "ms_per_step": speed.quartiles(np.asarray(r.times) * 1e3),
        "ratio_to_adam": speed.quartiles(np.asarray(r.times) / adam),
        "cpu_ms_per_step": speed.quartiles(np.asarray(r.cpu_times) * 1e3),
        "cpu_ratio_to_adam": speed.quartiles(
          np.asarray(r.cpu_times) / adam_cpu
        ),
        "bytes_accessed_in_params": r.bytes_accessed,
        "temporaries_in_params": r.temp,
      }
      for r in runners
    },
  }


def markdown(result: dict) -> str:
  m = result["machine"]
  lines = [
    "# Optimizer-step cost and state size",
    "",
    f"Command: `{result['command']}`",
    "",
    f"Machine: {m['cpu']}, {m['cpu_count']} CPUs ({m['usable_cpus']} "
    f"usable), jax {m['jax']}, optax {m['optax']}; {m['platform']}. Load "
    f"average when timing began: {result['load_timing_start']}.",
    *([result["note"]] if result["note"] else []),
    "",
    f"{result['parameters']} float32 parameters in {result['arrays']} "
    f"arrays; {result['rounds']} rounds of {result['steps']} steps per "
    "optimizer, interleaved. The step is `tx.update` + "
    "`optax.apply_updates` jitted with params and state donated, around "
    "`optax.adam(1e-3)`, with an elementwise stand-in for `grad_fn`.",
    "",
    "| optimizer | state MiB (vs Adam) | ms/step (median [q1, q3]) | "
    "ratio to Adam (median [min, max]) | CPU ms/step | CPU ratio to Adam | "
    "bytes accessed | temporaries |",
    "|---" * 8 + "|",
  ]
  for name, e in result["summary"].items():
    ms, ratio = e["ms_per_step"], e["ratio_to_adam"]
    lines.append(
      f"| {name} | {e['state_bytes'] / 2**20:.1f} "
      f"({e['state_ratio_to_adam']:.2f}) | {ms['median']:.1f} "
      f"[{ms['q1']:.1f}, {ms['q3']:.1f}] | {ratio['median']:.2f} "
      f"[{ratio['min']:.2f}, {ratio['max']:.2f}] | "
      f"{e['cpu_ms_per_step']['median']:.1f} | "
      f"{e['cpu_ratio_to_adam']['median']:.2f} | "
      f"{e['bytes_accessed_in_params']:.1f} | "
      f"{e['temporaries_in_params']:.1f} |"
    )
  lines += [
    "",
    "ms/step is wall time; CPU ms/step is this process's CPU time (both "
    "cores, kernel time included), which the load of other processes moves "
    "less. Bytes accessed and temporaries are XLA's static account of the "
    "compiled step (`cost_analysis`, `memory_analysis`) in parameter-sized "
    "float32 arrays; a `lax.cond` counts both branches. On this CPU backend "
    "a temporary is freshly mapped memory on every step, so each one costs "
    "page faults as well as its traffic.",
  ]
  return "\n".join(lines) + "\n"


def parse_args(argv=None) -> argparse.Namespace:
  import graphsam_optax

  names = list(graphsam_optax.optimizer_names())
  parser = argparse.ArgumentParser(
    description=__doc__.split("\n")[0],
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  parser.add_argument("--params", type=int, default=10_000_000)
  parser.add_argument("--width", type=int, default=WIDTH)
  parser.add_argument(
    "--optimizers",
    nargs="+",
    default=names,
    choices=names,
    metavar="NAME",
    help=f"of {', '.join(names)} (default all; adam is always timed)",
  )
  parser.add_argument("--rounds", type=int, default=7)
  parser.add_argument(
    "--steps", type=int, default=2 * PERIOD, help="steps per round"
  )
  parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
  parser.add_argument("--note", default="", help="a remark for the report")
  parser.add_argument(
    "--smoke",
    action="store_true",
    help="100k parameters, 2 rounds of 8 steps (seconds)",
  )
  args = parser.parse_args(argv)
  if args.smoke:
    args.params, args.width, args.rounds, args.steps = 100_000, 100, 2, PERIOD
  if args.steps % PERIOD:
    parser.error(f"--steps must be a multiple of {PERIOD}, got {args.steps}")
  args.optimizers = ["adam"] + [n for n in args.optimizers if n != "adam"]
  return args


def main(argv=None) -> dict:
  allocator.retain_freed_memory()  # before JAX runs anything
  argv = sys.argv[1:] if argv is None else list(argv)
  args = parse_args(argv)
  command = common.command(NAME, argv)
  info = common.machine()
  print(f"command: {command}\nmachine: {info}", flush=True)
  result = {
    "command": command,
    "machine": info,
    "note": args.note,
    "rounds": args.rounds,
    "steps": args.steps,
    **measure(args),
  }
  args.out.mkdir(parents=True, exist_ok=True)
  (args.out / f"{NAME}.json").write_text(json.dumps(result, indent=1) + "\n")
  text = markdown(result)
  (args.out / f"{NAME}.md").write_text(text)
  print(text)
  print(f"wrote {args.out / NAME}.json and .md")
  return result


if __name__ == "__main__":
  main()
