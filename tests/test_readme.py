"""The README's examples run as written."""

import pathlib
import re

README = pathlib.Path(__file__).parents[1] / "README.md"


def python_blocks():
  return re.findall(r"```python\n(.*?)```", README.read_text(), re.DOTALL)


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
