"""What the command lines share: argument types, and how they end.

:func:`run` runs a command's body so that a failure ends in a line or a few
(``prog: error: ...``, naming the file, row, column, flag or epoch, as the
error's message does) and a non-zero exit status instead of a traceback
(``--debug`` shows it), and warnings print as ``prog: warning: ...``. The
library's messages name Python arguments (``task_type='regression'``); a
command shows them as its flags (``--task regression``, :func:`as_flags`).
Nothing heavy is imported here: ``--help`` must stay fast.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import shlex
import sys
import warnings
from collections.abc import Callable

# Errors whose message says all a user needs: shown without their type.
# (module, class) pairs, looked up only in modules already imported.
_USER_ERRORS = (
  ("models.tables", "DataFileError"),
  ("models.dataset_files", "DatasetNotFoundError"),
  ("models.dataset_files", "ChecksumError"),
  ("models.featurization", "InvalidSmilesError"),
  ("models.splits", "SplitFileError"),
  ("models.splits", "SplitSizeError"),
  ("models.run_dir", "RunDirError"),
  ("models.train", "NonFiniteLossError"),
)
INTERRUPTED = 130  # the shell's status for Ctrl-C
# Python arguments that library messages name (``task_type='regression'``)
# and the flags that set them, so that a command's user reads flags.
FLAGS = {
  "batch_size": "--batch-size",
  "data_dir": "--data-dir",
  "header": "--no-header",
  "smiles_column": "--smiles-column",
  "split_sizes": "--split-sizes",
  "target_columns": "--target-columns",
  "task_type": "--task",
}
_ARGUMENT = re.compile(
  r"\b(" + "|".join(FLAGS) + r")=(\[[^\]]*\]|\([^)]*\)|<[^>]*>|'[^']*'|"
  r"[\w.+-]+)"
)


def as_flags(message: str) -> str:
  """``message`` with the Python arguments it names written as flags.

  Examples:
    >>> as_flags("pass target_columns=['a', 'b c'] or task_type='regression'")
    "pass --target-columns a 'b c' or --task regression"
    >>> as_flags("pass data_dir=<that directory>, or header=False")
    'pass --data-dir <that directory>, or --no-header'
  """

  def flag(match: re.Match) -> str:
    name, value = match.groups()
    if name == "header":
      return FLAGS[name]
    if value[0] in "[(":
      items = [v.strip().strip("'\"") for v in value[1:-1].split(",")]
      value = " ".join(shlex.quote(v) for v in items if v)
    elif value[0] == "'":
      value = shlex.quote(value[1:-1])
    return f"{FLAGS[name]} {value}"

  return _ARGUMENT.sub(flag, message)


def finite_float(text: str) -> float:
  """An argparse type: a float that is neither NaN nor infinite."""
  try:
    value = float(text)
  except ValueError:
    raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
  if not math.isfinite(value):
    raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
  return value


def enable_compile_cache(directory: str | os.PathLike | None) -> None:
  """Lets JAX keep compiled steps on disk in ``directory`` (None: off).

  A later process (or run) compiling the same step loads it instead; steps
  that compile in under a second are not stored.
  """
  if directory is None:
    return
  import jax

  jax.config.update("jax_compilation_cache_dir", str(directory))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)


def dataset_name(text: str) -> str:
  """An argparse type: a registry dataset, any case, as the registry spells
  it (``moleculeace/chembl2835_ki`` is ``moleculeace/CHEMBL2835_Ki``)."""
  from models import dataset_registry

  try:
    return dataset_registry.get_spec(text).name
  except ValueError as e:
    raise argparse.ArgumentTypeError(str(e)) from None


def positive_int(text: str) -> int:
  """An argparse type: an integer >= 1."""
  try:
    value = int(text)
  except ValueError:
    raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
  if value < 1:
    raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
  return value


def boolean(text: str) -> bool:
  """An argparse type: true/false, yes/no or 1/0."""
  lowered = text.lower()
  if lowered in ("1", "true", "yes"):
    return True
  if lowered in ("0", "false", "no"):
    return False
  raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _user_error(error: BaseException) -> bool:
  for module, name in _USER_ERRORS:
    cls = getattr(sys.modules.get(module), name, None)
    if cls is not None and isinstance(error, cls):
      return True
  return False


def describe(error: BaseException) -> str:
  """The message shown for ``error``: its own, or its type and first line."""
  if _user_error(error):
    return as_flags(str(error))
  first = (str(error).strip().splitlines() or [""])[0]
  return (
    f"{type(error).__name__}: {first}".rstrip(": ")
    + " (rerun with --debug to see the traceback)"
  )


def run(
  prog: str,
  body: Callable[[], int],
  *,
  debug: bool = False,
  on_interrupt: str = "",
) -> int:
  """Runs ``body()`` and returns its exit status; failures print and give 1.

  Warnings are printed as ``prog: warning: message``, each message once
  (several runs load the same data); Ctrl-C prints
  ``prog: interrupted`` and ``on_interrupt`` and gives 130. With ``debug``
  an exception propagates with its traceback. ``SystemExit`` (argparse's
  errors) passes through.
  """

  shown = set()

  def show(message, category, filename, lineno, file=None, line=None):
    if str(message) not in shown:
      shown.add(str(message))
      text = as_flags(str(message))
      print(f"{prog}: warning: {text}", file=sys.stderr, flush=True)

  with warnings.catch_warnings():
    warnings.showwarning = show
    try:
      return body()
    except KeyboardInterrupt:
      if debug:
        raise
      print(f"{prog}: interrupted{on_interrupt}", file=sys.stderr)
      return INTERRUPTED
    except Exception as e:
      if debug:
        raise
      print(f"{prog}: error: {describe(e)}", file=sys.stderr, flush=True)
      return 1
