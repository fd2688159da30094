"""benchmarks/table1.py: the grid driver, the stored results and the report.

The report tests read fake finished run directories under
``tests/benchmarks/data/table1_runs`` (laid out as the grid lays out its
runs) and check every number against NumPy and SciPy on those files. The
driver tests train with a stand-in that copies those directories, except
one real 2-run grid (slow).
"""

import json
import math
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from benchmarks import table1
from models import train

FIXTURES = Path(__file__).parent / "data" / "table1_runs"
PAPER = FIXTURES / "paper_schedule"
STEPS_PER_PASS = {"adam": 1.0, "sam": 2.0}  # GraphSAM: one more per epoch


def fixture_runs() -> dict:
  """``{(dataset, cell): {seed: (summary, steps per epoch)}}``, finished."""
  runs = {}
  for summary_file in sorted(PAPER.glob("*/*/seed*/summary.json")):
    run = summary_file.parent
    summary = json.loads(summary_file.read_text())
    train_rows = json.loads((run / "split.json").read_text())["train"]
    cell = runs.setdefault((run.parts[-3], run.parts[-2]), {})
    cell[summary["seed"]] = (summary, len(train_rows) // 32)
  return runs


def metric_value(summary: dict) -> float:
  return summary[f"test_{summary['metric']}"]


def gradient_passes(summary: dict, steps: int) -> float:
  """Passes of a run: GraphSAM one more per epoch than Adam, SAM twice."""
  optimizer = summary["optimizer"]
  if optimizer == "graphsam":
    return (steps + 1) * summary["epochs"]
  return STEPS_PER_PASS[optimizer] * steps * summary["epochs"]


def main(capsys, *argv) -> tuple[dict, str]:
  report = table1.main(list(argv))
  return report, capsys.readouterr().out


def report_from_store(capsys, out: Path) -> tuple[dict, str]:
  """The report of ``out``'s stored results alone (no run directories)."""
  return main(
    capsys, "--report-only", "--runs", str(out / "no"), "--out", str(out)
  )


@pytest.fixture(scope="module")
def fixture_report(tmp_path_factory):
  out = tmp_path_factory.mktemp("report")
  report = table1.main(
    ["--report-only", "--runs", str(FIXTURES), "--out", str(out)]
    + ["--datasets", "bbbp", "esol"]
  )
  return report, out


def test_cells_are_the_mean_and_sample_std_of_the_seeds(fixture_report):
  report, out = fixture_report
  cells = {
    (
      c["dataset"],
      table1.report_lib.cell_name(c["optimizer"], c["hyperparameters"]),
    ): c
    for c in report["cells"]
  }
  expected = fixture_runs()
  assert set(cells) == set(expected)
  text = (out / "table1_paper_schedule.md").read_text()
  for key, seeds in expected.items():
    values = np.array([metric_value(s) for s, _ in seeds.values()])
    cell = cells[key]
    assert cell["seeds"] == sorted(seeds)
    assert cell["mean"] == pytest.approx(values.mean())
    assert cell["std"] == pytest.approx(values.std(ddof=1))
    assert f"{values.mean():.3f} ± {values.std(ddof=1):.3f}" in text
    runs = list(seeds.values())
    assert cell["mean_gradient_passes"] == pytest.approx(
      np.mean([gradient_passes(*run) for run in runs])
    )
    assert cell["mean_wall_seconds"] == pytest.approx(
      np.mean([summary["wall_seconds"] for summary, _ in runs])
    )
    assert cell["median_epochs"] == np.median([s["epochs"] for s, _ in runs])
  # bbbp GraphSAM: seed 2 was killed, so the cell is partial.
  assert "| GraphSAM | " in text and "(n=2 of 3)" in text
  assert cells[("bbbp", "graphsam")]["asked_seeds"] == [0, 1, 2]
  # The run of another schedule (patience 4) is not in the report.
  assert all(r["seed"] != 0 or r["test"] != 0.9012 for r in report["runs"])


def test_paired_tests_match_scipy(fixture_report):
  report, _ = fixture_report
  expected = fixture_runs()
  rows = {(r["dataset"], r["first"], r["second"]): r for r in report["paired"]}
  assert set(rows) == {
    (d, a, b)
    for d in ("bbbp", "esol")
    for a, b in (("graphsam", "sam"), ("graphsam", "adam"), ("sam", "adam"))
  }
  for (dataset, first, second), row in rows.items():
    a_runs, b_runs = expected[(dataset, first)], expected[(dataset, second)]
    seeds = sorted(set(a_runs) & set(b_runs))
    a = np.array([metric_value(a_runs[s][0]) for s in seeds])
    b = np.array([metric_value(b_runs[s][0]) for s in seeds])
    assert row["seeds"] == seeds
    assert row["mean"] == pytest.approx(np.mean(a - b))
    assert row["std"] == pytest.approx(np.std(a - b, ddof=1))
    t, w = stats.ttest_rel(a, b), stats.wilcoxon(a, b)
    assert row["t"] == pytest.approx(t.statistic)
    assert row["t_p"] == pytest.approx(t.pvalue)
    assert row["wilcoxon"] == pytest.approx(w.statistic)
    assert row["wilcoxon_p"] == pytest.approx(w.pvalue)
    better = (a - b > 0) if dataset == "bbbp" else (a - b < 0)
    assert row["first_better"] == int(better.sum())
    significant = t.pvalue < 0.05 and len(seeds) >= 3
    assert ("significantly" in table1.report_lib.verdict(row)) == significant


def test_pooled_sign_test_counts_wins_over_datasets_by_direction(
  fixture_report,
):
  report, out = fixture_report
  expected = fixture_runs()
  pooled = {(r["first"], r["second"]): r for r in report["pooled"]}
  assert set(pooled) == {
    ("graphsam", "sam"),
    ("graphsam", "adam"),
    ("sam", "adam"),
  }
  text = (out / "table1_paper_schedule.md").read_text()
  for (first, second), row in pooled.items():
    wins = untied = seeds = 0
    for dataset in ("bbbp", "esol"):
      a_runs, b_runs = expected[(dataset, first)], expected[(dataset, second)]
      for seed in set(a_runs) & set(b_runs):
        a, b = metric_value(a_runs[seed][0]), metric_value(b_runs[seed][0])
        seeds += 1
        untied += a != b
        wins += (a > b) if dataset == "bbbp" else (a < b)
    assert (row["first_better"], row["untied"], row["seeds"]) == (
      wins,
      untied,
      seeds,
    )
    assert row["datasets"] == ["bbbp", "esol"]
    assert row["p"] == pytest.approx(stats.binomtest(wins, untied).pvalue)
  # ESOL is an RMSE: GraphSAM's three lower errors than Adam's are wins, so
  # pooling by the sign of the difference alone would count 1, not 4.
  assert pooled[("graphsam", "adam")]["first_better"] == 4
  row = pooled[("graphsam", "sam")]
  assert "## Pooled over datasets" in text
  assert (
    f"- pooled over datasets: GraphSAM better than SAM on {row['first_better']}"
    f" of {row['untied']} seeds (sign test p = {row['p']:.3f})"
  ) in text


def test_runs_carry_gradient_passes_and_the_grid_its_compute(fixture_report):
  report, out = fixture_report
  expected = fixture_runs()
  for run in report["runs"]:
    cell = table1.report_lib.cell_name(run["optimizer"], run["hyperparameters"])
    summary, steps = expected[(run["dataset"], cell)][run["seed"]]
    assert run["steps_per_epoch"] == steps
    assert run["gradient_passes"] == pytest.approx(
      gradient_passes(summary, steps)
    )
  walls = [
    s["wall_seconds"] for seeds in expected.values() for s, _ in seeds.values()
  ]
  assert report["totals"]["wall_seconds"] == pytest.approx(sum(walls))
  text = (out / "table1_paper_schedule.md").read_text()
  assert f"{sum(walls) / 3600:.2f} h wall time" in text
  assert f"Runs finished: {len(walls)} of {len(walls) + 1} asked" in text


def test_runs_resumed_before_wall_time_was_kept_leave_the_wall_means():
  report_lib = table1.report_lib

  def run(seed, wall, train_seconds):
    return {
      "dataset": "bbbp",
      "optimizer": "sam",
      "hyperparameters": {},
      "seed": seed,
      "metric": "roc_auc",
      "test": 0.9,
      "best_valid": 0.9,
      "best_epoch": 5,
      "epochs": 10,
      "wall_seconds": wall,
      "train_seconds": train_seconds,
      "graphs_per_s": 100.0,
      "compile_seconds": 1.0,
      "steps_per_epoch": 5,
      "gradient_passes": 100.0,
    }

  # Seed 2 resumed under the old engine: 210 s of training, 60 s of wall.
  runs = [run(0, 300.0, 250.0), run(1, 500.0, 420.0), run(2, 60.0, 210.0)]
  assert [report_lib.wall_of(r) for r in runs] == [300.0, 500.0, None]
  report = report_lib.build(runs, [], [], stem="t")
  (cell,) = report["cells"]
  assert cell["mean_wall_seconds"] == 400.0 and cell["wall_runs"] == 2
  assert "6.7 (n=2)" in report_lib.cells_table(report["cells"])
  assert "1.0†" in report_lib.runs_table(runs)
  assert report["totals"]["wall_seconds"] == 300.0 + 500.0 + 210.0
  assert report["totals"]["partial_walls"] == 1


def test_rho_sweep_table_and_plot(fixture_report):
  report, out = fixture_report
  text = (out / "table1_paper_schedule.md").read_text()
  expected = fixture_runs()
  for cell, rho in (
    ("graphsam-rho0.01", "0.01"),
    ("graphsam", "0.05 (default)"),
    ("graphsam-rho0.2", "0.2"),
  ):
    values = np.array(
      [metric_value(s) for s, _ in expected[("esol", cell)].values()]
    )
    mean, std = values.mean(), values.std(ddof=1)
    assert (
      f"| esol | GraphSAM | {rho} | 3 / 3 | {mean:.3f} ± {std:.3f} |" in text
    )
  assert "![test metric against rho](table1_paper_schedule_rho.png)" in text
  assert (out / "table1_paper_schedule_rho.png").stat().st_size > 10_000
  assert (out / "table1_paper_schedule.png").stat().st_size > 10_000


def test_stored_results_rebuild_the_report_without_run_directories(
  fixture_report, tmp_path, capsys
):
  report, out = fixture_report
  shutil.copy(out / "table1_paper_schedule.json", tmp_path)
  again, _ = report_from_store(capsys, tmp_path)
  assert again["cells"] == report["cells"]
  assert again["paired"] == report["paired"]
  stored = json.loads((tmp_path / "table1_paper_schedule.json").read_text())
  assert len(stored["runs"]) == len(report["runs"])


def test_a_stored_run_of_another_configuration_is_dropped_by_name(
  fixture_report, tmp_path, capsys
):
  _, out = fixture_report
  stored = json.loads((out / "table1_paper_schedule.json").read_text())
  changed = next(r for r in stored["runs"] if r["dataset"] == "bbbp")
  changed["config"]["patience"] = 5
  (tmp_path / "table1_paper_schedule.json").write_text(json.dumps(stored))
  again, printed = report_from_store(capsys, tmp_path)
  assert len(again["runs"]) == len(stored["runs"]) - 1
  name = f"bbbp {changed['optimizer']} seed {changed['seed']}"
  assert f"dropping the stored run {name}: patience 5 there, 20 here" in printed


def test_a_partial_grid_is_reported_as_partial(tmp_path, capsys):
  report, _ = main(
    capsys,
    "--report-only",
    "--runs",
    str(FIXTURES),
    "--out",
    str(tmp_path),
    "--datasets",
    "bbbp",
    "clintox",
    "--optimizers",
    "adam",
    "sam",
    "--seeds",
    "0",
    "1",
    "2",
    "3",
  )
  text = (tmp_path / "table1_paper_schedule.md").read_text()
  assert "| Optimizer | bbbp (ROC-AUC ↑) | clintox (ROC-AUC ↑) |" in text
  table = text.split("| Optimizer |")[1].split("\n\n")[0]
  assert "| Adam | " in table and "(n=3 of 4) | — |" in table
  finished = len(report["runs"])
  # bbbp adam/sam seed 3 and clintox adam/sam seeds 0-3 are missing (bbbp
  # GraphSAM's killed seed 2 is not asked here).
  assert f"Runs finished: {finished} of {finished + 2 + 8} asked" in text


def copy_fixture(calls):
  """A stand-in for train_and_evaluate: copies the fixture run, if finished.

  Records (dataset, optimizer, hyperparameters, seed, pid) per call; a
  fixture without summary.json diverges (NonFiniteLossError).
  """

  def fake(config, workdir, **kwargs):
    del kwargs
    calls.append(
      (
        config.dataset,
        config.optimizer,
        dict(config.hyperparameters),
        config.seed,
        os.getpid(),
      )
    )
    cell = table1.report_lib.cell_name(
      config.optimizer, dict(config.hyperparameters)
    )
    source = PAPER / config.dataset / cell / f"seed{config.seed}"
    if not (source / "summary.json").exists():
      raise train.NonFiniteLossError(3, 5, math.nan)
    shutil.copytree(source, workdir)

  return fake


@pytest.fixture
def calls(monkeypatch) -> list:
  """train_and_evaluate replaced by :func:`copy_fixture`; its calls."""
  made = []
  monkeypatch.setattr(train, "train_and_evaluate", copy_fixture(made))
  return made


def places(tmp_path, *roots) -> list[str]:
  """Runs under ``tmp_path/runs`` (then ``roots``), the report in ``out``."""
  return [
    "--runs",
    str(tmp_path / "runs"),
    *map(str, roots),
    "--out",
    str(tmp_path / "out"),
    "--compile-cache",
    "none",
  ]


def test_grid_trains_in_order_in_one_process_and_resumes(
  tmp_path, capsys, calls
):
  argv = "--datasets esol --optimizers adam sam --seeds 0 1".split()
  argv += places(tmp_path)
  report, printed = main(capsys, *argv)
  assert [c[:4] for c in calls] == [
    ("esol", "adam", {}, 0),
    ("esol", "sam", {}, 0),
    ("esol", "adam", {}, 1),
    ("esol", "sam", {}, 1),
  ]
  assert {c[4] for c in calls} == {os.getpid()}
  for optimizer in ("adam", "sam"):
    for seed in (0, 1):
      run = tmp_path / "runs" / "paper_schedule" / "esol" / optimizer
      assert (run / f"seed{seed}" / "summary.json").exists()
  assert len(report["runs"]) == 4
  assert "[4/4] esol sam seed 1: test rmse " in printed

  calls.clear()
  _, printed = main(capsys, *argv)
  assert calls == []
  assert "4 of this command's 4 runs done or diverged, 0 to train" in printed


def test_runs_found_under_other_roots_are_not_retrained_and_divergence_is_kept(
  tmp_path, capsys, calls
):
  argv = "--datasets bbbp --seeds 0 1 2".split() + places(tmp_path, FIXTURES)
  report, printed = main(capsys, *argv)
  # Only bbbp GraphSAM seed 2 is missing; its fixture was killed.
  assert [c[:4] for c in calls] == [("bbbp", "graphsam", {}, 2)]
  assert (
    f"skipping the unfinished run {PAPER / 'bbbp' / 'graphsam' / 'seed2'}"
    in printed
  )
  assert (
    "[1/1] bbbp graphsam seed 2: diverged (the training loss is nan" in printed
  )
  assert [(f["optimizer"], f["seed"]) for f in report["failed"]] == [
    ("graphsam", 2)
  ]
  text = (tmp_path / "out" / "table1_paper_schedule.md").read_text()
  assert (
    "## Diverged runs" in text
    and "| bbbp | graphsam | 2 | the training loss is nan" in text
  )

  calls.clear()
  main(capsys, *argv)
  assert calls == []
  main(capsys, *argv, "--retry-failed")
  assert [c[:4] for c in calls] == [("bbbp", "graphsam", {}, 2)]


def test_a_run_directory_of_another_configuration_stops_the_grid_by_name(
  tmp_path, capsys
):
  # A BBBP run where esol's would go; the real train_and_evaluate checks
  # the directory before any work.
  taken = tmp_path / "runs" / "paper_schedule" / "esol" / "adam" / "seed0"
  shutil.copytree(PAPER / "bbbp" / "adam" / "seed0", taken)
  with pytest.raises(SystemExit) as exit_info:
    table1.main(
      "--datasets esol --optimizers adam --seeds 0".split() + places(tmp_path)
    )
  message = str(exit_info.value)
  assert message.startswith("[1/1] esol adam seed 0: ")
  assert f"{taken} holds a run of another configuration" in message
  assert "pass a new first --runs root" in message


def test_rho_adds_a_cell_per_value_where_the_optimizer_has_one():
  args = table1.parse_args(
    table1.make_parser(),
    [
      "--datasets",
      "esol",
      "--optimizers",
      "adam",
      "graphsam",
      "--seeds",
      "0",
      "--rho",
      "0.01",
      "0.05",
      "0.2",
    ],
  )
  assert [
    (s["optimizer"], s["hyperparameters"]) for s in table1.grid(args)
  ] == [
    ("adam", {}),
    ("graphsam", {"rho": 0.01}),
    ("graphsam", {}),  # 0.05 is the registry default: the plain cell
    ("graphsam", {"rho": 0.2}),
  ]


def test_gamma_adds_the_controls_cells():
  # The controls of the paper-schedule report: GraphSAM with rho kept
  # (gamma 1) and SAM on GraphSAM's decaying rho (gamma 0.5).
  args = table1.parse_args(
    table1.make_parser(),
    "--datasets esol --optimizers adam graphsam sam --seeds 0 --gamma 1 "
    "0.5".split(),
  )
  assert [
    (s["optimizer"], s["hyperparameters"]) for s in table1.grid(args)
  ] == [
    ("adam", {}),
    ("graphsam", {"gamma": 1.0}),
    ("graphsam", {}),  # 0.5 is GraphSAM's default
    ("sam", {}),  # 1 is SAM's default
    ("sam", {"gamma": 0.5}),
  ]
  assert table1.report_lib.cell_name("sam", {"gamma": 0.5}) == "sam-gamma0.5"


@pytest.mark.parametrize(
  ("argv", "tag"),
  [
    ([], "paper_schedule"),
    (["--epochs", "150", "--patience", "20"], "paper_schedule"),
    (
      [
        "--epochs",
        "4",
        "--patience",
        "4",
        "--warmup-epochs",
        "1",
        "--lr-decay-epochs",
        "4",
      ],
      "epochs4-patience4-warmup1-decay4",
    ),
    (["--config", "test", "--epochs", "1"], "test-epochs1"),
  ],
)
def test_schedule_names(argv, tag):
  args = table1.parse_args(table1.make_parser(), ["--report-only", *argv])
  assert table1.Schedule.from_args(args).tag == tag


@pytest.mark.parametrize(
  ("argv", "message"),
  [
    ([], "argument --datasets: name the datasets to train"),
    (
      ["--datasets", "bbbp", "--optimizers", "adam", "--rho", "0.1"],
      "argument --rho: none of --optimizers adam has a rho",
    ),
    (["--datasets", "bbbp", "--rho", "0"], "argument --rho: must be > 0"),
    (
      ["--datasets", "bbbp", "--gamma", "2"],
      "argument --gamma: must be in (0, 1]",
    ),
    (
      ["--datasets", "bbbp", "--optimizers", "adam", "--gamma", "1"],
      "argument --gamma: none of --optimizers adam has a gamma",
    ),
    (["--datasets", "bbbp", "--seeds", "-1"], "argument --seeds: seeds must"),
  ],
)
def test_bad_arguments_are_named(argv, message, capsys):
  with pytest.raises(SystemExit) as exit_info:
    table1.parse_args(table1.make_parser(), argv)
  assert exit_info.value.code == 2
  assert message in capsys.readouterr().err


def test_unreadable_stored_results_name_out_and_the_remedy(tmp_path, capsys):
  (tmp_path / "table1_paper_schedule.json").write_text("{not json")
  with pytest.raises(SystemExit):
    table1.main(["--report-only", "--out", str(tmp_path)])
  err = capsys.readouterr().err
  assert "argument --out: cannot read the stored results" in err
  assert "git checkout --" in err


@pytest.mark.slow
def test_two_real_runs_train_in_this_process_and_are_not_rerun(
  tmp_path, capsys, monkeypatch
):
  pids = []
  real = train.train_and_evaluate

  def spy(*args, **kwargs):
    pids.append(os.getpid())
    return real(*args, **kwargs)

  monkeypatch.setattr(train, "train_and_evaluate", spy)
  argv = (
    "--config test --datasets nci5k-tpsa --optimizers adam sam --seeds 0 "
    "--epochs 1 --max-molecules 32"
  ).split() + places(tmp_path)
  report, printed = main(capsys, *argv)
  assert pids == [os.getpid()] * 2
  runs = {r["optimizer"]: r for r in report["runs"]}
  assert set(runs) == {"adam", "sam"}
  for optimizer, run in runs.items():
    path = tmp_path / "runs" / "test-epochs1-mols32" / "nci5k-tpsa" / optimizer
    summary = json.loads((path / "seed0" / "summary.json").read_text())
    assert run["test"] == summary["test_rmse"] and run["epochs"] == 1
    assert (
      run["gradient_passes"]
      == STEPS_PER_PASS[optimizer] * run["steps_per_epoch"]
    )
  text = (tmp_path / "out" / "table1_test-epochs1-mols32.md").read_text()
  assert "Runs finished: 2 of 2 asked" in text

  pids.clear()
  _, printed = main(capsys, *argv)
  assert pids == []
  assert "2 of this command's 2 runs done or diverged, 0 to train" in printed


def test_the_controls_are_paired_with_sam_graphsam_and_adam():
  # GraphSAM with rho kept against SAM (one rho for both), SAM on GraphSAM's
  # decaying rho against GraphSAM, each against Adam, on the same seeds.
  def run(optimizer, hyperparameters, seed, test):
    return {
      "dataset": "esol",
      "optimizer": optimizer,
      "hyperparameters": hyperparameters,
      "seed": seed,
      "test": test,
    }

  runs = [
    run(o, hp, s, base + 0.01 * s)
    for o, hp, base in (
      ("adam", {}, 0.50),
      ("sam", {}, 0.60),
      ("graphsam", {}, 0.55),
      ("graphsam", {"gamma": 1.0}, 0.57),
      ("sam", {"gamma": 0.5}, 0.52),
    )
    for s in (0, 1, 2)
  ]
  rows = {
    (r["first"], r["second"]): r
    for r in table1.report_lib.paired_differences(runs)
  }
  assert rows[("graphsam-gamma1", "sam")]["mean"] == pytest.approx(-0.03)
  assert rows[("graphsam-gamma1", "sam")]["first_better"] == 3  # RMSE
  assert rows[("sam-gamma0.5", "graphsam")]["mean"] == pytest.approx(-0.03)
  assert rows[("sam-gamma0.5", "adam")]["mean"] == pytest.approx(0.02)
  assert rows[("graphsam-gamma1", "graphsam")]["seeds"] == [0, 1, 2]
  text = table1.report_lib.paired_table(list(rows.values()))
  assert "| esol | GraphSAM (gamma 1) − SAM | 0, 1, 2 |" in text


def test_merge_folds_another_worktrees_store_into_this_report(
  fixture_report, tmp_path, capsys
):
  report, out = fixture_report
  stored = json.loads((out / "table1_paper_schedule.json").read_text())
  bbbp = [r for r in stored["runs"] if r["dataset"] == "bbbp"]
  here, there = tmp_path / "here", tmp_path / "there"
  for folder, runs in ((here, bbbp), (there, stored["runs"])):
    folder.mkdir()
    (folder / "table1_paper_schedule.json").write_text(
      json.dumps({**stored, "runs": runs})
    )
  merged, _ = main(
    capsys,
    "--report-only",
    "--runs",
    str(tmp_path / "no"),
    "--out",
    str(here),
    "--merge",
    str(there / "table1_paper_schedule.json"),
  )
  assert merged["cells"] == report["cells"]
  kept = json.loads((here / "table1_paper_schedule.json").read_text())
  assert len(kept["runs"]) == len(stored["runs"])  # no slot twice
  with pytest.raises(SystemExit):
    table1.main(
      ["--report-only", "--out", str(here), "--merge", str(tmp_path / "x")]
    )
  assert "argument --merge: " in capsys.readouterr().err


def test_the_newer_methods_are_paired_with_adam_and_their_cost_peer():
  runs = [
    {
      "dataset": "esol",
      "optimizer": o,
      "hyperparameters": hp,
      "seed": s,
      "test": base + 0.01 * s,
    }
    for o, hp, base in (
      ("adam", {}, 0.50),
      ("sam", {}, 0.60),
      ("graphsam", {}, 0.55),
      ("msam", {"rho": 0.3}, 0.56),
      ("gsam", {}, 0.58),
      ("fsam", {}, 0.62),
    )
    for s in (0, 1, 2)
  ]
  rows = {
    (r["first"], r["second"]): r
    for r in table1.report_lib.paired_differences(runs)
  }
  assert rows[("msam-rho0.3", "graphsam")]["mean"] == pytest.approx(0.01)
  assert rows[("gsam", "sam")]["first_better"] == 3  # RMSE: lower is better
  assert rows[("fsam", "adam")]["mean"] == pytest.approx(0.12)
  text = table1.report_lib.paired_table(list(rows.values()))
  assert "| esol | MSAM (rho 0.3) − GraphSAM | 0, 1, 2 |" in text
  assert "| esol | F-SAM − SAM | 0, 1, 2 |" in text


def test_two_seeds_get_no_verdict_however_small_the_p():
  row = {
    "first": "msam-rho0.3",
    "second": "graphsam",
    "metric": "roc_auc",
    "seeds": [0, 1],
    "mean": 0.0056,
    "t_p": 0.009,
  }
  assert table1.report_lib.verdict(row) == "no verdict on 2 seeds (under 3)"
  assert "significantly better" in table1.report_lib.verdict(
    {**row, "seeds": [0, 1, 2]}
  )
