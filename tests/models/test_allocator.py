"""models/_allocator: glibc keeps XLA's freed buffers (no page faults per
step) and gives free memory back when a run ends."""

import resource
import sys

import jax
import jax.numpy as jnp
import pytest

from models import _allocator


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")
def test_steps_reuse_memory_without_page_faults():
  assert _allocator.retain_freed_memory()  # done on import; idempotent

  @jax.jit
  def step(x):  # temporaries of 64 MiB, above glibc's arena heap size
    y = jnp.tile(x, (4, 1)) * 2.0
    return jnp.sum(y, axis=0) + x[0]

  x = jnp.ones((4096, 1024), jnp.float32)
  for _ in range(3):
    step(x).block_until_ready()
  before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  for _ in range(10):
    step(x).block_until_ready()
  faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
  # Freshly mapped temporaries would fault 64 MiB / 4 KiB = 16384 pages a
  # step.
  assert faults < 2000, faults
  assert _allocator.release_free_memory() in (True, False)
