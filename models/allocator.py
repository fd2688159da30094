"""Keep the memory that XLA:CPU frees inside the process (glibc only).

A training step of XLA:CPU allocates its temporary buffers afresh on every
call, from worker threads. glibc serves a worker thread from a per-thread
arena, and a request larger than an arena's heap (64 MiB) from a new
``mmap``, which ``free`` unmaps again: every step then faults its whole
working set back in, page by page (about 39,000 minor faults, 150 MB, per
CoMPT/BBBP step), and the faults serialize XLA's threads on the address
space lock. Measured on a 2-core VM: a quarter of the step's CPU time in the
kernel, and the second core mostly idle.

:func:`retain_freed_memory` has glibc serve every thread from the main arena
and never ``mmap`` (``M_ARENA_MAX = 1``, ``M_MMAP_MAX = 0``), and return
freed memory to the system only above 2 GiB at the top of the heap: after
the first step, a step reuses its buffers without a fault. It only affects
threads that have not allocated yet, so a program calls it first, before
JAX runs anything: ``graphsam-train``, ``graphsam-predict`` and the benchmark
scripts do; a notebook or script of yours can::

  from models import allocator
  allocator.retain_freed_memory()  # before the first JAX computation

The resident memory of a process then stays at its peak instead of dropping
between steps, until :func:`release_free_memory` (called when a run ends)
returns what is free. Nothing changes the allocator on import.
"""

from __future__ import annotations

import ctypes
import sys

# mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8
_TRIM_ABOVE = 2**31 - 1


def _glibc(name: str):
  """The C library's function ``name``, or None off Linux or without it."""
  if not sys.platform.startswith("linux"):
    return None
  try:
    return getattr(ctypes.CDLL(None), name)
  except (OSError, AttributeError):
    return None


def retain_freed_memory() -> bool:
  """Sets glibc's malloc to keep freed memory; returns whether it could.

  False off Linux or without glibc's ``mallopt`` (nothing is changed then).
  """
  mallopt = _glibc("mallopt")
  if mallopt is None:
    return False
  return all(
    mallopt(param, value) == 1
    for param, value in (
      (_M_ARENA_MAX, 1),
      (_M_MMAP_MAX, 0),
      (_M_TRIM_THRESHOLD, _TRIM_ABOVE),
    )
  )


def release_free_memory() -> bool:
  """Returns the free memory glibc keeps to the system (``malloc_trim``).

  For the end of a run: the next run's first step faults its buffers in
  once. False where there is no glibc ``malloc_trim``.
  """
  malloc_trim = _glibc("malloc_trim")
  return malloc_trim is not None and bool(malloc_trim(0))
