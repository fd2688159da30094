"""models.allocator: glibc keeps XLA's freed buffers (no page faults per
step) once a program asks for it, and gives free memory back when a run
ends. Each setting is measured in a fresh process."""

import subprocess
import sys

import pytest

glibc_only = pytest.mark.skipif(
  not sys.platform.startswith("linux"), reason="glibc only"
)

# Minor page faults of 5 steps whose temporary, a dot's 64 MiB output
# consumed by a second dot, is allocated afresh on every call; the minimum
# over 5 repetitions, so that a stray fault elsewhere in the process does not
# count. With the setting on (called first, as the CLIs do) glibc keeps the
# temporary; without it glibc maps and unmaps it each step, and importing
# ``models`` alone changes nothing.
STEPS_FAULTS = """
import resource, sys
import models
if sys.argv[1] == "on":
  from models import allocator
  assert allocator.retain_freed_memory()
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

# Resident memory (KiB) after freeing 256 MiB that the setting keeps, then
# after release_free_memory(): the release must give it back.
RELEASE = """
import numpy as np
from models import allocator

def rss_kib():
  with open("/proc/self/status") as f:
    return next(int(l.split()[1]) for l in f if l.startswith("VmRSS:"))

assert allocator.retain_freed_memory()
buffers = [np.ones(2**20, np.float64) for _ in range(32)]  # 256 MiB, touched
del buffers
kept = rss_kib()
released = allocator.release_free_memory()
print(kept, rss_kib(), released)
"""


def run(script: str, *args: str) -> list[str]:
  done = subprocess.run(
    [sys.executable, "-c", script, *args],
    capture_output=True,
    text=True,
    timeout=300,
    check=True,
  )
  return done.stdout.split()


@glibc_only
def test_steps_reuse_memory_without_page_faults_once_asked():
  # The control: without the call (importing models is not enough) every
  # step faults its temporary in.
  assert int(run(STEPS_FAULTS, "off")[-1]) >= 5 * PAGES_PER_STEP
  assert int(run(STEPS_FAULTS, "on")[-1]) < PAGES_PER_STEP // 4


@glibc_only
def test_release_gives_the_kept_memory_back():
  kept, after, released = run(RELEASE)
  assert released == "True"
  assert int(kept) - int(after) > 200 * 1024  # of the 256 MiB freed
