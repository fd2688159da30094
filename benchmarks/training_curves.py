"""Learning curves and the seed summary of finished ``graphsam-train`` runs.

Reads the output directories that ``graphsam-train --out DIR`` (or
``models.train.train_and_evaluate``) writes, ``metrics.json`` and
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
  python -m benchmarks.training_curves runs/bbbp-* \\
    --out benchmarks/results/bbbp_paper_schedule

which writes ``<out>.md`` (both tables, with the command) and ``<out>.png``.
Unfinished runs (no ``summary.json``) are refused by name.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks import common
from benchmarks.common import load_run
from models import allocator

# One colour per optimizer, in order of first appearance.
COLOURS = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple")


def runs_frame(runs: dict[Path, dict]) -> pd.DataFrame:
  """One row per run, sorted by dataset, optimizer and seed."""
  rows = []
  for run_dir, run in runs.items():
    summary, metrics = run["summary"], run["metrics"]
    row = common.summary_row(summary)
    rows.append(
      {
        **row,
        "median_epoch_s": float(np.median(metrics["train_seconds"])),
        "median_graphs_per_s": float(np.median(metrics["graphs_per_s"])),
        "wall_s_per_epoch": row["wall_seconds"] / row["epochs"],
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
  rows = [
    (*key, *common.mean_std(group["test"]), len(group))
    for key, group in frame.groupby(["dataset", "optimizer", "metric"])
  ]
  return pd.DataFrame(
    rows, columns=["dataset", "optimizer", "metric", "mean", "std", "count"]
  )


def markdown(frame: pd.DataFrame, summary: pd.DataFrame, command: str) -> str:
  cells = common.markdown_table(
    ["dataset", "optimizer", "test metric", "mean ± std (ddof 1)", "seeds"],
    (
      (
        row.dataset,
        row.optimizer,
        row.metric,
        common.format_mean_std(row.mean, row.std),
        row.count,
      )
      for row in summary.itertuples()
    ),
  )
  runs = common.runs_table(
    frame.to_dict("records"),
    [
      ("median epoch (s)", lambda r: f"{r['median_epoch_s']:.1f}"),
      ("median graphs/s", lambda r: f"{r['median_graphs_per_s']:.0f}"),
      ("wall s / epoch", lambda r: f"{r['wall_s_per_epoch']:.1f}"),
    ],
  )
  return "\n".join(
    [
      "# Training runs: test metric over seeds",
      "",
      f"Command: `{command}`",
      "",
      cells,
      "",
      runs,
      "",
    ]
  )


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
  allocator.retain_freed_memory()  # before JAX runs anything
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
  command = common.command("training_curves", argv)
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
