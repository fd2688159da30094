"""models/_allocator: glibc keeps XLA's freed buffers (no page faults per
step) and gives free memory back when a run ends."""

import subprocess
import sys

import pytest

from models import _allocator

# Minor page faults of 5 steps whose temporary, a dot's 64 MiB output
# consumed by a second dot, is allocated afresh on every call; the minimum
# over 5 repetitions, so that a stray fault elsewhere in the process does not
# count. With ``models`` imported first the setting is on; without it glibc
# maps and unmaps the temporary each step.
STEPS_FAULTS = """
import resource, sys
if sys.argv[1] == "on":
  import models
import jax, jax.numpy as jnp

@jax.jit
def step(x, w, v):
  h = x @ w
  return jnp.sum(jnp.tanh(h) @ v, axis=0)

x = jnp.ones((8192, 64), jnp.float32)
w = jnp.full((64, 2048), 1e-3, jnp.float32)
v = jnp.ones((2048, 128), jnp.float32)
for _ in range(3):
  step(x, w, v).block_until_ready()
faults = []
for _ in range(5):
  before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  for _ in range(5):
    step(x, w, v).block_until_ready()
  faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(min(faults))
"""
PAGES_PER_STEP = 64 * 2**20 // 4096


def steps_faults(setting: str) -> int:
  done = subprocess.run(
    [sys.executable, "-c", STEPS_FAULTS, setting],
    capture_output=True,
    text=True,
    timeout=300,
    check=True,
  )
  return int(done.stdout.split()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")
def test_steps_reuse_memory_without_page_faults():
  assert _allocator.retain_freed_memory()  # done on import; idempotent
  # The control: without the setting every step faults its temporary in.
  assert steps_faults("off") >= 5 * PAGES_PER_STEP
  assert steps_faults("on") < PAGES_PER_STEP // 4
  assert _allocator.release_free_memory() in (True, False)
