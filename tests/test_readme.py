"""The README's examples run as written."""

import csv
import os
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).parents[1]
README = ROOT / "README.md"
OWN_DATA = "## Your own data"


def section(title: str) -> str:
  text = README.read_text()
  start = text.index(title)
  end = text.find("\n## ", start + len(title))
  return text[start : end if end >= 0 else None]


def python_blocks(text: str | None = None):
  if text is None:  # every block but those of "Your own data" (slow)
    text = README.read_text().replace(section(OWN_DATA), "")
  return re.findall(r"```python\n(.*?)```", text, re.DOTALL)


def test_readme_has_a_usage_example():
  assert python_blocks()


def test_readme_python_examples_run(capsys):
  for block in python_blocks():
    exec(compile(block, str(README), "exec"), {"__name__": "readme"})
  out = capsys.readouterr().out
  loss = float(re.search(r"training loss (\S+)", out).group(1))
  assert loss < 1e-3
  fits = re.findall(r"kernel (\S+) bias (\S+)", out)
  assert len(fits) == 2  # the Flax TrainState and the nnx.Optimizer loops
  for kernel, bias in fits:
    assert abs(float(kernel) - 3.0) < 0.05
    assert abs(float(bias) + 1.0) < 0.05


def test_readme_states_the_fast_test_command_and_ci_runs_the_full_one():
  setup = section("## Set up")
  assert 'python -m pytest -n auto -m "not slow"' in setup
  full = re.search(r"\n(python -m pytest -n auto) +# everything", setup)
  assert full, setup
  ci = (ROOT / ".ci" / "run").read_text()
  assert f"\n{full.group(1)} -q --durations=25\n" in ci


@pytest.mark.slow
def test_your_own_data_section_runs(tmp_path, monkeypatch, capsys):
  """The section's commands, from a clone's root, then its Python."""
  text = section(OWN_DATA)
  (commands,) = re.findall(r"```bash\n(.*?)```", text, re.DOTALL)
  (tmp_path / "tests").symlink_to(ROOT / "tests")
  env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path / "cache"))
  env["PATH"] = f"{pathlib.Path(sys.executable).parent}:{env['PATH']}"
  result = subprocess.run(
    ["bash", "-euo", "pipefail", "-c", commands],
    cwd=tmp_path,
    env=env,
    capture_output=True,
    text=True,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  # The reported quirks, as the section shows them.
  shown = re.findall(r"```text\n(.*?)```", text, re.DOTALL)[0].splitlines()
  output = result.stdout + result.stderr
  for line in shown:
    if not re.search(r"\d\.\d{4}|^\.\.\.$", line):  # metrics vary
      assert line in output, line
  # preds.csv: one row per input row, in order, with the documented columns.
  with open(tmp_path / "preds.csv", newline="") as f:
    rows = list(csv.DictReader(f))
  with open(ROOT / "tests" / "data" / "new_molecules.csv", newline="") as f:
    inputs = list(csv.DictReader(f))
  assert [(r["id"], r["smiles"]) for r in rows] == [
    (r["id"], r["smiles"]) for r in inputs
  ]
  header = re.findall(r"```text\n(id,smiles,.*?)\n```", text)[0]
  assert ",".join(rows[0]) == header
  assert [r["id"] for r in rows if r["prediction_error"]] == ["typo"]
  # Every prediction says whether it is inside the training domain.
  flags = {r["id"]: (r["in_domain"], r["domain_reason"]) for r in rows}
  assert flags.pop("typo") == ("", "")
  assert {flag for flag, _ in flags.values()} <= {"yes", "no"}
  assert all((flag == "no") == bool(why) for flag, why in flags.values())
  # The Python example, in the same directory.
  monkeypatch.chdir(tmp_path)
  (block,) = python_blocks(text)
  exec(compile(block, str(README), "exec"), {"__name__": "readme"})
  out = capsys.readouterr().out.splitlines()
  assert out[0] == "('logp', 'tpsa') (2, 2) (2, 2)"
  reproduced = float(re.search(r"'rmse': (\S+)}", out[1]).group(1))
  summary = (tmp_path / "runs" / "own" / "seed0" / "summary.json").read_text()
  test_rmse = float(re.search(r'"test_rmse": (\S+),', summary).group(1))
  assert reproduced == pytest.approx(test_rmse, rel=1e-6)
