"""Fixed runs whose records must not change when code is only moved.

Five short runs, each in a fresh process, through
``models.train.train_and_evaluate``:

* ``nci5k-tpsa`` with the test configuration for 3 epochs, with Adam, SAM
  and GraphSAM (the offline set: no data files needed);
* ``bbbp`` with the paper's configuration for 2 epochs on at most 200
  molecules per split part, with GraphSAM;
* ``nci5k-tpsa`` with GraphSAM for 2 epochs split over 8 virtual CPU devices
  (``XLA_FLAGS=--xla_force_host_platform_device_count=8``).

What a run computes is recorded as its digest: ``metrics.json`` and
``summary.json`` without the fields that measure time or name the run's
directory, and the SHA-256 of its saved weights (``params.msgpack``), split
and test predictions. ``--record`` writes the digests to
``benchmarks/results/fixed_runs.json``; ``--check`` (the default) runs them
again and compares field by field, bit for bit, printing every difference
and exiting 1 on any. XLA's code differs between CPU models, so a record is
compared on the machine kind it was made on (the record names its CPU).

Run from the repository root (``GRAPHSAM_DATA_DIR`` names the MoleculeNet
CSVs, for BBBP)::

  python -m benchmarks.fixed_runs --record   # before moving code
  python -m benchmarks.fixed_runs            # after: same digests?
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks import common
from models import allocator

RECORD = Path("benchmarks/results/fixed_runs.json")
# Fields that measure time or name a directory: not part of what a run
# computes.
TIMING = {
  "train_seconds",
  "graphs_per_s",
  "elapsed_seconds",
  "wall_seconds",
  "compile_seconds",
  "workdir",
}
HASHED = ("params.msgpack", "split.json", "test_predictions.csv")
DEVICES = 8
RUNS = {
  "nci5k-tpsa-adam": ("test", "nci5k-tpsa", {"optimizer": "adam"}),
  "nci5k-tpsa-sam": ("test", "nci5k-tpsa", {"optimizer": "sam"}),
  "nci5k-tpsa-graphsam": ("test", "nci5k-tpsa", {"optimizer": "graphsam"}),
  "bbbp-graphsam": (
    "default",
    "bbbp",
    {"optimizer": "graphsam", "epochs": 2, "max_molecules": 200},
  ),
  "nci5k-tpsa-graphsam-devices8": (
    "test",
    "nci5k-tpsa",
    {"optimizer": "graphsam", "epochs": 2},
  ),
}


def train_one(name: str, workdir: str) -> None:
  """Trains run ``name`` into ``workdir`` (in this process)."""
  from models import configs
  from models import train

  config_name, dataset, changes = RUNS[name]
  base = configs.get_config(config_name, dataset)
  config = base.replace(**{"epochs": 3, **changes})
  devices = DEVICES if name.endswith(f"devices{DEVICES}") else 1
  train.train_and_evaluate(
    config, workdir, progress=False, log=lambda line: None, num_devices=devices
  )


def digest(workdir: Path) -> dict:
  """What a finished run computed (see the module docstring)."""

  def strip(record):
    if isinstance(record, dict):
      return {k: strip(v) for k, v in record.items() if k not in TIMING}
    if isinstance(record, list):
      return [strip(v) for v in record]
    return record

  out = {
    "metrics": strip(json.loads((workdir / "metrics.json").read_text())),
    "summary": strip(json.loads((workdir / "summary.json").read_text())),
  }
  for name in HASHED:
    path = workdir / name
    out[name] = (
      hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else None
    )
  return out


def run_all(root: Path) -> dict:
  """Every run in a fresh process; their digests by name."""
  digests = {}
  for name in RUNS:
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    if name.endswith(f"devices{DEVICES}"):
      env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={DEVICES}"
    workdir = root / name
    print(f"{name}: training in {workdir}", flush=True)
    subprocess.run(
      [
        sys.executable,
        "-m",
        "benchmarks.fixed_runs",
        "--one",
        name,
        str(workdir),
      ],
      env=env,
      check=True,
    )
    digests[name] = digest(workdir)
  return digests


def differences(found, wanted, where: str = "") -> list[str]:
  """Every field where ``found`` is not ``wanted``, by its path."""
  if isinstance(wanted, dict) and isinstance(found, dict):
    out = []
    for key in sorted(set(found) | set(wanted), key=str):
      if key not in found or key not in wanted:
        out.append(
          f"{where}/{key}: only in {'found' if key in found else 'record'}"
        )
      else:
        out += differences(found[key], wanted[key], f"{where}/{key}")
    return out
  if isinstance(wanted, list) and isinstance(found, list):
    if len(found) != len(wanted):
      return [f"{where}: {len(found)} entries, recorded {len(wanted)}"]
    return [
      line
      for i, (f, w) in enumerate(zip(found, wanted, strict=True))
      for line in differences(f, w, f"{where}[{i}]")
    ]
  return [] if found == wanted else [f"{where}: {found!r}, recorded {wanted!r}"]


def main(argv=None) -> int:
  allocator.retain_freed_memory()  # before JAX runs anything
  parser = argparse.ArgumentParser(
    prog="python -m benchmarks.fixed_runs", description=__doc__.split("\n")[0]
  )
  mode = parser.add_mutually_exclusive_group()
  mode.add_argument("--record", action="store_true", help="write the record")
  mode.add_argument(
    "--one", nargs=2, metavar=("NAME", "DIR"), help=argparse.SUPPRESS
  )
  parser.add_argument("--record-file", type=Path, default=RECORD)
  args = parser.parse_args(argv)
  if args.one:
    train_one(*args.one)
    return 0
  with tempfile.TemporaryDirectory(prefix="fixed_runs-") as root:
    digests = run_all(Path(root))
  if args.record:
    info = common.machine()
    record = {
      "command": common.command("fixed_runs", argv),
      "commit": subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
      ).stdout.strip()
      or None,
      "machine": {k: info[k] for k in ("cpu", "jax", "optax", "flax")},
      "runs": digests,
    }
    args.record_file.write_text(json.dumps(record, indent=1) + "\n")
    print(f"recorded {len(digests)} runs in {args.record_file}")
    return 0
  recorded = json.loads(args.record_file.read_text())
  lines = differences(digests, recorded["runs"])
  for line in lines:
    print(f"differs: {line}")
  print(
    f"{len(digests)} runs, {len(lines)} differences from {args.record_file} "
    f"(recorded at {recorded.get('commit')} on {recorded['machine']['cpu']})"
  )
  return 1 if lines else 0


if __name__ == "__main__":
  sys.exit(main())
