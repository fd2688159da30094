"""The MoleculeACE report: cells, averages over sets, paired tests."""

import math

import numpy as np
import pytest
from scipy import stats

from benchmarks import moleculeace
from benchmarks import moleculeace_report as report


def record(dataset, optimizer, seed, rmse, cliff):
  return {
    "dataset": f"moleculeace/{dataset}",
    "optimizer": optimizer,
    "hyperparameters": {},
    "seed": seed,
    "test": rmse,
    "subsets": {"cliff_mol": {"rmse": cliff, "molecules": 10}},
    "wall_seconds": 60.0,
    "gradient_passes": 100.0,
    "epochs": 5,
    "run": "/nonexistent",
  }


RNG = np.random.default_rng(0)
SETS = [f"CHEMBL{i}_Ki" for i in range(6)]
ADAM = RNG.uniform(0.6, 1.0, len(SETS))
GRAPHSAM = ADAM + RNG.normal(0.02, 0.03, len(SETS))
RUNS = [
  record(d, o, s, v + 0.01 * s, v + 0.2 + 0.01 * s)
  for o, values in (("adam", ADAM), ("graphsam", GRAPHSAM))
  for d, v in zip(SETS, values, strict=True)
  for s in (0, 1)
]


def test_cells_average_seeds_and_sets():
  cells = report.summarize_cells(RUNS)
  adam = [c for c in cells if c["cell"] == "adam"]
  assert [c["seeds"] for c in adam] == [[0, 1]] * len(SETS)
  assert adam[0]["rmse"] == pytest.approx(ADAM[0] + 0.005)
  assert adam[0]["cliff_rmse"] == pytest.approx(ADAM[0] + 0.205)
  averages = {a["cell"]: a for a in report.averages(cells)}
  assert averages["graphsam"]["rmse"] == pytest.approx(GRAPHSAM.mean() + 0.005)
  assert averages["adam"]["sets"] == len(SETS)


def test_paired_differences_match_scipy():
  pairs = report.paired(report.summarize_cells(RUNS))
  row = next(
    p for p in pairs if p["first"] == "graphsam" and p["metric"] == "rmse"
  )
  diffs = GRAPHSAM - ADAM
  assert row["sets"] == len(SETS)
  assert row["mean"] == pytest.approx(diffs.mean())
  assert row["t_p"] == pytest.approx(stats.ttest_1samp(diffs, 0).pvalue)
  assert row["wilcoxon_p"] == pytest.approx(stats.wilcoxon(diffs).pvalue)
  assert row["first_better"] == int((diffs < 0).sum())
  # SAM has no runs: its pairs are empty, not made up.
  assert all(
    p["sets"] == 0 for p in pairs if "sam" in (p["first"], p["second"])
  )


def test_markdown_shows_both_metrics_per_set():
  built = report.build(
    RUNS,
    RUNS,
    [],
    stem="moleculeace",
    schedule_text="models.configs.default: random 80/10/10 split per seed, x",
    command="python -m benchmarks.moleculeace",
    machine={
      "cpu": "cpu",
      "cpu_count": 2,
      "usable_cpus": 2,
      "load_average": (0.0, 0.0, 0.0),
      "jax": "j",
      "optax": "o",
      "flax": "f",
      "device": "cpu:0",
      "platform": "p",
    },
    written="today",
  )
  text = report.markdown(built)
  cell = report.summarize_cells(RUNS)[0]
  assert (
    f"| CHEMBL0_Ki | {cell['rmse']:.3f} / {cell['cliff_rmse']:.3f} (n=2)"
    in text
  )
  assert "random 80/10/10" not in text
  assert "Runs finished: 24 of 24 asked" in text
  assert math.isnan(report._cliff({"subsets": {}}))


def test_the_script_asks_every_set_by_default():
  assert len(moleculeace.SETS) == 30
  assert moleculeace.SETS[0] == "moleculeace/CHEMBL1862_Ki"


def test_published_methods_are_averaged_over_the_sets_every_cell_finished():
  runs = [
    r
    for r in RUNS
    if not (r["optimizer"] == "graphsam" and "5" in r["dataset"])
  ]
  published = [
    {"dataset": d, "method": m, "rmse": v, "cliff_rmse": v + 1.0}
    for m, base in (("SVM-ECFP", 0.5), ("GCN-GRAPH", 0.9))
    for d, v in zip(SETS, base + 0.1 * np.arange(len(SETS)), strict=True)
  ]
  beside = report.beside_published(report.summarize_cells(runs), published)
  assert beside["sets"] == SETS[:5]  # graphsam never finished CHEMBL5_Ki
  entries = {e["name"]: e for e in beside["entries"]}
  assert entries["SVM-ECFP"]["rmse"] == pytest.approx(0.5 + 0.1 * 2)
  assert entries["SVM-ECFP"]["all_rmse"] == pytest.approx(0.5 + 0.1 * 2.5)
  assert entries["GCN-GRAPH"]["cliff_rmse"] == pytest.approx(1.9 + 0.1 * 2)
  # Adam on the same five sets, not its six: both seeds' mean per set.
  assert entries["Adam"]["rmse"] == pytest.approx(ADAM[:5].mean() + 0.005)
  table = report.published_table(beside)
  assert "| **CoMPT, Adam** (here) |" in table
  assert table.index("SVM-ECFP") < table.index("GCN-GRAPH")  # best first


def test_the_published_reference_covers_every_set_once_per_method():
  rows = report.read_published()
  sets = {s.split("/")[-1] for s in moleculeace.SETS}
  by_method = {}
  for row in rows:
    by_method.setdefault(row["method"], []).append(row["dataset"])
  assert len(by_method) == 8
  assert all(sorted(v) == sorted(sets) for v in by_method.values())


def test_the_per_set_table_shows_the_published_reference_method():
  published = [
    {
      "dataset": "CHEMBL0_Ki",
      "method": "SVM-ECFP",
      "rmse": 0.5,
      "cliff_rmse": 0.7,
    },
    {
      "dataset": "CHEMBL0_Ki",
      "method": "GCN-GRAPH",
      "rmse": 0.9,
      "cliff_rmse": 1.0,
    },
  ]
  cells = report.summarize_cells(RUNS)
  reference = report.beside_published(cells, published)["reference"]
  table = report.set_table(cells, reference)
  assert "SVM-ECFP (published): RMSE / cliff |" in table.splitlines()[0]
  row = next(line for line in table.splitlines() if "CHEMBL0_Ki" in line)
  assert row.endswith("| 0.500 / 0.700 |")
  assert "GCN" not in table
  assert "published" not in report.set_table(report.summarize_cells(RUNS))
