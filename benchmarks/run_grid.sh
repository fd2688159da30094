#!/usr/bin/env bash
# The paper-schedule grid of issue 16, one run at a time, resumable: every
# command skips the runs that finished, so rerunning this script continues.
# Order: what the report needs first: BBBP (SAM's five seeds, Adam's and
# GraphSAM's reruns on this engine, so that every BBBP pair shares the code),
# the four smaller datasets, the rho sweep, then Tox21 and Lipophilicity.
set -euo pipefail
cd "$(dirname "$0")/.."
grid() { "${PYTHON:-python}" -m benchmarks.table1 "$@"; }
grid --datasets bbbp --optimizers graphsam adam sam --seeds 0
grid --datasets bbbp --optimizers sam --seeds 1 2 3 4
grid --datasets bbbp --optimizers graphsam adam --seeds 1 2 3 4
grid --datasets clintox sider esol freesolv --seeds 0 1 2
# The rho sweep: ESOL first (half BBBP's minutes per run), then BBBP one
# seed at a time, so a sweep cut short still covers every rho.
sweep() { grid --optimizers graphsam --rho 0.01 0.02 0.1 0.2 "$@"; }
sweep --datasets esol --seeds 0 1 2
sweep --datasets bbbp --seeds 0
sweep --datasets bbbp --seeds 1
sweep --datasets bbbp --seeds 2
grid --datasets tox21 lipophilicity --seeds 0 1 2
