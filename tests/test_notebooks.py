"""The notebooks run top to bottom with small settings (nbclient).

Each notebook's cell tagged ``parameters`` is rewritten with the values below
(a name missing from that cell fails the test, so they cannot drift apart).
Both notebooks share one featurization cache and one JAX compilation cache.
"""

import os
import re
import time
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from models import dataset_files

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
CELL_TIMEOUT = 300  # seconds; compilations are the slow cells
SMALL = {
  "quickstart.ipynb": {
    "CONFIG": "'test'",
    "EPOCHS": "2",
    "MAX_MOLECULES": "48",
  },
  "sharpness.ipynb": {
    "EPOCHS": "2",
    "MAX_MOLECULES": "48",
    "OPTIMIZERS": "('graphsam',)",
    "MEASURE_EVERY": "2",
    "MAX_ITERS": "5",
  },
}

# What the last cell must print: a summary line per optimizer.
LAST_OUTPUT = {
  "quickstart.ipynb": ("adam ", "graphsam ", "graphs/s"),
  "sharpness.ipynb": ("graphsam ", "Adam edge"),
}


def set_parameters(notebook, values):
  """Rewrites ``NAME = ...`` lines of the cell tagged ``parameters``."""
  cells = [
    cell
    for cell in notebook.cells
    if "parameters" in cell.metadata.get("tags", [])
  ]
  assert len(cells) == 1, "exactly one cell must be tagged 'parameters'"
  source = cells[0].source
  for name, value in values.items():
    source, count = re.subn(
      rf"^{name} = .*$", f"{name} = {value}", source, flags=re.M
    )
    assert count == 1, f"{name} is not set in the parameters cell"
  cells[0].source = source


@pytest.fixture(scope="module")
def shared(tmp_path_factory, monkeypatch_module):
  """Values every notebook gets: an offline dataset and shared caches."""
  cache = tmp_path_factory.mktemp("notebook-cache")
  monkeypatch_module.setenv("JAX_COMPILATION_CACHE_DIR", str(cache / "jax"))
  # The kernels import this checkout, whatever else is installed.
  monkeypatch_module.setenv(
    "PYTHONPATH",
    os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
  )
  try:  # BBBP when its CSV is here (CI), never a download attempt
    dataset_files.resolve_csv("bbbp", download=False)
    dataset = "bbbp"
  except dataset_files.DatasetNotFoundError:
    dataset = "nci5k-tpsa"
  return {"DATASET": repr(dataset), "CACHE_DIR": repr(str(cache))}


@pytest.fixture(scope="module")
def monkeypatch_module():
  with pytest.MonkeyPatch.context() as patch:
    yield patch


def test_parameters_cells_are_plain_assignments():
  for name in SMALL:
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    set_parameters(notebook, SMALL[name])


def test_notebooks_are_committed_without_outputs():
  for name in SMALL:
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    for cell in notebook.cells:
      if cell.cell_type == "code":
        assert not cell.outputs and cell.execution_count is None, name


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(SMALL))
def test_notebook_runs(name, shared):
  notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
  set_parameters(notebook, {**SMALL[name], **shared})
  client = NotebookClient(
    notebook,
    timeout=CELL_TIMEOUT,
    kernel_name="python3",
    resources={"metadata": {"path": str(NOTEBOOKS)}},
  )
  start = time.perf_counter()
  client.execute()  # raises CellExecutionError naming the failing cell
  print(f"{name}: {time.perf_counter() - start:.0f} s")
  last = [cell for cell in notebook.cells if cell.cell_type == "code"][-1]
  text = "".join(output.get("text", "") for output in last.outputs)
  for expected in LAST_OUTPUT[name]:
    assert expected in text, text
