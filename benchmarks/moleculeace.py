"""MoleculeACE: Adam, GraphSAM and SAM on the 30 activity-cliff sets.

Every run is ``models.train.train_and_evaluate`` on one set with the
configuration ``models.configs.default`` gives it (Lipophilicity's CoMPT,
the paper's training schedule, the benchmark's fixed test part, 10 % of the
train part drawn by the seed for early stopping; nothing tuned on test).
The grid, its resumption and its options are :mod:`benchmarks.table1`'s
(finished runs are skipped, a killed run resumes from its checkpoint, the
report is rewritten after every run); the report is
:mod:`benchmarks.moleculeace_report`'s: RMSE and cliff RMSE per set and
averaged over the sets, paired differences with tests, wall time and
gradient passes, written to ``<out>/moleculeace.{md,json,png}``, with every
run's test predictions (``<out>/moleculeace_predictions/``).

Run from the repository root (``GRAPHSAM_DATA_DIR`` names the MoleculeNet
folder; the sets are read from the ``moleculeace`` folder beside it)::

  python -m benchmarks.moleculeace --optimizers adam graphsam --seeds 0
  python -m benchmarks.moleculeace --optimizers sam --seeds 0
  python -m benchmarks.moleculeace --report-only
"""

from __future__ import annotations

import sys

from benchmarks import moleculeace_report
from benchmarks import table1
from models import dataset_registry

NAME = "moleculeace"
SETS = tuple(
  dataset_registry.MOLECULEACE_PREFIX + name
  for name in dataset_registry.MOLECULEACE_SETS
)
# Its own run root: table1's finished runs are of other datasets anyway, but
# the grids stay apart on disk.
DEFAULTS = ("--runs", "runs/moleculeace")


def stem_of(schedule: table1.Schedule) -> str:
  """``moleculeace``, or ``moleculeace_<tag>`` off the paper's schedule."""
  if schedule.tag == table1.PAPER_SCHEDULE:
    return NAME
  return f"{NAME}_{schedule.tag}"


def main(argv=None) -> dict:
  argv = list(sys.argv[1:] if argv is None else argv)
  if "--datasets" not in argv and "--report-only" not in argv:
    argv = [*argv, "--datasets", *SETS]
  if "--runs" not in argv:
    argv = [*DEFAULTS, *argv]
  return table1.main(
    argv, name=NAME, report_module=moleculeace_report, stem_of=stem_of
  )


if __name__ == "__main__":
  main()
