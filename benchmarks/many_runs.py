"""Many training runs in one process: what is compiled, and memory over runs.

A notebook that compares optimizers or sweeps ρ trains run after run in one
kernel. This script does the same with ``models.train.train_and_evaluate``:
it cycles through Adam, SAM and GraphSAM over several ρ and β (the float
hyperparameters reach the compiled step as arrays, so each optimizer family
compiles its steps once), and after every run records the process's
resident memory and its number of memory mappings (``/proc/self/status``,
``/proc/self/maps``; XLA's compiled code lives in mappings, and LLVM's
loader runs out of them before the machine runs out of RAM), the train
steps the run compiled and its wall time.

Run from the repository root::

  python -m benchmarks.many_runs          # the BBBP model, 100 molecules
  python -m benchmarks.many_runs --config test --dataset nci5k-tpsa --runs 12

Prints one line per run and a JSON summary (``--out`` writes it too):
resident memory and mappings after the last run against after the second,
and against after the last run that compiled anything (a train step or an
evaluation: each family compiles on its first run, and again where a later
run's batches need a shape it has not used yet).
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import tempfile
import time
import warnings
from pathlib import Path

from benchmarks import common
from benchmarks import speed
from models import allocator

# (optimizer, hyperparameters): three families, several values of each.
GRID = (
  ("adam", {}),
  ("sam", {"rho": 0.05}),
  ("graphsam", {"rho": 0.05, "beta": 0.99}),
  ("sam", {"rho": 0.1}),
  ("graphsam", {"rho": 0.02, "beta": 0.9}),
  ("adam", {}),
  ("sam", {"rho": 0.01}),
  ("graphsam", {"rho": 0.1, "beta": 0.5}),
)


def run_configs(base, count: int):
  """``count`` configs cycling through :data:`GRID`, seeds 0, 1, ..."""
  for seed, (optimizer, hyperparameters) in zip(
    range(count), itertools.cycle(GRID)
  ):
    yield base.replace(
      optimizer=optimizer, hyperparameters=hyperparameters, seed=seed % 2
    )


def main(argv=None) -> dict:
  allocator.retain_freed_memory()  # before JAX runs anything
  argv = sys.argv[1:] if argv is None else list(argv)
  parser = argparse.ArgumentParser(
    prog="python -m benchmarks.many_runs",
    description=__doc__.split("\n")[0],
  )
  parser.add_argument("--dataset", default="bbbp")
  parser.add_argument(
    "--config", choices=("default", "test"), default="default"
  )
  parser.add_argument("--runs", type=int, default=12)
  parser.add_argument("--epochs", type=int, default=1)
  parser.add_argument(
    "--max-molecules",
    type=int,
    default=100,
    help="molecules per split part (default 100)",
  )
  parser.add_argument("--data-dir")
  parser.add_argument("--cache-dir")
  parser.add_argument("--out", type=Path, help="write the JSON summary here")
  args = parser.parse_args(argv)
  if args.runs < 2:
    parser.error(f"--runs must be >= 2, got {args.runs}")

  from models import configs
  from models import datasets
  from models import train

  print(f"command: {common.command('many_runs', argv)}")
  base = configs.get_config(args.config, args.dataset)
  base = base.replace(
    epochs=args.epochs, patience=args.epochs, max_molecules=args.max_molecules
  )
  records = []
  with tempfile.TemporaryDirectory() as root, warnings.catch_warnings():
    # The same file's parsing report on every run says nothing new.
    warnings.simplefilter("ignore", datasets.InvalidSmilesWarning)
    warnings.simplefilter("ignore", datasets.DuplicateSmilesWarning)
    for k, config in enumerate(run_configs(base, args.runs)):
      tic = time.perf_counter()
      summary = train.train_and_evaluate(
        config,
        Path(root) / f"run{k}",
        data_dir=args.data_dir,
        cache_dir=args.cache_dir,
        progress=False,
        log=lambda _: None,
      )
      record = {
        "run": k + 1,
        "optimizer": config.optimizer,
        "hyperparameters": dict(config.hyperparameters),
        "seed": config.seed,
        "compiled_train_steps": summary["compiled_train_steps"],
        "compiled_evaluations": summary["compiled_evaluations"],
        "seconds": time.perf_counter() - tic,
        **speed.memory_now(),
      }
      records.append(record)
      print(
        f"run {k + 1:2d} {config.optimizer:8s} "
        f"{json.dumps(record['hyperparameters']):28s} compiled "
        f"{record['compiled_train_steps']} steps and "
        f"{record['compiled_evaluations']} evaluations, "
        f"{record['seconds']:5.1f} s, "
        f"{record['rss_mib']:7.1f} MiB resident, {record['maps']} mappings",
        flush=True,
      )
  second, last = records[1], records[-1]
  compiling = max(
    (
      r["run"]
      for r in records
      if r["compiled_train_steps"] or r["compiled_evaluations"]
    ),
    default=1,
  )
  warm = records[compiling - 1]
  result = {
    "runs": records,
    "rss_growth_after_second": last["rss_mib"] / second["rss_mib"] - 1,
    "maps_growth_after_second": last["maps"] / second["maps"] - 1,
    "last_compiling_run": compiling,
    "rss_growth_after_compiling": last["rss_mib"] / warm["rss_mib"] - 1,
    "maps_growth_after_compiling": last["maps"] / warm["maps"] - 1,
    "compiled_train_steps": sum(r["compiled_train_steps"] for r in records),
  }
  print(
    f"after run {len(records)} against after run 2: resident memory "
    f"{100 * result['rss_growth_after_second']:+.1f}%, mappings "
    f"{100 * result['maps_growth_after_second']:+.1f}%; against after run "
    f"{compiling}, the last that compiled: "
    f"{100 * result['rss_growth_after_compiling']:+.1f}%, "
    f"{100 * result['maps_growth_after_compiling']:+.1f}%; "
    f"{result['compiled_train_steps']} train steps compiled in all"
  )
  print(json.dumps(result))
  if args.out:
    args.out.write_text(json.dumps(result, indent=1) + "\n")
  return result


if __name__ == "__main__":
  main()
