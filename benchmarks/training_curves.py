"""Learning curves and the seed summary of finished ``graphsam-train`` runs.

Reads the output directories that ``graphsam-train --out DIR`` (or
``models.train.train_and_evaluate``) writes, ``metrics.csv`` and
``summary.json``, and reports

* per run: test metric, best validation epoch and metric, epochs trained,
  the median epoch's training time and throughput (the first epochs include
  compilation) and the whole run's wall time per epoch (compilation,
  evaluation and checkpoints included);
* per dataset and optimizer: the test metric's mean ± std over seeds
  (sample std, ddof 1);
* a plot of training loss and validation metric by epoch, one colour per
  optimizer, the best epoch of each run marked.

Run from the repository root, e.g. for issue #5's BBBP runs::

  for seed in 0 1 2; do for opt in graphsam adam; do
    graphsam-train --dataset bbbp --optimizer $opt --seed $seed \\
      --out runs/bbbp-$opt-s$seed
  done; done
  python benchmarks/training_curves.py runs/bbbp-* \\
    --out benchmarks/results/bbbp_paper_schedule

which writes ``<out>.md`` (both tables, with the command) and ``<out>.png``.
Unfinished runs (no ``summary.json``) are refused by name.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

import numpy as np
import pandas as pd

# One colour per optimizer, in order of first appearance.
COLOURS = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple")


def load_run(run_dir: Path) -> dict:
  """``{"metrics" (DataFrame), "summary"}`` of a finished run."""
  missing = [
    name
    for name in ("metrics.csv", "summary.json")
    if not (run_dir / name).exists()
  ]
  if missing:
    raise FileNotFoundError(
      f"{run_dir} is not a finished graphsam-train run: no "
      f"{', '.join(missing)} (an interrupted run resumes when its command "
      "is run again)"
    )
  return {
    "metrics": pd.read_csv(run_dir / "metrics.csv"),
    "summary": json.loads((run_dir / "summary.json").read_text()),
  }


def runs_frame(runs: dict[Path, dict]) -> pd.DataFrame:
  """One row per run, sorted by dataset, optimizer and seed."""
  rows = []
  for run_dir, run in runs.items():
    summary, metrics = run["summary"], run["metrics"]
    metric = summary["metric"]
    rows.append(
      {
        "dataset": summary["dataset"],
        "optimizer": summary["optimizer"],
        "seed": summary["seed"],
        "metric": metric,
        "test": summary[f"test_{metric}"],
        "best_valid": summary[f"best_valid_{metric}"],
        "best_epoch": summary["best_epoch"],
        "epochs": summary["epochs"],
        "median_epoch_s": float(np.median(metrics["train_seconds"])),
        "median_graphs_per_s": float(np.median(metrics["graphs_per_s"])),
        "wall_s_per_epoch": summary["wall_seconds"] / summary["epochs"],
        "run": str(run_dir),
      }
    )
  return (
    pd.DataFrame(rows)
    .sort_values(["dataset", "optimizer", "seed"])
    .reset_index(drop=True)
  )


def seed_summary(frame: pd.DataFrame) -> pd.DataFrame:
  """Test metric mean, sample std and seed count per dataset and optimizer."""
  grouped = frame.groupby(["dataset", "optimizer", "metric"], sort=True)
  return grouped["test"].agg(["mean", "std", "count"]).reset_index()


def markdown(frame: pd.DataFrame, summary: pd.DataFrame, command: str) -> str:
  lines = [
    "# Training runs: test metric over seeds",
    "",
    f"Command: `{command}`",
    "",
    "| dataset | optimizer | test metric | mean ± std (ddof 1) | seeds |",
    "|---|---|---|---|---|",
  ]
  for row in summary.itertuples():
    spread = "" if np.isnan(row.std) else f" ± {row.std:.3f}"
    lines.append(
      f"| {row.dataset} | {row.optimizer} | {row.metric} | "
      f"{row.mean:.3f}{spread} | {row.count} |"
    )
  lines += [
    "",
    "| dataset | optimizer | seed | test | best valid | best epoch | epochs "
    "| median epoch (s) | median graphs/s | wall s / epoch |",
    "|---" * 10 + "|",
  ]
  for row in frame.itertuples():
    lines.append(
      f"| {row.dataset} | {row.optimizer} | {row.seed} | {row.test:.4f} | "
      f"{row.best_valid:.4f} | {row.best_epoch} | {row.epochs} | "
      f"{row.median_epoch_s:.1f} | {row.median_graphs_per_s:.0f} | "
      f"{row.wall_s_per_epoch:.1f} |"
    )
  return "\n".join(lines) + "\n"


def plot(runs: dict[Path, dict], path: Path) -> None:
  """Training loss (log scale) and validation metric by epoch."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, (loss_ax, valid_ax) = plt.subplots(1, 2, figsize=(10, 3.8))
  colours: dict[str, str] = {}
  for run in runs.values():
    summary, metrics = run["summary"], run["metrics"]
    optimizer, metric = summary["optimizer"], summary["metric"]
    first = optimizer not in colours
    colour = colours.setdefault(optimizer, COLOURS[len(colours) % len(COLOURS)])
    label = optimizer if first else None
    loss_ax.plot(metrics["epoch"], metrics["train_loss"], color=colour, lw=1)
    valid_ax.plot(
      metrics["epoch"],
      metrics[f"valid_{metric}"],
      color=colour,
      lw=1,
      label=label,
    )
    best = metrics[metrics["epoch"] == summary["best_epoch"]]
    valid_ax.plot(best["epoch"], best[f"valid_{metric}"], "o", color=colour)
  loss_ax.set(xlabel="epoch", ylabel="training loss", yscale="log")
  valid_ax.set(xlabel="epoch", ylabel=f"validation {metric} (dot: best)")
  valid_ax.legend()
  datasets = sorted({run["summary"]["dataset"] for run in runs.values()})
  fig.suptitle(f"{', '.join(datasets)}: {len(runs)} runs, one line per seed")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def main(argv=None) -> pd.DataFrame:
  parser = argparse.ArgumentParser(
    description=__doc__.split("\n")[0],
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  parser.add_argument("runs", nargs="+", type=Path, help="run directories")
  parser.add_argument(
    "--out",
    type=Path,
    required=True,
    help="writes <out>.md and <out>.png",
  )
  args = parser.parse_args(argv)
  argv = sys.argv[1:] if argv is None else list(argv)
  command = shlex.join(["python", "benchmarks/training_curves.py", *argv])
  try:
    runs = {run_dir: load_run(run_dir) for run_dir in args.runs}
  except FileNotFoundError as error:
    parser.error(str(error))
  frame = runs_frame(runs)
  summary = seed_summary(frame)
  text = markdown(frame, summary, command)
  args.out.parent.mkdir(parents=True, exist_ok=True)
  report = Path(f"{args.out}.md")
  report.write_text(text)
  plot(runs, Path(f"{args.out}.png"))
  print(text)
  print(f"wrote {report} and {args.out}.png")
  return frame


if __name__ == "__main__":
  main()
