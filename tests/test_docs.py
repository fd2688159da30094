"""The API reference documents every public name (without building it)."""

import pathlib
import pkgutil
import re

import graphsam_optax
import models

API = pathlib.Path(__file__).parents[1] / "docs" / "api"


def documented(page: str) -> set[str]:
  text = (API / page).read_text()
  return set(re.findall(r"^\.\. auto\w+:: (\S+)$", text, re.MULTILINE))


def test_every_name_of_graphsam_optax_is_in_the_api_reference():
  names = documented("graphsam_optax.rst")
  missing = [
    name
    for name in graphsam_optax.__all__
    if f"graphsam_optax.{name}" not in names
  ]
  assert not missing, f"add them to docs/api/graphsam_optax.rst: {missing}"


def test_every_public_module_of_models_is_in_the_api_reference():
  names = documented("models.rst")
  public = [
    module.name
    for module in pkgutil.walk_packages(models.__path__, "models.")
    if not any(part.startswith("_") for part in module.name.split("."))
  ]
  missing = [name for name in public if name not in names]
  assert not missing, f"add them to docs/api/models.rst: {missing}"
