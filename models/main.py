"""``graphsam-train``: train CoMPT on a MoleculeNet dataset with one optimizer.

Examples::

  graphsam-train --dataset bbbp --optimizer graphsam --seed 0
  graphsam-train --dataset esol --optimizer sam --rho 0.1 --epochs 50
  graphsam-train --dataset nci5k-tpsa --config test   # offline, seconds

The CSVs are looked for in ``--data-dir``, then ``$GRAPHSAM_DATA_DIR``, then
the user cache (and downloaded there if missing). Compiled steps are kept in
JAX's persistent compilation cache (``--compile-cache``), so a second run
of the same model starts in seconds. Per-epoch metrics go to
``--out`` (``metrics.csv``, ``metrics.json``), with orbax checkpoints: the
same command run again on the same ``--out`` resumes a killed run. The last
line printed is a one-line summary. Everything the run does lives in
:func:`models.train.train_and_evaluate`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import jax

from graphsam_optax import _registry
from models import datasets
from models import splits
from models import train
from models.configs import default
from models.configs import test as test_config

CONFIGS = {"default": default.get_config, "test": test_config.get_config}


def _hyperparameter_types() -> dict[str, type]:
  """Every registry hyperparameter (bar the run-wide seed) and its type."""
  types = {}
  for name in _registry.optimizer_names():
    for key, value in _registry.optimizer_spec(name).defaults.items():
      if key != "seed":
        types.setdefault(key, type(value))
  return types


def _boolean(text: str) -> bool:
  lowered = text.lower()
  if lowered in ("1", "true", "yes"):
    return True
  if lowered in ("0", "false", "no"):
    return False
  raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _positive(text: str) -> int:
  value = int(text)
  if value < 1:
    raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
  return value


def make_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
    prog="graphsam-train",
    description=__doc__.split("\n\n")[0],
    formatter_class=argparse.RawDescriptionHelpFormatter,
    epilog="optimizers:\n\n"
    + "\n\n".join(
      _registry.optimizer_spec(train.registry_name(name)).describe()
      for name in train.OPTIMIZERS
    ).replace("base: ", "adam: "),
  )
  parser.add_argument(
    "--dataset", required=True, choices=list(datasets.DATASETS)
  )
  parser.add_argument(
    "--optimizer", default="graphsam", choices=train.OPTIMIZERS
  )
  parser.add_argument(
    "--config",
    default="default",
    choices=list(CONFIGS),
    help="default: the paper's set-up; test: a tiny model on a subset",
  )
  parser.add_argument("--epochs", type=_positive, help="most epochs")
  parser.add_argument("--patience", type=_positive, help="early stopping")
  parser.add_argument("--batch-size", type=_positive)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--split", choices=list(splits.SPLIT_METHODS))
  parser.add_argument("--data-dir", type=Path, help="directory of the CSVs")
  parser.add_argument("--cache-dir", type=Path, help="downloads, features")
  parser.add_argument(
    "--out", type=Path, help="output directory (default runs/<run name>)"
  )
  parser.add_argument(
    "--compile-cache",
    default=str(datasets.default_cache_dir() / "jax-compilation"),
    help="directory of JAX's persistent compilation cache, so that reruns, "
    "resumed runs and other seeds skip XLA compilation ('' disables; "
    "default %(default)s)",
  )
  parser.add_argument(
    "--no-progress", action="store_true", help="no per-epoch progress bar"
  )
  parser.add_argument(
    "--devices",
    type=_positive,
    help="split every training batch over this many devices (data "
    "parallelism, models.parallel; default: all devices JAX sees)",
  )
  group = parser.add_argument_group(
    "optimizer hyperparameters (registry defaults when not given)"
  )
  for key, kind in _hyperparameter_types().items():
    users = [
      n
      for n in train.OPTIMIZERS
      if key in _registry.optimizer_spec(train.registry_name(n)).defaults
    ]
    group.add_argument(
      "--" + key.replace("_", "-"),
      dest=f"hp_{key}",
      type=_boolean if kind is bool else kind,
      metavar=kind.__name__.upper(),
      help="used by " + ", ".join(users),
    )
  return parser


def parse_config(
  parser: argparse.ArgumentParser, argv: Sequence[str] | None
) -> tuple[default.Config, argparse.Namespace]:
  """The run's Config; every bad argument ends in ``parser.error``."""
  args = parser.parse_args(argv)
  config = CONFIGS[args.config](args.dataset)
  overrides = {
    "optimizer": args.optimizer,
    "seed": args.seed,
    "epochs": args.epochs,
    "patience": args.patience,
    "batch_size": args.batch_size,
    "split": args.split,
  }
  config = config.replace(
    **{k: v for k, v in overrides.items() if v is not None}
  )
  given = {
    key[3:]: value
    for key, value in vars(args).items()
    if key.startswith("hp_") and value is not None
  }
  accepted = _registry.optimizer_spec(
    train.registry_name(args.optimizer)
  ).defaults
  for key in given:
    if key not in accepted:
      flag = "--" + key.replace("_", "-")
      parser.error(
        f"argument {flag}: not a hyperparameter of --optimizer "
        f"{args.optimizer} (its hyperparameters: "
        f"{', '.join(k for k in accepted if k != 'seed') or 'none'})"
      )
  config = config.replace(hyperparameters=given)
  try:  # the registry validates values; no data is needed for that
    train.create_optimizer(config, steps_per_epoch=1)
  except ValueError as e:
    named = [k for k in given if k in str(e)] or ["optimizer"]
    parser.error(f"argument --{named[0].replace('_', '-')}: {e}")
  if args.devices is not None and args.devices > jax.device_count():
    parser.error(
      f"argument --devices: {args.devices} > the {jax.device_count()} "
      "devices JAX sees"
    )
  if args.data_dir is not None and not args.data_dir.is_dir():
    parser.error(f"argument --data-dir: {args.data_dir} is not a directory")
  return config, args


def main(argv: Sequence[str] | None = None) -> int:
  parser = make_parser()
  config, args = parse_config(parser, argv)
  if args.compile_cache:
    jax.config.update("jax_compilation_cache_dir", args.compile_cache)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
  out = args.out or Path("runs") / (
    f"{config.dataset}-{config.optimizer}-{args.config}-seed{config.seed}"
  )
  summary = train.train_and_evaluate(
    config,
    out,
    data_dir=args.data_dir,
    cache_dir=args.cache_dir,
    progress=not args.no_progress and sys.stderr.isatty(),
    num_devices=args.devices,
  )
  metric = summary["metric"]
  print(
    f"{summary['dataset']} {summary['optimizer']} seed {summary['seed']}: "
    f"test {metric} {summary[f'test_{metric}']:.4f} (best valid "
    f"{summary[f'best_valid_{metric}']:.4f} at epoch {summary['best_epoch']}), "
    f"{summary['epochs']} epochs, {summary['wall_seconds']:.0f} s, "
    f"{summary['graphs_per_s']:.0f} graphs/s -> {out}",
    flush=True,
  )
  return 0


if __name__ == "__main__":
  sys.exit(main())
