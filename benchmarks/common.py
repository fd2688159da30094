"""What the benchmark scripts share: provenance, statistics, tables, runs.

Every script of ``benchmarks/`` runs as a module from the repository root,
``python -m benchmarks.<name> ...``, and starts by printing
:func:`command` and :func:`machine`. Reports state the mean ± sample
standard deviation over seeds (:func:`mean_std`, ddof 1) in Markdown tables
(:func:`markdown_table`). Finished training runs are read back from the run
directories that ``models.train.train_and_evaluate`` (and ``graphsam-train
--out``) write, ``summary.json`` and ``metrics.json`` (:func:`load_run`,
``models.run_dir.walk_runs``, :func:`summary_row`).
"""

from __future__ import annotations

import json
import math
import os
import platform
import shlex
import sys
from collections.abc import Callable
from collections.abc import Iterable
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from models import run_dir as run_layout

# The first columns of every per-run table: header, cell of a summary_row.
RUN_COLUMNS: tuple[tuple[str, Callable[[dict], object]], ...] = (
  ("dataset", lambda r: r["dataset"]),
  ("optimizer", lambda r: r["optimizer"]),
  ("seed", lambda r: r["seed"]),
  ("test", lambda r: f"{r['test']:.4f}"),
  ("best valid", lambda r: f"{r['best_valid']:.4f}"),
  ("best epoch", lambda r: r["best_epoch"]),
  ("epochs", lambda r: r["epochs"]),
)
# What a finished run directory holds (train_and_evaluate writes
# summary.json last). Reports read the per-epoch record from metrics.json,
# the engine's own (resumption reads it too); metrics.csv is its copy for
# spreadsheets.
RUN_FILES = (run_layout.METRICS, run_layout.SUMMARY)
# What makes a directory a run directory, finished or not.
RUN_MARKER = run_layout.CONFIG


def command(name: str, argv: Sequence[str] | None = None) -> str:
  """The command line that runs ``benchmarks.<name>`` with ``argv``.

  Args:
    name: the script's module name, e.g. ``"table1"``.
    argv: its arguments; None takes ``sys.argv[1:]``.
  """
  argv = sys.argv[1:] if argv is None else list(argv)
  return shlex.join(["python", "-m", f"benchmarks.{name}", *argv])


def _cpu_model() -> str:
  try:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
      if line.startswith("model name"):
        return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def machine() -> dict:
  """The machine and software a benchmark ran on, with the load average."""
  import flax
  import jax
  import optax

  return {
    "cpu": _cpu_model(),
    "cpu_count": os.cpu_count(),
    "usable_cpus": len(os.sched_getaffinity(0)),
    "load_average": os.getloadavg(),
    "platform": platform.platform(),
    "python": platform.python_version(),
    "jax": jax.__version__,
    "optax": optax.__version__,
    "flax": flax.__version__,
    "device": str(jax.devices()[0]),
    "xla_flags": os.environ.get("XLA_FLAGS", ""),
  }


def machine_line(info: dict) -> str:
  """:func:`machine` as one sentence for a report."""
  return (
    f"{info['cpu']}, {info['cpu_count']} CPUs ({info['usable_cpus']} "
    f"usable, load average {info['load_average'][0]:.1f} at start), jax "
    f"{info['jax']} on {info['device']}, optax {info['optax']}, flax "
    f"{info['flax']}; {info['platform']}."
  )


def mean_std(values: Iterable[float]) -> tuple[float, float]:
  """Mean and sample standard deviation (ddof 1; NaN for one value).

  Raises:
    ValueError: ``values`` is empty.
  """
  v = np.asarray(list(values), float)
  if v.size == 0:
    raise ValueError("mean_std of no values")
  return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else math.nan


def format_mean_std(mean: float, std: float, digits: int = 3) -> str:
  """``"0.955 ± 0.010"``, or the mean alone when ``std`` is NaN."""
  if math.isnan(std):
    return f"{mean:.{digits}f}"
  return f"{mean:.{digits}f} ± {std:.{digits}f}"


def markdown_table(header: Sequence[str], rows: Iterable[Sequence]) -> str:
  """A Markdown table; cells are written with ``str``."""
  lines = [
    "| " + " | ".join(map(str, header)) + " |",
    "|---" * len(header) + "|",
  ]
  lines += ["| " + " | ".join(map(str, row)) + " |" for row in rows]
  return "\n".join(lines)


def runs_table(
  rows: Iterable[dict], extra: Sequence[tuple[str, Callable[[dict], object]]]
) -> str:
  """One line per run: :data:`RUN_COLUMNS`, then the ``extra`` columns.

  Args:
    rows: :func:`summary_row` dicts, with whatever ``extra`` reads.
    extra: ``(header, cell)`` pairs; ``cell(row)`` is written with ``str``.
  """
  columns = [*RUN_COLUMNS, *extra]
  return markdown_table(
    [header for header, _ in columns],
    ([cell(row) for _, cell in columns] for row in rows),
  )


def load_run(run_dir: str | os.PathLike) -> dict:
  """``{"metrics" (DataFrame), "summary", "config"}`` of a finished run.

  Raises:
    FileNotFoundError: the run has no ``metrics.json`` or ``summary.json``;
      the message names the directory.
  """
  import pandas as pd

  run_dir = Path(run_dir)
  missing = [name for name in RUN_FILES if not (run_dir / name).exists()]
  if missing:
    raise FileNotFoundError(
      f"{run_dir} is not a finished graphsam-train run: no "
      f"{', '.join(missing)} (an interrupted run resumes when its command "
      "is run again)"
    )
  config = run_dir / RUN_MARKER
  metrics, summary = (run_dir / name for name in RUN_FILES)
  return {
    "metrics": pd.DataFrame(json.loads(metrics.read_text())),
    "summary": json.loads(summary.read_text()),
    "config": json.loads(config.read_text()) if config.exists() else None,
  }


def summary_row(summary: dict) -> dict:
  """What every report says of one run, from its ``summary.json``."""
  metric = summary["metric"]
  return {
    "dataset": summary["dataset"],
    "optimizer": summary["optimizer"],
    "seed": summary["seed"],
    "metric": metric,
    "test": summary[f"test_{metric}"],
    "best_valid": summary[f"best_valid_{metric}"],
    "best_epoch": summary["best_epoch"],
    "epochs": summary["epochs"],
    "wall_seconds": summary["wall_seconds"],
  }
