"""The GRU initialization that benchmarks.gru_init_before_fix puts back."""

import shutil
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import gru_init_before_fix
from models import layout
from models import model as model_lib
from tests.models.test_model import MOLS
from tests.models.test_model import batch_of

glorot_of_flax = nn.initializers.xavier_uniform


def gru_and_dense_kernels(d=64):
  batch = batch_of(MOLS)
  topo = layout.Topology(jax.tree.map(jnp.asarray, batch.graphs), None)
  h = jnp.zeros((batch.graphs.nodes.shape[0], d))
  gru = model_lib.GRUReadout(d).init(jax.random.key(0), h, topo)["params"]
  dense = nn.Dense(3 * d, kernel_init=nn.initializers.xavier_uniform())
  kernel = dense.init(jax.random.key(1), h)["params"]["kernel"]
  return np.asarray(gru["w_in"]), np.asarray(gru["w_h"]), np.asarray(kernel)


def test_gru_kernels_get_the_bound_before_the_fix_and_nothing_else_changes():
  d = 64
  torch_bound = np.sqrt(6.0 / (4 * d))  # each direction's own fans
  fixed = gru_and_dense_kernels(d)
  with gru_init_before_fix.glorot_over_every_axis():
    before = gru_and_dense_kernels(d)
  # The direction axis in the fans: sqrt(6 / (2d + 6d)), 1/sqrt(2) as large.
  for w in before[:2]:
    assert 0.99 * torch_bound / np.sqrt(2) < np.abs(w).max()
    assert np.abs(w).max() <= torch_bound / np.sqrt(2)
  for w in fixed[:2]:
    assert np.abs(w).max() > 0.99 * torch_bound
  np.testing.assert_array_equal(before[2], fixed[2])
  # Closed: the fixed initialization again.
  for a, b in zip(gru_and_dense_kernels(d), fixed, strict=True):
    np.testing.assert_array_equal(a, b)


def test_the_report_names_this_script_and_its_own_run_root(tmp_path):
  stored = Path(__file__).parent.parent.parent / (
    "benchmarks/results/gru_init_before_fix/table1_paper_schedule.json"
  )
  shutil.copy(stored, tmp_path / stored.name)
  report = gru_init_before_fix.main(["--report-only", "--out", str(tmp_path)])
  assert report["command"].startswith(
    "python -m benchmarks.gru_init_before_fix --runs runs/gru_init_before_fix"
  )
  assert [r["seed"] for r in report["runs"]] == [0, 1, 2, 3, 4]
  # The initialization is the fixed one again after the run.
  assert nn.initializers.xavier_uniform is glorot_of_flax
