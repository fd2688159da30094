"""The MoleculeACE report: RMSE and cliff RMSE per set and optimizer.

Built from the compact run records of :func:`benchmarks.table1.read_run`
(``subsets["cliff_mol"]`` is the cliff RMSE). Per set and optimizer the
metrics are means over the seeds run; the summary averages them over the
sets an optimizer finished, as MoleculeACE reports. Paired differences
compare two optimizers on the sets both finished (same seeds, same splits
and initializations), with a paired t-test and a Wilcoxon signed-rank test
over sets. Beside them, the published results of eight methods that
MoleculeACE's authors ran on the same splits
(``results/moleculeace_published.csv``), averaged over
the same sets.
"""

from __future__ import annotations

import csv
import math
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from benchmarks import common
from benchmarks import table1_report

CLIFF = "cliff_mol"
# (first, second) optimizer pairs of the paired table: first − second.
PAIRS = (("graphsam", "adam"), ("sam", "adam"), ("graphsam", "sam"))
label = table1_report.pair_label  # "GraphSAM (gamma 1)": one naming
# Published per-set results on the same splits; their source, licence and
# protocol: results/moleculeace_published.md.
PUBLISHED = Path(__file__).parent / "results" / "moleculeace_published.csv"
# The published method beside each set's rows: MoleculeACE's best overall.
REFERENCE_METHOD = "SVM-ECFP"


def _cell_name(entry: dict) -> str:
  return table1_report.cell_name(entry["optimizer"], entry["hyperparameters"])


def _cliff(run: dict) -> float:
  value = (run.get("subsets") or {}).get(CLIFF, {}).get("rmse")
  return math.nan if value is None else float(value)


def summarize_cells(runs: Sequence[dict]) -> list[dict]:
  """Per (set, cell): seeds, mean RMSE, mean cliff RMSE, cost."""
  cells: dict[tuple, list[dict]] = {}
  for run in runs:
    cells.setdefault((run["dataset"], _cell_name(run)), []).append(run)
  out = []
  for (dataset, cell), members in sorted(cells.items()):
    out.append(
      {
        "dataset": dataset,
        "cell": cell,
        "optimizer": members[0]["optimizer"],
        "seeds": sorted(r["seed"] for r in members),
        "rmse": float(np.mean([r["test"] for r in members])),
        "cliff_rmse": float(np.mean([_cliff(r) for r in members])),
        "wall_seconds": float(np.mean([r["wall_seconds"] for r in members])),
        "gradient_passes": float(
          np.mean([r["gradient_passes"] or math.nan for r in members])
        ),
        "epochs": float(np.mean([r["epochs"] for r in members])),
      }
    )
  return out


def averages(cells: Sequence[dict]) -> list[dict]:
  """Per cell: the metrics averaged over the sets it finished."""
  by_cell: dict[str, list[dict]] = {}
  for c in cells:
    by_cell.setdefault(c["cell"], []).append(c)
  return [
    {
      "cell": cell,
      "sets": len(members),
      "rmse": float(np.mean([c["rmse"] for c in members])),
      "cliff_rmse": float(np.nanmean([c["cliff_rmse"] for c in members])),
      "wall_hours": float(sum(c["wall_seconds"] for c in members) / 3600),
      "gradient_passes": float(np.sum([c["gradient_passes"] for c in members])),
    }
    for cell, members in sorted(by_cell.items())
  ]


def paired(cells: Sequence[dict]) -> list[dict]:
  """first − second per metric over the sets both finished, with tests."""
  from scipy import stats

  index = {(c["dataset"], c["cell"]): c for c in cells}
  out = []
  for first, second in PAIRS:
    shared = sorted(
      d
      for d, cell in index
      if cell == first
      and (d, second) in index
      and index[(d, first)]["seeds"] == index[(d, second)]["seeds"]
    )
    for metric in ("rmse", "cliff_rmse"):
      diffs = np.array(
        [index[(d, first)][metric] - index[(d, second)][metric] for d in shared]
      )
      row = {
        "first": first,
        "second": second,
        "metric": metric,
        "sets": len(shared),
        "mean": float(diffs.mean()) if len(diffs) else math.nan,
        "std": float(diffs.std(ddof=1)) if len(diffs) > 1 else math.nan,
        "first_better": int((diffs < 0).sum()),
        "t_p": math.nan,
        "wilcoxon_p": math.nan,
      }
      if len(diffs) > 1 and np.any(diffs != 0):
        row["t_p"] = float(stats.ttest_1samp(diffs, 0.0).pvalue)
        row["wilcoxon_p"] = float(stats.wilcoxon(diffs).pvalue)
      out.append(row)
  return out


def read_published(path: Path = PUBLISHED) -> list[dict]:
  """The published rows: set (no prefix), method, RMSE and cliff RMSE."""
  with open(path, newline="") as f:
    return [
      {
        "dataset": row["dataset"],
        "method": row["method"],
        "rmse": float(row["rmse"]),
        "cliff_rmse": float(row["cliff_rmse"]),
      }
      for row in csv.DictReader(f)
    ]


def published_by_set(
  published: Sequence[dict], method: str = REFERENCE_METHOD
) -> dict[str, dict]:
  """``method``'s published rows by set name."""
  return {r["dataset"]: r for r in published if r["method"] == method}


def beside_published(cells: Sequence[dict], published: Sequence[dict]) -> dict:
  """Every cell here and every published method, averaged over the sets that
  all cells here finished (and the methods over all their sets)."""
  finished: dict[str, set[str]] = {}
  for c in cells:
    finished.setdefault(c["cell"], set()).add(c["dataset"].split("/")[-1])
  sets = sorted(set.intersection(*finished.values())) if finished else []

  def mean(rows: Sequence[dict], metric: str) -> float:
    return float(np.mean([r[metric] for r in rows])) if rows else math.nan

  entries = []
  for cell in sorted(finished):
    rows = [
      c
      for c in cells
      if c["cell"] == cell and c["dataset"].split("/")[-1] in sets
    ]
    entries.append(
      {
        "name": label(cell),
        "here": True,
        "rmse": mean(rows, "rmse"),
        "cliff_rmse": mean(rows, "cliff_rmse"),
      }
    )
  for method in dict.fromkeys(r["method"] for r in published):
    rows = [r for r in published if r["method"] == method]
    on_sets = [r for r in rows if r["dataset"] in sets]
    entries.append(
      {
        "name": method,
        "here": False,
        "rmse": mean(on_sets, "rmse"),
        "cliff_rmse": mean(on_sets, "cliff_rmse"),
        "all_sets": len(rows),
        "all_rmse": mean(rows, "rmse"),
        "all_cliff_rmse": mean(rows, "cliff_rmse"),
      }
    )
  return {
    "sets": sets,
    "entries": entries,
    "reference": published_by_set(published),
  }


def build(runs, asked, failed, **context) -> dict:
  """The report: ``context`` with the runs, cells, averages and pairs."""
  cells = summarize_cells(runs)
  return {
    **context,
    "runs": list(runs),
    "asked": list(asked),
    "failed": list(failed),
    "cells": cells,
    "averages": averages(cells),
    "paired": paired(cells),
    "published": beside_published(cells, read_published()),
    "totals": {
      "runs": len(runs),
      "asked": len(asked),
      "wall_hours": float(sum(r["wall_seconds"] for r in runs) / 3600),
    },
  }


def number(value: float | None, digits: int = 3) -> str:
  """``value`` to ``digits`` decimals; a dash for None, NaN or infinity."""
  return (
    "—" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"
  )


def main_table(cells: Sequence[dict]) -> str:
  """Per optimizer: RMSE and cliff RMSE averaged over its finished sets."""
  return common.markdown_table(
    [
      "Optimizer",
      "sets",
      "RMSE ↓",
      "cliff RMSE ↓",
      "wall h",
      "gradient passes",
    ],
    [
      (
        label(a["cell"]),
        a["sets"],
        number(a["rmse"]),
        number(a["cliff_rmse"]),
        number(a["wall_hours"], 2),
        f"{a['gradient_passes']:,.0f}",
      )
      for a in averages(cells)
    ],
  )


def set_table(cells: Sequence[dict], reference: dict | None = None) -> str:
  """Per set: each optimizer's RMSE / cliff RMSE, and the published
  :data:`REFERENCE_METHOD`'s (``reference``: its rows by set) beside them."""
  names = sorted({c["cell"] for c in cells})
  index = {(c["dataset"], c["cell"]): c for c in cells}
  rows = []
  for dataset in sorted({c["dataset"] for c in cells}):
    name = dataset.split("/")[-1]
    row = [name]
    for cell in names:
      c = index.get((dataset, cell))
      row.append(
        "—"
        if c is None
        else f"{number(c['rmse'])} / {number(c['cliff_rmse'])} "
        f"(n={len(c['seeds'])})"
      )
    if reference:
      r = reference.get(name)
      row.append(
        "—" if r is None else f"{number(r['rmse'])} / {number(r['cliff_rmse'])}"
      )
    rows.append(row)
  headers = ["set", *(f"{label(n)}: RMSE / cliff" for n in names)]
  if reference:
    headers.append(f"{REFERENCE_METHOD} (published): RMSE / cliff")
  return common.markdown_table(headers, rows)


def paired_table(pairs: Sequence[dict]) -> str:
  return common.markdown_table(
    [
      "difference",
      "metric",
      "sets",
      "mean ± std",
      "first better",
      "t p",
      "Wilcoxon p",
    ],
    [
      (
        f"{label(p['first'])} − {label(p['second'])}",
        p["metric"].replace("_", " "),
        p["sets"],
        f"{number(p['mean'], 4)} ± {number(p['std'], 4)}",
        f"{p['first_better']} / {p['sets']}",
        number(p["t_p"]),
        number(p["wilcoxon_p"]),
      )
      for p in pairs
      if p["sets"]
    ],
  )


def published_table(beside: dict) -> str:
  """Ours and the published methods on the same sets, best RMSE first."""
  entries = sorted(beside["entries"], key=lambda e: e["rmse"])
  return common.markdown_table(
    [
      "method",
      f"RMSE ↓, {len(beside['sets'])} sets",
      "cliff RMSE ↓",
      "RMSE, all 30 sets",
      "cliff RMSE, all 30",
    ],
    [
      (
        f"**CoMPT, {e['name']}** (here)" if e["here"] else e["name"],
        number(e["rmse"]),
        number(e["cliff_rmse"]),
        number(e.get("all_rmse", math.nan)),
        number(e.get("all_cliff_rmse", math.nan)),
      )
      for e in entries
    ],
  )


def markdown(report: dict) -> str:
  totals = report["totals"]
  parts = [
    "# MoleculeACE: activity cliffs, Adam against sharpness-aware training",
    "",
    f"Written {report['written']} by `{report['command']}`  ",
    "Training: "
    + report["schedule_text"].replace("random 80/10/10 split per seed, ", "")
    + "; the set's own test part, 10 % of its train part drawn by the seed "
    "for early stopping.  ",
    f"Machine: {common.machine_line(report['machine'])}  ",
    f"Runs finished: {totals['runs']} of {totals['asked']} asked, "
    f"{totals['wall_hours']:.2f} h wall time in all.",
    "",
    "RMSE over all test molecules and over the test molecules that form an "
    "activity cliff (`cliff_mol == 1`), mean over the seeds run, averaged "
    "over the sets each optimizer finished (lower is better). Every run's "
    "test predictions are in `moleculeace_predictions/`: both numbers can "
    "be recomputed from them and the shared data alone.",
    "",
    main_table(report["cells"]),
    "",
    "## Paired differences over sets",
    "",
    "First minus second (negative: the first is better), on the sets both "
    "finished with the same seeds.",
    "",
    paired_table(report["paired"]) if report["cells"] else "(no runs yet)",
    "",
    "## Beside the published methods",
    "",
    "Eight of the 24 methods MoleculeACE's authors ran on the same splits "
    "(`moleculeace_published.md`: source, and their protocol, which tunes "
    "each method on each set by cross-validation; the runs here tune "
    "nothing), averaged over the sets that every optimizer here finished, "
    "and over all 30.",
    "",
    published_table(report["published"])
    if report["cells"]
    else "(no runs yet)",
    "",
    "## Per set",
    "",
    set_table(report["cells"], report["published"]["reference"])
    if report["cells"]
    else "(no runs yet)",
    "",
  ]
  if report["failed"]:
    parts += ["## Diverged", ""] + [
      f"- {f['dataset']} {_cell_name(f)} seed {f['seed']}: {f['error']}"
      for f in report["failed"]
    ]
  return "\n".join(parts) + "\n"


def plot(cells: Sequence[dict], path: Path) -> None:
  """Each optimizer's per-set RMSE and cliff RMSE against Adam's."""
  import matplotlib.pyplot as plt

  index = {(c["dataset"], c["cell"]): c for c in cells}
  fig, axes = plt.subplots(1, 2, figsize=(10, 4.6))
  for ax, metric, title in zip(
    axes, ("rmse", "cliff_rmse"), ("RMSE", "cliff RMSE"), strict=True
  ):
    values = []
    for cell in sorted({c["cell"] for c in cells} - {"adam"}):
      pairs = [
        (index[(d, "adam")][metric], index[(d, cell)][metric])
        for d, name in index
        if name == cell and (d, "adam") in index
      ]
      if pairs:
        x, y = np.array(pairs).T
        ax.scatter(x, y, label=label(cell), s=18)
        values += [*x, *y]
    if values:
      low, high = np.nanmin(values), np.nanmax(values)
      ax.plot([low, high], [low, high], color="grey", lw=0.8)
    ax.set_xlabel(f"Adam {title}")
    ax.set_ylabel(f"{title} (below the line: better than Adam)")
    ax.set_title(f"MoleculeACE, per set: {title}")
    ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def copy_predictions(runs: Sequence[dict], out: Path) -> None:
  """Each run's ``test_predictions.csv`` under ``out``, where it exists."""
  for run in runs:
    source = Path(run["run"]) / "test_predictions.csv"
    if source.exists():
      name = run["dataset"].split("/")[-1]
      target = out / name / f"{_cell_name(run)}-seed{run['seed']}.csv"
      target.parent.mkdir(parents=True, exist_ok=True)
      shutil.copyfile(source, target)


def write(report: dict, out: Path) -> list[Path]:
  """Writes ``<stem>.md``, ``<stem>.png`` and the predictions to ``out``."""
  import matplotlib

  matplotlib.use("Agg")
  stem = report["stem"]
  paths = [out / f"{stem}.md"]
  copy_predictions(report["runs"], out / f"{stem}_predictions")
  if report["cells"]:
    plot(report["cells"], out / f"{stem}.png")
    paths.append(out / f"{stem}.png")
  (out / f"{stem}.md").write_text(markdown(report))
  return paths
