"""The report of ``benchmarks.table1``: cells, paired tests, tables, plots.

Everything here is computed from *run records*, the compact per-run
summaries ``benchmarks.table1`` reads from finished run directories and
keeps in ``<out>/table1_<schedule>.json``: ``dataset``, ``optimizer``,
``hyperparameters`` (those that differ from the registry defaults), ``seed``,
``metric``, ``test``, ``best_valid``, ``best_epoch``, ``epochs``,
``wall_seconds``, ``train_seconds``, ``graphs_per_s``, ``compile_seconds``,
``steps_per_epoch`` and ``gradient_passes``. A *cell* is a dataset, an
optimizer and its hyperparameter overrides; its seeds are its runs. Cells at
the registry defaults make the main table; cells with overrides (the ρ
sweep) their own table and plot.
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

import graphsam_optax
from benchmarks import common
from models.configs import default
from models.dataset_registry import get_spec

# Rows of the table, in order, with their display names.
OPTIMIZER_LABELS = {
  "adam": "Adam",
  "sam": "SAM",
  "asam": "ASAM",
  "graphsam": "GraphSAM",
  "graphsam_authors": "GraphSAM (authors' code)",
  "sam_k": "SAM-k",
  "sam_one": "SAM-One",
  "looksam": "LookSAM",
  "ae_sam": "AE-SAM",
  "rst": "RST",
  "msam": "MSAM",
  "gsam": "GSAM",
  "fsam": "F-SAM",
  "late_sam": "late-phase SAM",
}
METRIC_LABELS = {"roc_auc": ("ROC-AUC", "max"), "rmse": ("RMSE", "min")}
# The paper's reported test numbers (reference notes §5; marked (u) there:
# from secondary summaries, unconfirmed against the PDF), as
# {(dataset, optimizer): [(backbone, mean, std or None), ...]}.
PAPER = {
  ("bbbp", "sam"): [("CoMPT", 0.962, 0.033), ("GROVER", 0.926, None)],
  ("bbbp", "graphsam"): [("CoMPT", 0.961, 0.012), ("GROVER", 0.928, None)],
  ("bbbp", "sam_one"): [("CoMPT", 0.922, None)],
  ("tox21", "sam"): [("GROVER", 0.840, None)],
  ("tox21", "graphsam"): [("GROVER", 0.846, None)],
  ("sider", "sam"): [("GROVER", 0.660, None)],
  ("sider", "graphsam"): [("GROVER", 0.665, None)],
  ("clintox", "sam"): [("GROVER", 0.872, None)],
  ("clintox", "graphsam"): [("GROVER", 0.866, None)],
  ("esol", "sam"): [("GROVER", 0.619, None)],
  ("esol", "graphsam"): [("GROVER", 0.625, None)],
}
# How the plot marks the paper's numbers of each backbone.
PAPER_MARKERS = {"CoMPT": "rx", "GROVER": "C7+"}
# Paired comparisons (first minus second) on the same split and
# initialization per seed.
PAIRS = (
  ("graphsam", "sam"),
  ("graphsam", "adam"),
  ("sam", "adam"),
  # The controls (issue 23): one rho schedule for both, so the pair differs
  # only in how the perturbation is obtained; and each against Adam.
  ("graphsam-gamma1", "sam"),
  ("sam-gamma0.5", "graphsam"),
  ("graphsam-gamma1", "adam"),
  ("sam-gamma0.5", "adam"),
  ("graphsam-gamma1", "graphsam"),
  # The newer methods (issue 26): each against Adam, and against the method
  # of its own cost: MSAM (one pass, at the rho it trains with) against
  # GraphSAM, GSAM and F-SAM (two passes) against SAM.
  ("msam-rho0.3", "adam"),
  ("msam-rho0.3", "graphsam"),
  ("gsam", "adam"),
  ("gsam", "sam"),
  ("fsam", "adam"),
  ("fsam", "sam"),
)
# Two-sided level at which a paired difference is called significant.
ALPHA = 0.05
# Fewest seeds a verdict is given on: with two, two nearly equal differences
# make the t-test's p tiny (a partial cell read as a finding).
MIN_SEEDS = 3
# The hyperparameter of the sweep plot.
SWEPT = "rho"


def cell_key(entry: dict) -> tuple:
  """``(dataset, optimizer, overrides)`` of a run record or asked slot."""
  return (
    entry["dataset"],
    entry["optimizer"],
    tuple(sorted(entry["hyperparameters"].items())),
  )


def cell_name(optimizer: str, overrides: dict) -> str:
  """``"graphsam"``, ``"graphsam-rho0.1"``: a directory name."""
  return "-".join(
    [optimizer, *(f"{k}{v:g}" for k, v in sorted(overrides.items()))]
  )


def pair_label(name: str) -> str:
  """A :data:`PAIRS` member in words: ``"GraphSAM (gamma 1)"``."""
  optimizer, *overrides = name.split("-")
  label = OPTIMIZER_LABELS.get(optimizer, optimizer)
  if overrides:
    words = [re.sub(r"^([a-z_]+)", r"\1 ", o) for o in overrides]
    label += f" ({', '.join(words)})"
  return label


def cell_label(optimizer: str, overrides: dict) -> str:
  """``"GraphSAM"``, ``"GraphSAM (rho 0.1)"``: a table row."""
  label = OPTIMIZER_LABELS.get(optimizer, optimizer)
  if overrides:
    label += f" ({', '.join(f'{k} {v:g}' for k, v in overrides.items())})"
  return label


def metric_of(dataset: str) -> str:
  """``"roc_auc"`` or ``"rmse"``, from the dataset registry."""
  return get_spec(dataset).metric


def swept_value(cell: dict) -> float | None:
  """The cell's :data:`SWEPT` (its override, else the registry default).

  None when the optimizer has no such hyperparameter or the cell overrides
  another one too.
  """
  defaults = graphsam_optax.optimizer_spec(cell["optimizer"]).defaults
  if SWEPT not in defaults or not set(cell["hyperparameters"]) <= {SWEPT}:
    return None
  return cell["hyperparameters"].get(SWEPT, defaults[SWEPT])


def wall_of(run: dict) -> float | None:
  """A run's wall seconds over all its invocations, None where unknown.

  ``models.train`` counts a resumed run's earlier invocations since it
  records ``elapsed_seconds``; a run resumed before then has the wall time
  of its last invocation only, told by its training seconds (summed over
  every invocation) exceeding it.
  """
  train_seconds = run.get("train_seconds")
  if train_seconds is not None and train_seconds > run["wall_seconds"]:
    return None
  return run["wall_seconds"]


def _order(key: tuple) -> tuple:
  dataset, optimizer, overrides = key
  datasets = list(default.MODEL_SIZES)  # the paper's order, then ours
  optimizers = list(OPTIMIZER_LABELS)
  return (
    datasets.index(dataset) if dataset in datasets else 99,
    dataset,
    optimizers.index(optimizer) if optimizer in optimizers else 99,
    optimizer,
    overrides,
  )


def summarize_cells(runs: Sequence[dict], asked: Sequence[dict]) -> list:
  """One entry per cell asked or run, in table order.

  Each has the dataset, optimizer, hyperparameters, metric, the seeds
  asked and run, the test values by seed, their mean and sample std (None
  for fewer than two seeds), the median best and last epoch, the mean wall
  time per run over the ``wall_runs`` runs whose :func:`wall_of` is known
  and the mean gradient passes per run (None without runs, and passes None
  where a run does not know them).
  """
  grouped: dict[tuple, dict] = {}
  for slot in asked:
    cell = grouped.setdefault(cell_key(slot), {"asked": set(), "runs": []})
    cell["asked"].add(slot["seed"])
  for run in runs:
    cell = grouped.setdefault(cell_key(run), {"asked": set(), "runs": []})
    cell["runs"].append(run)
  cells = []
  for key in sorted(grouped, key=_order):
    dataset, optimizer, overrides = key
    members = sorted(grouped[key]["runs"], key=lambda r: r["seed"])
    seeds = [r["seed"] for r in members]
    values = [r["test"] for r in members]
    cell = {
      "dataset": dataset,
      "optimizer": optimizer,
      "hyperparameters": dict(overrides),
      "metric": metric_of(dataset),
      "asked_seeds": sorted(grouped[key]["asked"] | set(seeds)),
      "seeds": seeds,
      "test": values,
      "mean": None,
      "std": None,
      "median_best_epoch": None,
      "median_epochs": None,
      "mean_wall_seconds": None,
      "wall_runs": 0,
      "mean_gradient_passes": None,
    }
    if members:
      mean, std = common.mean_std(values)
      passes = [r["gradient_passes"] for r in members]
      walls = [w for w in map(wall_of, members) if w is not None]
      cell.update(
        mean=mean,
        std=None if math.isnan(std) else std,
        median_best_epoch=float(np.median([r["best_epoch"] for r in members])),
        median_epochs=float(np.median([r["epochs"] for r in members])),
        mean_wall_seconds=float(np.mean(walls)) if walls else None,
        wall_runs=len(walls),
        mean_gradient_passes=None if None in passes else float(np.mean(passes)),
      )
    cells.append(cell)
  return cells


def paired_differences(runs: Sequence[dict]) -> list[dict]:
  """:data:`PAIRS` per dataset, over the seeds both cells ran.

  Cells are named as :func:`cell_name` names them (``graphsam-gamma1``).
  Each entry holds the seeds, the differences (first minus second, in
  metric units), their mean and sample std, how many seeds favour the first
  (by the metric's direction), and ``scipy.stats.ttest_rel`` and
  ``wilcoxon`` statistics and two-sided p-values (None below two seeds).
  """
  from scipy import stats

  tests = {
    (
      r["dataset"],
      cell_name(r["optimizer"], r["hyperparameters"]),
      r["seed"],
    ): r["test"]
    for r in runs
  }
  datasets = sorted({d for d, _, _ in tests}, key=lambda d: _order((d, "", ())))
  rows = []
  for dataset in datasets:
    metric = metric_of(dataset)
    sign = 1.0 if METRIC_LABELS[metric][1] == "max" else -1.0
    for first, second in PAIRS:
      seeds = sorted(
        s
        for d, o, s in tests
        if d == dataset and o == first and (d, second, s) in tests
      )
      if not seeds:
        continue
      a = np.array([tests[(dataset, first, s)] for s in seeds])
      b = np.array([tests[(dataset, second, s)] for s in seeds])
      diff = a - b
      mean, std = common.mean_std(diff)
      row = {
        "dataset": dataset,
        "first": first,
        "second": second,
        "metric": metric,
        "seeds": seeds,
        "differences": diff.tolist(),
        "mean": mean,
        "std": None if math.isnan(std) else std,
        "first_better": int(np.sum(sign * diff > 0)),
        "t": None,
        "t_p": None,
        "wilcoxon": None,
        "wilcoxon_p": None,
        "smallest_wilcoxon_p": None,
      }
      if len(seeds) >= 2:
        with warnings.catch_warnings():  # equal pairs: scipy warns
          warnings.simplefilter("ignore", RuntimeWarning)
          warnings.simplefilter("ignore", UserWarning)
          t = stats.ttest_rel(a, b)
          w = stats.wilcoxon(a, b)
        row.update(
          t=float(t.statistic),
          t_p=float(t.pvalue),
          wilcoxon=float(w.statistic),
          wilcoxon_p=float(w.pvalue),
          smallest_wilcoxon_p=2.0 / 2 ** len(seeds),
        )
      rows.append(row)
  return rows


def pooled_signs(paired: Sequence[dict]) -> list[dict]:
  """Each of :data:`PAIRS` over every dataset's paired seeds, by direction.

  Metric units differ across datasets, so only which of the two is better
  per seed is pooled: ``first_better`` of ``untied`` seeds (ties left out),
  with ``scipy.stats.binomtest``'s two-sided exact p at 1/2 (the sign test;
  None without an untied seed). The pooled seeds are independent: each
  dataset's seeds draw their own splits and initializations.
  """
  from scipy import stats

  rows = []
  for first, second in PAIRS:
    rows_of_pair = [
      r for r in paired if (r["first"], r["second"]) == (first, second)
    ]
    if not rows_of_pair:
      continue
    better = sum(r["first_better"] for r in rows_of_pair)
    untied = sum(int(np.count_nonzero(r["differences"])) for r in rows_of_pair)
    rows.append(
      {
        "first": first,
        "second": second,
        "datasets": [r["dataset"] for r in rows_of_pair],
        "seeds": sum(len(r["seeds"]) for r in rows_of_pair),
        "untied": untied,
        "first_better": better,
        "p": float(stats.binomtest(better, untied).pvalue) if untied else None,
      }
    )
  return rows


def _pooled_line(row: dict) -> str:
  return (
    f"{pair_label(row['first'])} better than "
    f"{pair_label(row['second'])} on {row['first_better']} of "
    f"{row['untied']} seeds (sign test p = {_number(row['p'], '.3f')})"
  )


def verdict(row: dict) -> str:
  """A paired row in words, by the paired t-test at :data:`ALPHA`, from
  :data:`MIN_SEEDS` seeds on."""
  if row["t_p"] is None or math.isnan(row["t_p"]):
    return "no test (fewer than two seeds, or equal differences)"
  if len(row["seeds"]) < MIN_SEEDS:
    return f"no verdict on {len(row['seeds'])} seeds (under {MIN_SEEDS})"
  if row["t_p"] >= ALPHA:
    return "no significant difference"
  sign = 1.0 if METRIC_LABELS[row["metric"]][1] == "max" else -1.0
  label = pair_label(row["first"])
  if sign * row["mean"] > 0:
    return f"{label} significantly better"
  return f"{label} significantly worse"


def _number(value, spec: str) -> str:
  if value is None or (isinstance(value, float) and math.isnan(value)):
    return "—"
  return format(value, spec)


def _minutes(seconds: float | None) -> str:
  return _number(None if seconds is None else seconds / 60, ".1f")


def _mean_std(mean, std, digits: int = 3) -> str:
  if mean is None:
    return "—"
  return common.format_mean_std(mean, math.nan if std is None else std, digits)


def _paper(dataset: str, optimizer: str) -> str:
  return (
    "; ".join(
      f"{_mean_std(m, s)} ({b})" for b, m, s in PAPER.get((dataset, optimizer))
    )
    if (dataset, optimizer) in PAPER
    else "—"
  )


def _best(cells: Sequence[dict], dataset: str) -> set[str]:
  """Optimizers with the best mean on ``dataset`` (ties all count)."""
  means = {
    c["optimizer"]: c["mean"]
    for c in cells
    if c["dataset"] == dataset and c["mean"] is not None
  }
  if not means:
    return set()
  pick = max if METRIC_LABELS[metric_of(dataset)][1] == "max" else min
  best = pick(means.values())
  return {o for o, m in means.items() if m == best}


def _column(dataset: str) -> str:
  label, direction = METRIC_LABELS[metric_of(dataset)]
  return f"{dataset} ({label} {'↑' if direction == 'max' else '↓'})"


def _count(cell: dict) -> str:
  """`` (n=k of m)`` for a partial cell, else nothing."""
  n, asked = len(cell["seeds"]), len(cell["asked_seeds"])
  return "" if n == asked else f" (n={n} of {asked})"


def main_table(cells: Sequence[dict]) -> str:
  """Optimizers (registry defaults) by datasets; best mean in bold."""
  main = [c for c in cells if not c["hyperparameters"]]
  datasets = list(dict.fromkeys(c["dataset"] for c in main))
  optimizers = sorted(
    {c["optimizer"] for c in main}, key=lambda o: _order(("", o, ()))
  )
  by_key = {(c["dataset"], c["optimizer"]): c for c in main}
  best = {d: _best(main, d) for d in datasets}
  rows = []
  for o in optimizers:
    row = [OPTIMIZER_LABELS.get(o, o)]
    for d in datasets:
      cell = by_key.get((d, o))
      if cell is None or cell["mean"] is None:
        row.append("—")
        continue
      text = _mean_std(cell["mean"], cell["std"])
      row.append((f"**{text}**" if o in best[d] else text) + _count(cell))
    rows.append(row)
  return common.markdown_table(
    ["Optimizer", *(_column(d) for d in datasets)], rows
  )


def cells_table(cells: Sequence[dict]) -> str:
  """One row per cell: ours, the paper's, epochs, time and passes."""
  return common.markdown_table(
    [
      "dataset",
      "optimizer",
      "seeds run / asked",
      "test mean ± std",
      "paper (u)",
      "best epoch (median)",
      "epochs (median)",
      "wall min / run",
      "gradient passes / run",
    ],
    (
      (
        c["dataset"],
        cell_label(c["optimizer"], c["hyperparameters"]),
        f"{len(c['seeds'])} / {len(c['asked_seeds'])}",
        _mean_std(c["mean"], c["std"]),
        "—" if c["hyperparameters"] else _paper(c["dataset"], c["optimizer"]),
        _number(c["median_best_epoch"], "g"),
        _number(c["median_epochs"], "g"),
        _minutes(c["mean_wall_seconds"])
        + (
          f" (n={c['wall_runs']})"
          if c["seeds"] and c["wall_runs"] < len(c["seeds"])
          else ""
        ),
        _number(c["mean_gradient_passes"], ",.0f"),
      )
      for c in cells
    ),
  )


def paired_table(rows: Sequence[dict]) -> str:
  return common.markdown_table(
    [
      "dataset",
      "difference",
      "seeds",
      "mean ± std",
      "first better on",
      "paired t (p)",
      "Wilcoxon W (p; smallest possible)",
      "verdict",
    ],
    (
      (
        r["dataset"],
        f"{pair_label(r['first'])} − {pair_label(r['second'])}",
        ", ".join(map(str, r["seeds"])),
        _mean_std(r["mean"], r["std"], 4),
        f"{r['first_better']} of {len(r['seeds'])}",
        f"{_number(r['t'], '.2f')} ({_number(r['t_p'], '.3f')})",
        f"{_number(r['wilcoxon'], 'g')} ({_number(r['wilcoxon_p'], '.3f')}; "
        f"{_number(r['smallest_wilcoxon_p'], '.3f')})",
        verdict(r),
      )
      for r in rows
    ),
  )


def pooled_table(rows: Sequence[dict]) -> str:
  return common.markdown_table(
    [
      "difference",
      "datasets",
      "untied seeds",
      "first better on",
      "sign test p",
    ],
    (
      (
        f"{pair_label(r['first'])} − {pair_label(r['second'])}",
        ", ".join(r["datasets"]),
        f"{r['untied']} of {r['seeds']}",
        str(r["first_better"]),
        _number(r["p"], ".3f"),
      )
      for r in rows
    ),
  )


def _wall_minutes(run: dict) -> str:
  if wall_of(run) is None:
    return f"{_minutes(run['wall_seconds'])}†"
  return _minutes(run["wall_seconds"])


def runs_table(runs: Sequence[dict]) -> str:
  def minutes(name):
    return lambda r: _number(None if r[name] is None else r[name] / 60, ".1f")

  return common.runs_table(
    (
      {**r, "optimizer": cell_name(r["optimizer"], r["hyperparameters"])}
      for r in sorted(runs, key=lambda r: (_order(cell_key(r)), r["seed"]))
    ),
    [
      ("wall min", _wall_minutes),
      ("train min", lambda r: _minutes(r["train_seconds"])),
      ("compile s", lambda r: _number(r["compile_seconds"], ".0f")),
      ("graphs/s", lambda r: f"{r['graphs_per_s']:.0f}"),
      ("steps / epoch", lambda r: _number(r["steps_per_epoch"], "d")),
      ("gradient passes", lambda r: _number(r["gradient_passes"], ",.0f")),
    ],
  )


def reading(
  cells: Sequence[dict], paired: Sequence[dict], pooled: Sequence[dict]
) -> list[str]:
  """Per dataset, what the paired tests say, in words; then pooled."""
  lines = []
  for dataset in dict.fromkeys(c["dataset"] for c in cells):
    rows = [r for r in paired if r["dataset"] == dataset]
    if not rows:
      continue
    label, direction = METRIC_LABELS[metric_of(dataset)]
    parts = [
      f"{pair_label(r['first'])} − {pair_label(r['second'])} "
      f"{r['mean']:+.4f} (first better on {r['first_better']} of "
      f"{len(r['seeds'])} seeds, paired t p = {_number(r['t_p'], '.3f')}): "
      f"{verdict(r)}"
      for r in rows
    ]
    beats_adam = [
      pair_label(r["first"])
      for r in rows
      if r["second"] == "adam" and verdict(r).endswith("significantly better")
    ]
    against_adam = [r for r in rows if r["second"] == "adam"]
    if against_adam and not beats_adam:
      names = [pair_label(r["first"]) for r in against_adam]
      parts.append(
        f"{names[0]} does not beat Adam significantly"
        if len(names) == 1
        else f"neither {' nor '.join(names)} beats Adam significantly"
      )
    lines.append(
      f"- {dataset} ({label}, {'higher' if direction == 'max' else 'lower'}"
      f" is better): " + "; ".join(parts) + "."
    )
  if len({d for r in pooled for d in r["datasets"]}) > 1:
    lines.append(
      "- pooled over datasets: " + "; ".join(map(_pooled_line, pooled)) + "."
    )
  return lines


def sweep_table(cells: Sequence[dict]) -> str | None:
  """The swept cells beside their optimizers' defaults (None: no sweep)."""
  swept = {
    (c["dataset"], c["optimizer"])
    for c in cells
    if SWEPT in c["hyperparameters"]
  }
  if not swept:
    return None
  rows = [
    (
      c["dataset"],
      OPTIMIZER_LABELS.get(c["optimizer"], c["optimizer"]),
      f"{swept_value(c):g}" + ("" if c["hyperparameters"] else " (default)"),
      f"{len(c['seeds'])} / {len(c['asked_seeds'])}",
      _mean_std(c["mean"], c["std"]),
    )
    for c in sorted(
      (
        c
        for c in cells
        if (c["dataset"], c["optimizer"]) in swept
        and swept_value(c) is not None
      ),
      key=lambda c: (_order(cell_key(c))[:4], swept_value(c)),
    )
  ]
  return common.markdown_table(
    ["dataset", "optimizer", SWEPT, "seeds run / asked", "test mean ± std"],
    rows,
  )


def _limits(ax, values) -> None:
  finite = [v for v in values if v is not None and np.isfinite(v)]
  if finite:
    low, high = min(finite), max(finite)
    pad = 0.15 * (high - low) + 0.01
    ax.set_ylim(low - pad, high + pad)


def _title(ax, dataset: str) -> None:
  label, direction = METRIC_LABELS[metric_of(dataset)]
  ax.set_title(
    f"{dataset} ({label}, {'higher' if direction == 'max' else 'lower'})"
  )


def plot_cells(cells: Sequence[dict], path: Path) -> None:
  """One panel per dataset: mean ± std bars, seeds as dots, the paper's
  numbers marked by backbone (:data:`PAPER_MARKERS`)."""
  import matplotlib.pyplot as plt

  main = [c for c in cells if not c["hyperparameters"] and c["seeds"]]
  datasets = list(dict.fromkeys(c["dataset"] for c in main))
  fig, axes = plt.subplots(
    1, max(len(datasets), 1), figsize=(3.2 * max(len(datasets), 1), 3.4)
  )
  for ax, dataset in zip(np.atleast_1d(axes), datasets, strict=False):
    here = [c for c in main if c["dataset"] == dataset]
    x = np.arange(len(here))
    ax.bar(
      x,
      [c["mean"] for c in here],
      yerr=[c["std"] or 0.0 for c in here],
      color="#9bb7d4",
      capsize=3,
    )
    paper = []
    for i, c in enumerate(here):
      ax.plot([i] * len(c["test"]), c["test"], "k.", markersize=4)
      for backbone, m, _ in PAPER.get((dataset, c["optimizer"]), []):
        ax.plot(i, m, PAPER_MARKERS[backbone], markersize=7)
        paper.append(m)
    _limits(ax, [v for c in here for v in c["test"]] + paper)
    _title(ax, dataset)
    ax.set_xticks(x, [OPTIMIZER_LABELS.get(c["optimizer"]) for c in here])
    ax.tick_params(axis="x", rotation=30)
  fig.suptitle(
    "Test metric: mean ± std over seeds (dots: seeds; paper: x CoMPT, "
    "+ GROVER, another backbone)"
  )
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def plot_sweep(cells: Sequence[dict], path: Path) -> bool:
  """Test metric against :data:`SWEPT`, with the other optimizers' bands.

  One panel per dataset with a sweep; each swept optimizer is a line
  through its cells' means (error bars: std; dots: seeds), every optimizer
  not swept on that dataset a band of mean ± std. Returns whether a plot
  was written (False: no dataset has two or more values).
  """
  import matplotlib.pyplot as plt

  run = [c for c in cells if c["seeds"]]
  lines: dict[tuple, list] = {}
  for c in run:
    value = swept_value(c)
    if value is not None:
      lines.setdefault((c["dataset"], c["optimizer"]), []).append((value, c))
  lines = {k: sorted(v, key=lambda p: p[0]) for k, v in lines.items()}
  lines = {k: v for k, v in lines.items() if len(v) >= 2}
  datasets = list(dict.fromkeys(d for d, _ in lines))
  if not datasets:
    return False
  fig, axes = plt.subplots(
    1, len(datasets), figsize=(4.5 * len(datasets), 3.6), squeeze=False
  )
  colours = iter(plt.rcParams["axes.prop_cycle"].by_key()["color"])
  colour = {}
  for ax, dataset in zip(axes[0], datasets, strict=True):
    shown = []
    for (d, optimizer), points in lines.items():
      if d != dataset:
        continue
      col = colour.setdefault(optimizer, next(colours))
      xs = [v for v, _ in points]
      ax.errorbar(
        xs,
        [c["mean"] for _, c in points],
        yerr=[c["std"] or 0.0 for _, c in points],
        color=col,
        marker="o",
        capsize=3,
        label=OPTIMIZER_LABELS.get(optimizer, optimizer),
      )
      for v, c in points:
        ax.plot([v] * len(c["test"]), c["test"], ".", color=col, alpha=0.5)
        shown += c["test"]
    for c in run:
      if c["dataset"] != dataset or c["hyperparameters"]:
        continue
      if (dataset, c["optimizer"]) in lines:
        continue
      col = colour.setdefault(c["optimizer"], next(colours))
      std = c["std"] or 0.0
      ax.axhspan(c["mean"] - std, c["mean"] + std, color=col, alpha=0.2)
      ax.axhline(
        c["mean"],
        color=col,
        lw=1,
        label=f"{OPTIMIZER_LABELS.get(c['optimizer'])} (n={len(c['seeds'])})",
      )
      shown += [c["mean"] - std, c["mean"] + std]
    _limits(ax, shown)
    _title(ax, dataset)
    ax.set_xscale("log")
    ticks = sorted(
      {v for (d, _), points in lines.items() if d == dataset for v, _ in points}
    )
    ax.set_xticks(ticks, [f"{v:g}" for v in ticks])
    ax.minorticks_off()
    ax.set_xlabel(f"{SWEPT} (initial radius)")
    ax.legend(fontsize=8)
  fig.suptitle(f"Test metric against {SWEPT}: mean ± std over seeds")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return True


def failed_table(failed: Sequence[dict]) -> str:
  return common.markdown_table(
    ["dataset", "optimizer", "seed", "what happened"],
    (
      (
        f["dataset"],
        cell_name(f["optimizer"], f["hyperparameters"]),
        f["seed"],
        f["error"],
      )
      for f in failed
    ),
  )


def markdown(report: dict) -> str:
  """The report's Markdown, from what :func:`build` returns."""
  totals = report["totals"]
  stem = report["stem"]
  lines = [
    f"# Table 1 on {report['schedule_name']}: test metric over seeds",
    "",
    f"Schedule: {report['schedule_text']}.  ",
    f"Last command: `{report['command']}`  ",
    f"Machine: {common.machine_line(report['machine'])}  ",
    f"Runs finished: {len(report['runs'])} of {totals['asked']} asked"
    + (f", {len(report['failed'])} diverged" if report["failed"] else "")
    + f"; compute: {totals['wall_seconds'] / 3600:.2f} h wall time (sum of "
    "the runs' wall_seconds"
    + (
      f"; {totals['partial_walls']} resumed runs count their training "
      "seconds, a lower bound"
      if totals["partial_walls"]
      else ""
    )
    + f"), {totals['train_seconds'] / 3600:.2f} h in "
    f"training epochs; written {report['written']}.",
    "",
    "Best mean per dataset in bold (ROC-AUC higher is better, RMSE lower). "
    "Mean ± sample std (ddof 1) over seeds; (n=k of m) marks a cell with k "
    "of its m asked seeds finished, — a cell with none. Each seed has its "
    "own random split and initialization, the same for every optimizer.",
    "",
    main_table(report["cells"]),
    "",
    "## Per cell, beside the paper",
    "",
    "The paper's numbers (u) are from the reference notes §5: secondary "
    "summaries, unconfirmed against the PDF. Only BBBP's are CoMPT runs; "
    "the others are the paper's GROVER (no pre-training) runs, another "
    "backbone, for scale only. Gradient passes per run are the registry's "
    "expected passes per step (`OptimizerSpec.mean_passes`) × steps per "
    "epoch × epochs trained: exact for Adam, SAM and GraphSAM (one anchor "
    "pass per epoch), — where they depend on the data (AE-SAM, RST with a "
    "schedule). Wall time per run is its summary's wall_seconds "
    "(compilation, evaluation and checkpoints included, over every "
    "invocation of a resumed run); (n=k) marks a mean over the k runs "
    "whose wall time is known, leaving out runs resumed before wall time "
    "was kept across invocations († in the runs table: their last "
    "invocation's).",
    "",
    cells_table(report["cells"]),
    "",
    "## Paired differences",
    "",
    "First minus second on the seeds both ran, in metric units (ROC-AUC: "
    "positive favours the first; RMSE: negative does). Paired t-test and "
    "Wilcoxon signed-rank test (scipy, two-sided); with n seeds the "
    "Wilcoxon p cannot fall below 2/2^n (0.25 for 3 seeds, 0.0625 for 5), "
    f"so the verdict uses the t-test at {ALPHA}. With 3-5 seeds, no "
    "significant difference is not evidence of equality.",
    "",
    paired_table(report["paired"]) if report["paired"] else "No pairs yet.",
    "",
    "## Pooled over datasets",
    "",
    "With 3-5 seeds per dataset no single test above has much power. "
    "Pooled over datasets, the seeds on which the first optimizer is "
    "better (metric units differ, so only the direction is pooled; ties "
    "left out) against an even chance: exact two-sided sign test "
    "(scipy binomtest). It asks whether one optimizer wins more often, not "
    "by how much.",
    "",
    pooled_table(report["pooled"]) if report["pooled"] else "No pairs yet.",
    "",
    "## Reading",
    "",
    *(
      reading(report["cells"], report["paired"], report["pooled"])
      or ["No pairs yet."]
    ),
    "",
  ]
  sweep = sweep_table(report["cells"])
  if sweep is not None:
    lines += [f"## {SWEPT} sweep", "", sweep, ""]
    if report["sweep_plot"]:
      lines += [f"![test metric against {SWEPT}]({stem}_{SWEPT}.png)", ""]
  if report["failed"]:
    lines += [
      "## Diverged runs",
      "",
      "Not rerun by later commands (pass --retry-failed to retry).",
      "",
      failed_table(report["failed"]),
      "",
    ]
  lines += ["## Runs", "", runs_table(report["runs"]), ""]
  if report["runs"]:
    lines += [f"![test metric per cell]({stem}.png)", ""]
  return "\n".join(lines)


def build(runs, asked, failed, **context) -> dict:
  """The report: ``context`` (``stem``, ``schedule_name``,
  ``schedule_text``, ``command``, ``machine``, ``written``) with the runs,
  cells, pairs and totals."""
  cells = summarize_cells(runs, asked)
  paired = paired_differences(runs)
  return {
    **context,
    "runs": list(runs),
    "asked": list(asked),
    "failed": list(failed),
    "cells": cells,
    "paired": paired,
    "pooled": pooled_signs(paired),
    "totals": {
      "asked": sum(len(c["asked_seeds"]) for c in cells),
      "wall_seconds": float(
        sum(
          r["train_seconds"] if wall_of(r) is None else r["wall_seconds"]
          for r in runs
        )
      ),
      "partial_walls": sum(wall_of(r) is None for r in runs),
      "train_seconds": float(
        sum(r["train_seconds"] for r in runs if r["train_seconds"] is not None)
      ),
    },
    "sweep_plot": False,
  }


def write(report: dict, out: Path) -> list[Path]:
  """Writes ``<stem>.md`` and the plots to ``out``; returns the paths."""
  import matplotlib

  matplotlib.use("Agg")
  stem = report["stem"]
  written = []
  if report["runs"]:
    plot_cells(report["cells"], out / f"{stem}.png")
    written.append(out / f"{stem}.png")
  report["sweep_plot"] = plot_sweep(
    report["cells"], out / f"{stem}_{SWEPT}.png"
  )
  if report["sweep_plot"]:
    written.append(out / f"{stem}_{SWEPT}.png")
  (out / f"{stem}.md").write_text(markdown(report))
  return [out / f"{stem}.md", *written]
