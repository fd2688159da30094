"""Runs a script of benchmarks/ as a user would, from the repository root."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[2]


def run_script(name: str, *args: str) -> subprocess.CompletedProcess:
  """``python -m benchmarks.<name> *args`` from the repository root.

  ``name`` is the script's module name (``"table1"``); a ``.py`` suffix is
  dropped.
  """
  env = {
    **os.environ,
    "PYTHONPATH": f"{ROOT}{os.pathsep}" + os.environ.get("PYTHONPATH", ""),
  }
  return subprocess.run(
    [sys.executable, "-m", f"benchmarks.{Path(name).stem}", *args],
    capture_output=True,
    text=True,
    timeout=600,
    check=False,
    cwd=ROOT,
    env=env,
  )
