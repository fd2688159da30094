"""BBBP on the paper's schedule with the GRU readout's pre-fix initialization.

Issue 16 made each direction's GRU kernel Glorot-initialized as PyTorch
initializes the authors' GRU (``xavier_uniform(batch_axis=(0,))`` on the
stacked ``[2, d, 3d]`` kernels). Before, the direction axis counted in the
fans, a bound 1/√2 of the authors'. After the fix (and the engine's
rewrite) GraphSAM's BBBP test ROC-AUC was lower on all five seeds; this
script trains the grid's runs with only the initialization put back, to tell
the two causes apart.

It runs ``benchmarks.table1`` with every ``xavier_uniform`` ignoring
``batch_axis``; only the GRU's kernels pass one, so nothing else changes.
Run from the repository root::

  python -m benchmarks.gru_init_before_fix --datasets bbbp \
      --optimizers graphsam --seeds 0 1 2 3 4

Takes ``benchmarks.table1``'s arguments; ``--runs`` defaults to
``runs/gru_init_before_fix`` and ``--out`` to
``benchmarks/results/gru_init_before_fix``.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator

import flax.linen as nn

from benchmarks import table1


@contextlib.contextmanager
def glorot_over_every_axis() -> Iterator[None]:
  """Flax's ``xavier_uniform`` counting batch axes in the fans, while open."""
  glorot = nn.initializers.xavier_uniform

  def counting_every_axis(*args, batch_axis=(), **kwargs):
    del batch_axis
    return glorot(*args, **kwargs)

  nn.initializers.xavier_uniform = counting_every_axis
  try:
    yield
  finally:
    nn.initializers.xavier_uniform = glorot


# Its own run root and report: under table1's, the grid's finished runs of the
# same configuration would count as done and nothing would train.
DEFAULTS = (
  "--runs",
  "runs/gru_init_before_fix",
  "--out",
  "benchmarks/results/gru_init_before_fix",
)


def main(argv=None) -> dict:
  argv = sys.argv[1:] if argv is None else list(argv)
  with glorot_over_every_axis():
    return table1.main([*DEFAULTS, *argv], name="gru_init_before_fix")


if __name__ == "__main__":
  main()
