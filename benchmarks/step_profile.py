"""Where a training step's time goes, by model component (XLA's own trace).

``jax.profiler`` records every operation XLA:CPU executes, with the HLO
instruction it runs; the compiled module's metadata names the JAX operation
behind each instruction (``op_name``), which carries the Flax module path
(``layer_2/attention/...``) and whether it belongs to the backward pass
(``transpose(jvp(...))``). :func:`profile_step` runs a compiled step a few
times under the profiler and sums the operations' durations by component.

The durations are per operation on whichever thread ran it, so they add up
to more than the step's wall time when two operations overlap, and to less
when the threads wait; :func:`profile_step` reports the wall time per step
beside them, and the share of time one, two or no thread ran an operation.
"""

from __future__ import annotations

import collections
import gzip
import json
import re
import tempfile
import time
from pathlib import Path

import jax
import numpy as np

# Container operations whose duration includes the operations they run.
_CONTAINERS = ("while", "cond", "call", "conditional")
_OP_NAME = re.compile(r'\s*(?:ROOT )?%?([\w.\-]+) = .*?op_name="([^"]+)"')
COMPONENTS = (
  "embedding",
  "attention",
  "feed-forward",
  "layer norms and residuals",
  "GRU readout",
  "head and loss",
  "optimizer update",
)


def op_names(compiled) -> dict[str, str]:
  """HLO instruction name -> the JAX ``op_name`` it implements."""
  names = {}
  for line in compiled.as_text().splitlines():
    match = _OP_NAME.match(line)
    if match:
      names[match.group(1)] = match.group(2)
  return names


def component(op_name: str | None) -> tuple[str, str]:
  """(component, "forward" or "backward") of an operation's ``op_name``."""
  if op_name is None:
    return "optimizer update", "forward"
  parts = op_name.split("/")
  direction = "backward" if "transpose(" in op_name else "forward"
  if "readout" in parts:
    return "GRU readout", direction
  if any(p in ("atom_embed", "bond_embed") for p in parts):
    return "embedding", direction
  if any(p.startswith("layer_") for p in parts):
    if "attention" in parts:
      return "attention", direction
    if "feed_forward" in parts:
      return "feed-forward", direction
    return "layer norms and residuals", direction
  if "final_norm" in parts:
    return "layer norms and residuals", direction
  if "head" in parts or any("CoMPT" in p for p in parts) or "jvp(" in op_name:
    return "head and loss", direction
  return "optimizer update", direction


def _load_trace(directory: Path) -> list[dict]:
  (path,) = Path(directory).rglob("*.trace.json.gz")
  with gzip.open(path) as f:
    return json.load(f)["traceEvents"]


def _thread_occupancy(events, resolution_us: float = 10.0) -> dict:
  """Shares of the traced span with no, one, and two or more threads busy."""
  by_thread = collections.defaultdict(list)
  for e in events:
    by_thread[e["tid"]].append((e["ts"], e["ts"] + e["dur"]))
  start = min(a for spans in by_thread.values() for a, _ in spans)
  end = max(b for spans in by_thread.values() for _, b in spans)
  bins = int((end - start) / resolution_us) + 1
  busy = np.zeros(bins, np.int32)
  for spans in by_thread.values():
    mine = np.zeros(bins, bool)
    for a, b in spans:
      mine[
        int((a - start) / resolution_us) : int((b - start) / resolution_us)
      ] = True
    busy += mine
  return {
    "idle": float(np.mean(busy == 0)),
    "one": float(np.mean(busy == 1)),
    "two_or_more": float(np.mean(busy >= 2)),
  }


def profile_step(compiled, args, steps: int = 10) -> dict:
  """Profiles ``compiled(*args)`` (a train step returning its next
  ``(params, opt_state, totals)``, fed back) over ``steps`` calls.

  Returns:
    ``{"wall_ms", "op_ms", "threads", "components": {name: {"forward",
    "backward"}}}``: wall time per step without the profiler, the summed
    operation time per step under it, the thread occupancy, and the
    operation time per step of each component and direction (ms).
  """
  params, opt_state, totals, *rest = args
  for _ in range(2):
    params, opt_state, totals = compiled(params, opt_state, totals, *rest)
  jax.block_until_ready(totals)
  tic = time.perf_counter()
  for _ in range(steps):
    params, opt_state, totals = compiled(params, opt_state, totals, *rest)
    jax.block_until_ready(totals)
  wall = (time.perf_counter() - tic) / steps
  with tempfile.TemporaryDirectory() as directory:
    jax.profiler.start_trace(directory)
    for _ in range(steps):
      params, opt_state, totals = compiled(params, opt_state, totals, *rest)
      jax.block_until_ready(totals)
    jax.profiler.stop_trace()
    events = _load_trace(directory)
  ops = [
    e
    for e in events
    if e.get("ph") == "X"
    and "hlo_op" in (e.get("args") or {})
    and e["args"]["hlo_op"].split(".")[0] not in _CONTAINERS
  ]
  names = op_names(compiled)
  parts = {c: {"forward": 0.0, "backward": 0.0} for c in COMPONENTS}
  for e in ops:
    name, direction = component(names.get(e["args"]["hlo_op"]))
    parts[name][direction] += e["dur"] / 1e3 / steps
  return {
    "wall_ms": wall * 1e3,
    "op_ms": sum(e["dur"] for e in ops) / 1e3 / steps,
    "threads": _thread_occupancy(ops),
    "components": parts,
  }
