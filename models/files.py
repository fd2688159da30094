"""Writing files so that a killed process never leaves a partial one."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w") -> Iterator[IO]:
  """A new file that replaces ``path`` when the block ends without error.

  The file is written beside ``path`` under a hidden temporary name and
  renamed over it at the end (atomic on POSIX and Windows); an exception
  or a killed process leaves ``path`` as it was. Text is UTF-8 with the
  newlines as written.

  Examples:
    >>> import tempfile, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "note.txt"
    >>> with atomic_write(path) as f:
    ...   _ = f.write("kept")
    >>> try:
    ...   with atomic_write(path) as f:
    ...     _ = f.write("lost")
    ...     raise RuntimeError
    ... except RuntimeError:
    ...   pass
    >>> path.read_text(), len(list(path.parent.iterdir()))
    ('kept', 1)
  """
  path = Path(path)
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
  text = {} if "b" in mode else {"encoding": "utf-8", "newline": ""}
  try:
    with os.fdopen(fd, mode, **text) as f:
      yield f
    os.replace(tmp, path)
  except BaseException:
    Path(tmp).unlink(missing_ok=True)
    raise
