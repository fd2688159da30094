"""One JAX compilation cache for the benchmark tests' subprocesses.

The smoke tests run the scripts of ``benchmarks/`` in subprocesses
(:func:`tests.benchmarks.scripts.run_script`), which compile the same small
CoMPT steps again; with ``JAX_COMPILATION_CACHE_DIR`` set once for the
session, each subprocess loads what an earlier one compiled.
"""

import pytest


@pytest.fixture(scope="session", autouse=True)
def compilation_cache(tmp_path_factory):
  cache = tmp_path_factory.mktemp("jax-compilation-cache")
  with pytest.MonkeyPatch.context() as patch:
    patch.setenv("JAX_COMPILATION_CACHE_DIR", str(cache))
    yield cache
