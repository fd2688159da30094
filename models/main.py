"""``graphsam-train``: train CoMPT on a MoleculeNet dataset or your own CSV.

Examples::

  graphsam-train --dataset bbbp --optimizer graphsam --seed 0
  graphsam-train --dataset esol --optimizer sam --rho 0.1 --epochs 50
  graphsam-train --dataset nci5k-tpsa --config test   # offline, seconds
  graphsam-train --dataset moleculeace/CHEMBL2835_Ki   # fixed split, cliffs
  graphsam-train --data my.csv --smiles-column smiles --target-columns a b \\
    --seeds 0 1 2 --out runs/mine          # an ensemble for graphsam-predict

The CSVs are looked for in ``--data-dir``, then ``$GRAPHSAM_DATA_DIR``, then
the user cache (and downloaded there if missing); ``--data`` names your own,
whose task is inferred from its labels unless ``--task`` is given. Compiled
steps are kept in JAX's persistent compilation cache (``--compile-cache``),
so a second run of the same model starts in seconds. Per-epoch metrics go to
``--out`` (``metrics.csv``, ``metrics.json``), with orbax checkpoints: the
same command run again on the same ``--out`` resumes a killed run, and with a
larger ``--epochs`` extends a finished one. A finished run also holds what
``graphsam-predict`` needs (:mod:`models.run_dir`). The last line printed is
a one-line summary; a failure ends in a one-line error and exit status 1
(``--debug`` shows the traceback). Everything a run does lives in
:func:`models.train.train_and_evaluate`; jax, orbax and flax are imported
only once the arguments are checked, so ``--help`` is quick.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import graphsam_optax
from models import allocator
from models import cli
from models import configs
from models import dataset_files
from models import dataset_registry
from models import splits
from models import tables
from models.configs import default

# The model a CSV of your own trains (the Config defaults are BBBP's).
CSV_MODEL = "bbbp"


def optimizers() -> tuple[str, ...]:
  """The ``--optimizer`` choices: the registry's names."""
  return graphsam_optax.optimizer_names()


def _spec(optimizer: str) -> graphsam_optax.OptimizerSpec:
  return graphsam_optax.optimizer_spec(optimizer)


def _hyperparameter_types() -> dict[str, type]:
  """Every registry hyperparameter (bar the run-wide seed) and its type."""
  types = {}
  for name in graphsam_optax.optimizer_names():
    for key, value in graphsam_optax.optimizer_spec(name).defaults.items():
      if key != "seed":
        types.setdefault(key, type(value))
  return types


_TYPES = {bool: cli.boolean, float: cli.finite_float, int: int}


def make_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
    prog="graphsam-train",
    description=__doc__.split("\n\n")[0],
    formatter_class=argparse.RawDescriptionHelpFormatter,
    epilog="optimizers:\n\n"
    + "\n\n".join(_spec(name).describe() for name in optimizers()).replace(
      "base: ", "adam: "
    ),
  )
  source = parser.add_mutually_exclusive_group(required=True)
  source.add_argument(
    "--dataset",
    type=cli.dataset_name,
    metavar="NAME",
    help=f"one of {', '.join(dataset_registry.dataset_names())} (a MoleculeACE "
    "activity-cliff set, e.g. moleculeace/CHEMBL2835_Ki)",
  )
  source.add_argument("--data", type=Path, help="your own CSV (a header row)")
  own = parser.add_argument_group("your own data (--data)")
  own.add_argument("--smiles-column", default="smiles", help="%(default)s")
  own.add_argument(
    "--target-columns",
    nargs="+",
    metavar="COLUMN",
    help="label columns (default: all but the SMILES)",
  )
  own.add_argument(
    "--task",
    choices=tables.TASK_TYPES,
    help="default: classification if every label is 0 or 1",
  )
  parser.add_argument("--optimizer", default="graphsam", choices=optimizers())
  parser.add_argument(
    "--config",
    default="default",
    choices=list(configs.CONFIGS),
    help="default: the paper's set-up; test: a tiny model on a subset",
  )
  parser.add_argument("--epochs", type=cli.positive_int, help="most epochs")
  parser.add_argument(
    "--patience", type=cli.positive_int, help="early stopping"
  )
  parser.add_argument("--batch-size", type=cli.positive_int)
  seeds = parser.add_mutually_exclusive_group()
  seeds.add_argument("--seed", type=int, default=0)
  seeds.add_argument(
    "--seeds",
    type=int,
    nargs="+",
    metavar="SEED",
    help="train one run per seed, one after another, into --out/seed<S> "
    "(an ensemble for graphsam-predict)",
  )
  split = parser.add_mutually_exclusive_group()
  split.add_argument("--split", choices=list(splits.SPLIT_METHODS))
  split.add_argument(
    "--split-file",
    type=Path,
    help='a fixed split: JSON {"train": [...], "valid": [...], "test": '
    "[...]} of 0-based CSV data rows (a run's split.json)",
  )
  parser.add_argument(
    "--split-sizes",
    type=cli.finite_float,
    nargs=3,
    metavar=("TRAIN", "VALID", "TEST"),
    help="fractions (default 0.8 0.1 0.1)",
  )
  parser.add_argument("--data-dir", type=Path, help="directory of the CSVs")
  parser.add_argument("--cache-dir", type=Path, help="downloads, features")
  parser.add_argument(
    "--out", type=Path, help="output directory (default runs/<run name>)"
  )
  parser.add_argument(
    "--compile-cache",
    default=str(dataset_files.default_cache_dir() / "jax-compilation"),
    help="directory of JAX's persistent compilation cache, so that reruns, "
    "resumed runs and other seeds skip XLA compilation ('' disables; "
    "default %(default)s)",
  )
  parser.add_argument(
    "--no-progress", action="store_true", help="no per-epoch progress bar"
  )
  parser.add_argument(
    "--devices",
    type=cli.positive_int,
    help="split every training batch over this many devices (data "
    "parallelism, models.parallel; default: all devices JAX sees)",
  )
  parser.add_argument(
    "--debug", action="store_true", help="show tracebacks of failures"
  )
  group = parser.add_argument_group(
    "optimizer hyperparameters (registry defaults when not given)"
  )
  for key, kind in _hyperparameter_types().items():
    users = [n for n in optimizers() if key in _spec(n).defaults]
    group.add_argument(
      "--" + key.replace("_", "-"),
      dest=f"hp_{key}",
      type=_TYPES.get(kind, kind),
      metavar=kind.__name__.upper(),
      help="used by " + ", ".join(users),
    )
  return parser


def _flag(key: str) -> str:
  return "--" + key.replace("_", "-")


def _check_hyperparameters(parser, optimizer: str, given: dict) -> None:
  """Rejects, by flag, what the optimizer does not take or accept."""
  import optax

  accepted = _spec(optimizer).defaults
  for key in given:
    if key not in accepted:
      parser.error(
        f"argument {_flag(key)}: not a hyperparameter of --optimizer "
        f"{optimizer} (its hyperparameters: "
        f"{', '.join(k for k in accepted if k != 'seed') or 'none'})"
      )

  def build(hyperparameters):  # the registry validates the values
    graphsam_optax.get_optimizer(
      optimizer,
      optax.sgd(0.1),
      steps_per_epoch=1,
      total_steps=1,
      **hyperparameters,
    )

  try:
    build(given)
  except ValueError as error:
    # Each value alone, so that the error names the flag it is about.
    for key, value in given.items():
      try:
        build({key: value})
      except ValueError as alone:
        parser.error(
          f"argument {_flag(key)}: invalid value {value!r} for --optimizer "
          f"{optimizer}: {alone}"
        )
    flags = ", ".join(map(_flag, given)) or "--optimizer"
    parser.error(f"arguments {flags}: {error}")


def _csv_config(parser, args, config: default.Config) -> default.Config:
  """The Config of ``--data``; bad flags end in ``parser.error``."""
  try:
    spec = tables.csv_spec(
      args.data, args.smiles_column, args.target_columns, args.task
    )
  except dataset_files.DatasetNotFoundError as e:
    parser.error(f"argument --data: {e}")
  except tables.MissingColumnError as e:
    flag = "--smiles-column" if e.role == "smiles" else "--target-columns"
    parser.error(f"argument {flag}: {e}")
  said = []
  if spec.delimiter != ",":
    said.append(f"{tables.DELIMITER_NAMES[spec.delimiter]}-separated")
  if args.task is None:
    said.append(
      f"task {spec.task_type}, inferred from the labels ("
      + ("each column" if spec.task_type == "classification" else "no column")
      + " holds only 0 and 1; --task sets it)"
    )
  if said:
    print(f"{args.data}: {'; '.join(said)}", flush=True)
  return config.replace(
    dataset=spec.name,
    data_file=spec.path,
    smiles_column=spec.smiles_column,
    target_columns=spec.target_columns,
    task_type=spec.task_type,
  )


def parse_config(
  parser: argparse.ArgumentParser, args: argparse.Namespace
) -> list[tuple[default.Config, Path]]:
  """The runs to train (a Config and its output directory each).

  Every bad argument ends in ``parser.error`` (exit status 2), before any
  training starts.
  """
  config = configs.get_config(args.config, args.dataset or CSV_MODEL)
  if args.data is not None:
    config = _csv_config(parser, args, config)
  elif args.target_columns or args.task:
    flag = "--target-columns" if args.target_columns else "--task"
    parser.error(f"argument {flag}: only with --data (your own CSV)")
  if args.split_sizes is not None:
    if args.split_file is not None:
      parser.error("argument --split-sizes: not allowed with --split-file")
    try:
      splits.split_sizes(10, args.split_sizes)
    except ValueError as e:
      parser.error(f"argument --split-sizes: {e}")
  if args.split_file is not None and not args.split_file.is_file():
    parser.error(f"argument --split-file: {args.split_file}: no such file")
  overrides = {
    "optimizer": args.optimizer,
    "epochs": args.epochs,
    "patience": args.patience,
    "batch_size": args.batch_size,
    "split": args.split,
    "split_sizes": tuple(args.split_sizes) if args.split_sizes else None,
    "split_file": str(args.split_file.absolute()) if args.split_file else None,
  }
  config = config.replace(
    **{k: v for k, v in overrides.items() if v is not None}
  )
  given = {
    key[3:]: value
    for key, value in vars(args).items()
    if key.startswith("hp_") and value is not None
  }
  _check_hyperparameters(parser, args.optimizer, given)
  config = config.replace(hyperparameters=given)
  if args.devices is not None:
    import jax

    if args.devices > jax.device_count():
      parser.error(
        f"argument --devices: {args.devices} > the {jax.device_count()} "
        "devices JAX sees"
      )
  if args.seeds is not None:
    for seed in dict.fromkeys(args.seeds):
      if args.seeds.count(seed) > 1:
        parser.error(
          f"argument --seeds: seed {seed} is given twice; each seed trains "
          "one run, so list each once"
        )
  if args.data_dir is not None and not args.data_dir.is_dir():
    parser.error(f"argument --data-dir: {args.data_dir} is not a directory")
  name = f"{config.dataset}-{config.optimizer}-{args.config}"
  if args.seeds is None:
    out = args.out or Path("runs") / f"{name}-seed{args.seed}"
    return [(config.replace(seed=args.seed), out)]
  base = args.out or Path("runs") / name
  return [(config.replace(seed=s), base / f"seed{s}") for s in args.seeds]


def _summary_line(summary: dict, out: Path) -> str:
  metric = summary["metric"]
  subsets = "".join(
    f", {column} {metric} {record[metric]:.4f} ({record['molecules']} "
    "molecules)"
    for column, record in summary.get("test_subsets", {}).items()
  )
  return (
    f"{summary['dataset']} {summary['optimizer']} seed {summary['seed']}: "
    f"test {metric} {summary[f'test_{metric}']:.4f}{subsets} (best valid "
    f"{summary[f'best_valid_{metric}']:.4f} at epoch "
    f"{summary['best_epoch']}), {summary['epochs']} epochs, "
    f"{summary['wall_seconds']:.0f} s, {summary['graphs_per_s']:.0f} "
    f"graphs/s -> {out}"
  )


def _train(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
  runs = parse_config(parser, args)
  import numpy as np

  from models import train

  cli.enable_compile_cache(args.compile_cache or None)
  tests = []
  for config, out in runs:
    try:
      summary = train.train_and_evaluate(
        config,
        out,
        data_dir=args.data_dir,
        cache_dir=args.cache_dir,
        progress=not args.no_progress and sys.stderr.isatty(),
        num_devices=args.devices,
      )
    except dataset_files.ChecksumError as e:
      spec = dataset_registry.get_spec(config.dataset)
      reason = str(e).replace(" Pass verify=False to use this file anyway.", "")
      raise dataset_files.ChecksumError(
        f"{reason} To train on this file anyway, pass it as your own data: "
        f"--data <file> --smiles-column {spec.smiles_column!r} "
        f"--target-columns {' '.join(map(repr, spec.target_columns))}"
      ) from e
    print(_summary_line(summary, out), flush=True)
    tests.append(summary[f"test_{summary['metric']}"])
  if len(runs) > 1:
    base = runs[0][1].parent
    print(
      f"{len(runs)} runs in {base}: test {summary['metric']} "
      f"{np.mean(tests):.4f} +- {np.std(tests, ddof=1):.4f} (mean +- std); "
      f"predict with: graphsam-predict --run {base} --smiles <csv> --out "
      "<preds.csv>",
      flush=True,
    )
  return 0


def main(argv: Sequence[str] | None = None) -> int:
  allocator.retain_freed_memory()  # before JAX runs anything
  parser = make_parser()
  args = parser.parse_args(argv)
  return cli.run(
    parser.prog,
    lambda: _train(parser, args),
    debug=args.debug,
    on_interrupt="; the same command resumes after the last finished epoch",
  )


if __name__ == "__main__":
  sys.exit(main())
