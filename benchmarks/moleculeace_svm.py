"""MoleculeACE's SVM on ECFP through this repository's loader: a protocol check.

Loads each of the 30 sets with :func:`models.datasets.load_dataset` (no
featurization), takes the fixed split from the set's ``split`` column, fits
the benchmark authors' best method, a support vector regressor on ECFP
(Morgan radius 2, 1024 bits; RBF kernel, ``gamma`` 0.01, ``epsilon`` 0.1,
``C`` 10, the hyperparameters their tuning chose for 27 of the 30 sets), on
the whole train part, and scores the test part with :func:`models.metrics.rmse`,
over all test molecules and over those with ``cliff_mol == 1``: the code paths
the CoMPT runs use. Beside each set, the published SVM-ECFP numbers
(``results/moleculeace_published.csv``). Agreement says that the loader,
the split and the metrics are MoleculeACE's; it also gives the bar any model
here is measured against, in a minute of CPU.

Run from the repository root (``GRAPHSAM_DATA_DIR`` as for the benchmark)::

  python -m benchmarks.moleculeace_svm            # all 30 sets, ~1 minute
  python -m benchmarks.moleculeace_svm --sets CHEMBL2835_Ki
"""

from __future__ import annotations

import argparse
import datetime
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from benchmarks import common
from benchmarks import moleculeace_report
from models import allocator
from models import dataset_registry
from models import datasets
from models import metrics

METHOD = moleculeace_report.REFERENCE_METHOD
# The authors' SVM_ECFP hyperparameters of 27 sets (their configs per set).
SVR_PARAMETERS = {"kernel": "rbf", "C": 10.0, "gamma": 0.01, "epsilon": 0.1}
RADIUS, BITS = 2, 1024


def ecfp(smiles: Sequence[str]) -> np.ndarray:
  """Morgan bit vectors (radius 2, 1024 bits), as MoleculeACE computes ECFP."""
  from rdkit import Chem
  from rdkit.Chem import rdFingerprintGenerator

  generator = rdFingerprintGenerator.GetMorganGenerator(
    radius=RADIUS, fpSize=BITS
  )
  return np.array(
    [generator.GetFingerprintAsNumPy(Chem.MolFromSmiles(s)) for s in smiles],
    dtype=np.float64,
  )


def evaluate_set(name: str, data_dir: str | None = None) -> dict:
  """Fits the SVR on the set's train part; RMSE and cliff RMSE on test."""
  from sklearn.svm import SVR

  data = datasets.load_dataset(
    dataset_registry.MOLECULEACE_PREFIX + name,
    data_dir,
    featurize=False,
    progress=False,
  )
  part = data.annotations["split"]
  train, test = part == "train", part == "test"
  features = ecfp(data.smiles)
  labels = data.labels[:, 0].astype(np.float64)
  model = SVR(**SVR_PARAMETERS).fit(features[train], labels[train])
  predicted = model.predict(features[test])[:, None]
  truth = labels[test][:, None]
  present = np.ones_like(truth, bool)
  cliff = (data.annotations["cliff_mol"][test] == "1")[:, None]
  return {
    "set": name,
    "train": int(train.sum()),
    "test": int(test.sum()),
    "cliff_test": int(cliff.sum()),
    "rmse": metrics.rmse(truth, present, predicted),
    "cliff_rmse": metrics.rmse(truth, cliff, predicted),
  }


def compare(rows: Sequence[dict], published: Sequence[dict]) -> list[dict]:
  """Each row with the published numbers of :data:`METHOD` beside it."""
  reference = moleculeace_report.published_by_set(published, METHOD)
  out = []
  for row in rows:
    ref = reference.get(row["set"])
    out.append(
      {
        **row,
        "published_rmse": None if ref is None else ref["rmse"],
        "published_cliff_rmse": None if ref is None else ref["cliff_rmse"],
      }
    )
  return out


def markdown(report: dict) -> str:
  rows = report["sets"]

  def diff(row, metric):
    published = row[f"published_{metric}"]
    return "—" if published is None else f"{row[metric] - published:+.3f}"

  table = common.markdown_table(
    [
      "set",
      "train / test (cliff)",
      "RMSE here",
      "published",
      "Δ",
      "cliff RMSE here",
      "published",
      "Δ",
    ],
    [
      (
        r["set"],
        f"{r['train']} / {r['test']} ({r['cliff_test']})",
        f"{r['rmse']:.3f}",
        moleculeace_report.number(r["published_rmse"]),
        diff(r, "rmse"),
        f"{r['cliff_rmse']:.3f}",
        moleculeace_report.number(r["published_cliff_rmse"]),
        diff(r, "cliff_rmse"),
      )
      for r in rows
    ],
  )
  return "\n".join(
    [
      "# MoleculeACE: the published SVM on ECFP, through this loader",
      "",
      f"Written {report['written']} by `{report['command']}`  ",
      f"Machine: {common.machine_line(report['machine'])}  ",
      f"SVR {SVR_PARAMETERS} on Morgan bits (radius {RADIUS}, {BITS} bits), "
      "fitted on each set's whole train part, scored on its test part.",
      "",
      summary_line(report["summary"]),
      "",
      table,
      "",
    ]
  )


def summary_line(s: dict) -> str:
  """The sets' means against the published ones, and the largest gap."""
  return (
    f"Over {s['sets']} sets: mean RMSE {s['rmse']:.3f} (published "
    f"{moleculeace_report.number(s['published_rmse'])}), mean cliff RMSE "
    f"{s['cliff_rmse']:.3f} (published "
    f"{moleculeace_report.number(s['published_cliff_rmse'])}); largest "
    f"|Δ| per set {s['max_abs_diff_rmse']:.3f} (RMSE) and "
    f"{s['max_abs_diff_cliff_rmse']:.3f} (cliff RMSE)."
  )


def summary(rows: Sequence[dict]) -> dict:
  def mean(key):
    values = [r[key] for r in rows if r[key] is not None]
    return float(np.mean(values)) if values else None

  def worst(metric):
    gaps = [
      abs(r[metric] - r[f"published_{metric}"])
      for r in rows
      if r[f"published_{metric}"] is not None
    ]
    return float(max(gaps)) if gaps else float("nan")

  return {
    "sets": len(rows),
    "rmse": mean("rmse"),
    "cliff_rmse": mean("cliff_rmse"),
    "published_rmse": mean("published_rmse"),
    "published_cliff_rmse": mean("published_cliff_rmse"),
    "max_abs_diff_rmse": worst("rmse"),
    "max_abs_diff_cliff_rmse": worst("cliff_rmse"),
  }


def main(argv=None) -> dict:
  allocator.retain_freed_memory()
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument(
    "--sets",
    nargs="+",
    default=list(dataset_registry.MOLECULEACE_SETS),
    choices=list(dataset_registry.MOLECULEACE_SETS),
    metavar="SET",
    help="MoleculeACE sets (default all 30)",
  )
  parser.add_argument("--data-dir", help="as for graphsam-train")
  parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
  args = parser.parse_args(argv)
  command = common.command("moleculeace_svm", argv)
  rows = []
  for name in args.sets:
    row = evaluate_set(name, args.data_dir)
    print(
      f"{name}: RMSE {row['rmse']:.3f}, cliff RMSE {row['cliff_rmse']:.3f}",
      flush=True,
    )
    rows.append(row)
  rows = compare(rows, moleculeace_report.read_published())
  report = {
    "command": command,
    "machine": common.machine(),
    "written": datetime.datetime.now().isoformat(timespec="seconds"),
    "parameters": {**SVR_PARAMETERS, "radius": RADIUS, "bits": BITS},
    "summary": summary(rows),
    "sets": rows,
  }
  args.out.mkdir(parents=True, exist_ok=True)
  (args.out / "moleculeace_svm.json").write_text(json.dumps(report, indent=1))
  (args.out / "moleculeace_svm.md").write_text(markdown(report))
  print(summary_line(report["summary"]))
  return report


if __name__ == "__main__":
  main()
