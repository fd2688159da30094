"""Training configurations by name: ``default`` (the paper's set-up per
dataset) and ``test`` (tiny, seconds on a CPU).

Examples:
  >>> from models import configs
  >>> sorted(configs.CONFIGS)
  ['default', 'test']
  >>> configs.get_config("test", "esol").d_model
  16
"""

from __future__ import annotations

from models.configs import default
from models.configs import test

CONFIGS = {"default": default.get_config, "test": test.get_config}


def get_config(name: str, dataset: str) -> default.Config:
  """The configuration ``name`` (a key of :data:`CONFIGS`) for ``dataset``.

  Raises:
    ValueError: an unknown name; the message lists the names.
  """
  if name not in CONFIGS:
    raise ValueError(
      f"unknown configuration {name!r}; choose one of {', '.join(CONFIGS)}"
    )
  return CONFIGS[name](dataset)
