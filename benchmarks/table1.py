"""The paper's accuracy table: datasets x optimizers x seeds, resumable.

Every run is one ``models.train.train_and_evaluate`` experiment with the
paper's CoMPT set-up (``models.configs.default``, reference notes §4: a
random 80/10/10 split per seed, batch 32, Adam with the warm-up and decay
schedule, early stopping on the validation metric, the best validation
checkpoint scored once on test), with the optimizer taken from the
``graphsam_optax`` registry ("adam" is Adam alone). Options change the
*schedule* (``--epochs``, ``--patience``, ``--warmup-epochs``,
``--lr-decay-epochs``, ``--max-molecules``, ``--batch-size``, ``--config
test``); ``--rho`` and ``--gamma`` add a cell per value (per
combination) for every optimizer that has the hyperparameter (the registry
default is the plain cell): ``--optimizers graphsam --gamma 1`` keeps
GraphSAM's ρ constant, ``--optimizers sam --gamma 0.5`` runs SAM on
GraphSAM's decaying ρ.

All runs train one after another in this process, in the order dataset,
seed, optimizer, so a grid cut short leaves whole seeds. Each run has its own
directory under the first ``--runs`` root::

  <root>/<schedule>/<dataset>/<optimizer>[-rho0.1]/seed<k>/

(``<schedule>`` is ``paper_schedule``, or the changed options, e.g.
``epochs4-patience4-warmup1-decay4``). A run is never trained again once a
finished run of the same configuration (``config.json`` and
``summary.json``) is found under any ``--runs`` root, or is kept in the
stored results; a killed run resumes from its checkpoints. A run whose loss
diverges is recorded as such and not retried (``--retry-failed`` retries).

After every run the report is rewritten in ``--out``, named after the
schedule (``table1_paper_schedule`` for the paper's):

* ``<stem>.json``: every finished run of the schedule as a compact record
  (the run directories, with their checkpoints, are too big to commit), the
  seeds asked by every command so far, the cells and the paired tests;
* ``<stem>.md``: the table (mean ± std over seeds, partial cells marked),
  the paper's numbers beside it, paired differences GraphSAM − SAM,
  GraphSAM − Adam and SAM − Adam with paired t and Wilcoxon tests, wall time
  and gradient passes per run, a computed reading, the ρ sweep;
* ``<stem>.png`` and, with a sweep, ``<stem>_rho.png``.

The report covers every run of the schedule found, not only this command's
grid, so the ρ sweep is drawn against the main grid's Adam and SAM.

Run from the repository root (``GRAPHSAM_DATA_DIR`` names the MoleculeNet
CSVs)::

  python -m benchmarks.table1 --datasets bbbp --seeds 0 1 2 3 4
  python -m benchmarks.table1 --datasets clintox sider esol freesolv
  python -m benchmarks.table1 --datasets bbbp esol --optimizers graphsam \\
    --rho 0.01 0.02 0.1 0.2                   # the rho sweep
  python -m benchmarks.table1 --datasets bbbp esol freesolv \\
    --optimizers graphsam --gamma 1           # a control: rho kept
  python -m benchmarks.table1 --report-only   # rewrite the report

Grids run from two frozen worktrees at once each keep their own stored
results; ``--merge`` folds another store into this one (runs, seeds asked
and divergences; this store's record wins a slot both hold)::

  python -m benchmarks.table1 --report-only --runs /nonexistent \
    --merge ../grid26/benchmarks/results/table1_paper_schedule.json
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import itertools
import json
import math
import time
import warnings
from collections.abc import Callable
from collections.abc import Sequence
from pathlib import Path

import graphsam_optax
from benchmarks import common
from benchmarks import table1_report as report_lib
from models import allocator
from models import cli
from models import configs
from models import datasets
from models import input_pipeline
from models import optim
from models import run_dir
from models import train
from models.configs import default

NAME = "table1"
# Config fields a command may change, with their words in schedule names.
SCHEDULE_FIELDS = {
  "epochs": "epochs",
  "patience": "patience",
  "warmup_epochs": "warmup",
  "lr_decay_epochs": "decay",
  "max_molecules": "mols",
  "batch_size": "batch",
}
PAPER_SCHEDULE = "paper_schedule"
# Hyperparameters a command may give several values of: a cell per value
# (per combination) for every optimizer that has them.
SWEEPABLE = ("rho", "gamma")


@dataclasses.dataclass(frozen=True)
class Schedule:
  """What every run of a report shares: a config module and its changes.

  Attributes:
    config: ``"default"`` (the paper's set-up) or ``"test"`` (tiny).
    changes: ``(field, value)`` pairs of :data:`SCHEDULE_FIELDS` that differ
      from the config module's values (which are the same for every
      dataset).
  """

  config: str
  changes: tuple[tuple[str, float], ...]

  @classmethod
  def from_args(cls, args: argparse.Namespace) -> Schedule:
    reference = configs.get_config(args.config, "bbbp")
    changes = tuple(
      (field, getattr(args, field))
      for field in SCHEDULE_FIELDS
      if getattr(args, field) is not None
      and getattr(args, field) != getattr(reference, field)
    )
    return cls(args.config, changes)

  @property
  def tag(self) -> str:
    """``paper_schedule``, or the config and changes, e.g. ``test-epochs1``."""
    words = [] if self.config == "default" else [self.config]
    words += [f"{SCHEDULE_FIELDS[k]}{v:g}" for k, v in self.changes]
    return "-".join(words) or PAPER_SCHEDULE

  @property
  def stem(self) -> str:
    return f"{NAME}_{self.tag}"

  def config_for(self, slot: dict) -> default.Config:
    """The training Config of a run (a slot: dataset, optimizer, ...)."""
    return (
      configs.get_config(self.config, slot["dataset"])
      .replace(**dict(self.changes))
      .replace(
        optimizer=slot["optimizer"],
        hyperparameters=dict(slot["hyperparameters"]),
        seed=slot["seed"],
      )
    )

  @property
  def name(self) -> str:
    """``the paper's schedule`` or ``schedule <tag>``."""
    if self.tag == PAPER_SCHEDULE:
      return "the paper's schedule"
    return f"schedule {self.tag}"

  def describe(self) -> str:
    """The schedule's training set-up in words."""
    c = self.config_for(
      {"dataset": "bbbp", "optimizer": "adam", "hyperparameters": {}, "seed": 0}
    )
    sizes = "/".join(f"{100 * s:g}" for s in c.split_sizes)
    subset = (
      f", at most {c.max_molecules} molecules per split part"
      if c.max_molecules
      else ""
    )
    return (
      f"models.configs.{self.config}: {c.split} {sizes} split per seed, "
      f"batch {c.batch_size}, learning rate warmed up over "
      f"{c.warmup_epochs:g} epochs and decayed until epoch "
      f"{c.lr_decay_epochs:g}, up to {c.epochs} epochs, early stop after "
      f"{c.patience} without validation improvement{subset}"
    )


def slot_key(entry: dict) -> tuple:
  """A run's identity in a schedule: its cell and seed."""
  return (*report_lib.cell_key(entry), entry["seed"])


def _describe(entry: dict) -> str:
  name = report_lib.cell_name(entry["optimizer"], entry["hyperparameters"])
  return f"{entry['dataset']} {name} seed {entry['seed']}"


def overrides(config: default.Config) -> dict:
  """The config's hyperparameters that differ from the registry's."""
  defaults = graphsam_optax.optimizer_spec(config.optimizer).defaults
  return {
    k: v for k, v in config.hyperparameters.items() if defaults.get(k) != v
  }


def grid(args: argparse.Namespace) -> list[dict]:
  """This command's runs (slots) in training order."""
  cells = []
  for optimizer in args.optimizers:
    defaults = graphsam_optax.optimizer_spec(optimizer).defaults
    choices = []
    for name in SWEEPABLE:
      values = getattr(args, name)
      values = values if values and name in defaults else [None]
      choices.append(
        [{} if v is None or v == defaults[name] else {name: v} for v in values]
      )
    cells += [
      (optimizer, {**rho, **gamma})
      for rho, gamma in itertools.product(*choices)
    ]
  return list(
    {
      slot_key(slot): slot
      for slot in (
        {
          "dataset": dataset,
          "optimizer": optimizer,
          "hyperparameters": hyperparameters,
          "seed": seed,
        }
        for dataset in args.datasets
        for seed in args.seeds
        for optimizer, hyperparameters in cells
      )
    }.values()
  )


def run_path(root: Path, schedule: Schedule, slot: dict) -> Path:
  cell = report_lib.cell_name(slot["optimizer"], slot["hyperparameters"])
  return root / schedule.tag / slot["dataset"] / cell / f"seed{slot['seed']}"


def canonical(config: dict) -> dict:
  """A ``config.json`` as compared between runs.

  Missing fields take the Config defaults (as ``models.run_dir.check``
  does) and the optimizer's hyperparameters are the effective ones
  (registry defaults merged), so ``{"rho": 0.05}`` equals ``{}``.
  """
  parsed = run_dir.config_from_record(config)
  record = dataclasses.asdict(parsed)
  record["hyperparameters"] = optim.optimizer_hyperparameters(parsed)
  return json.loads(json.dumps(record, default=repr))


def _differences(found: dict, wanted: dict) -> str:
  return "; ".join(
    f"{k} {json.dumps(found.get(k))} there, {json.dumps(wanted.get(k))} here"
    for k in sorted(set(found) | set(wanted))
    if found.get(k) != wanted.get(k)
  )


def mismatch(entry: dict, schedule: Schedule) -> str | None:
  """Why a run record or failure is not of ``schedule`` (None: it is)."""
  if not default.has_config(entry["dataset"]):
    return f"dataset {entry['dataset']} has no configuration of its own"
  try:
    found = canonical(entry["config"])
  except ValueError as e:  # e.g. an optimizer no longer in the registry
    return str(e)
  wanted = canonical(dataclasses.asdict(schedule.config_for(entry)))
  return None if found == wanted else _differences(found, wanted)


def read_run(path: Path) -> dict:
  """The compact record of a finished run directory.

  Steps per epoch come from the run's ``split.json`` (None without one);
  gradient passes are the registry's expected passes per step times steps
  per epoch times epochs trained (None where data dependent).
  """
  run = common.load_run(path)
  summary, config = run["summary"], run["config"]
  parsed = run_dir.config_from_record(config)
  steps = None
  if (path / run_dir.SPLIT).exists():
    train_rows = json.loads((path / run_dir.SPLIT).read_text())["train"]
    steps = input_pipeline.num_batches(
      len(train_rows), parsed.batch_size, parsed.drop_last
    )
  per_step = None
  if steps:
    per_step = graphsam_optax.optimizer_spec(parsed.optimizer).mean_passes(
      optim.optimizer_hyperparameters(parsed), steps
    )
  return {
    **common.summary_row(summary),
    "hyperparameters": overrides(parsed),
    "train_seconds": float(run["metrics"]["train_seconds"].sum()),
    "graphs_per_s": summary["graphs_per_s"],
    "compile_seconds": summary.get("compile_seconds"),
    "steps_per_epoch": steps,
    "gradient_passes": None
    if per_step is None
    else per_step * steps * summary["epochs"],
    "num_params": summary["num_params"],
    "subsets": summary.get("test_subsets", {}),
    "run": str(path),
    "config": config,
  }


def collect(
  roots: Sequence[Path],
  stored: Sequence[dict],
  schedule: Schedule,
  log: Callable[[str], None],
) -> tuple[dict, list[Path]]:
  """The schedule's finished runs by slot key, and the unfinished dirs.

  Run directories under ``roots`` come first (in root order), then the
  stored records no directory replaces. Stored records of another
  configuration are dropped, and said so.
  """
  finished, unfinished = run_dir.walk_runs(roots)
  runs, others = {}, 0
  for path in finished:
    try:
      record = read_run(path)
    except (OSError, ValueError, KeyError) as e:
      log(f"skipping {path}: cannot read it ({type(e).__name__}: {e})")
      continue
    if mismatch(record, schedule) is None:
      runs.setdefault(slot_key(record), record)
    else:
      others += 1
  if others:
    log(
      f"{others} finished runs under {', '.join(map(str, roots))} are of "
      "other configurations (not in this report)"
    )
  for record in stored:
    why = mismatch(record, schedule)
    if why is None:
      runs.setdefault(slot_key(record), record)
    else:
      log(f"dropping the stored run {_describe(record)}: {why}")
  return runs, unfinished


def read_store(path: Path) -> dict:
  """The stored results of a schedule (empty when there are none yet).

  Raises:
    ValueError: the file cannot be read; says what to do.
  """
  if not path.exists():
    return {"asked": [], "runs": [], "failed": []}
  try:
    stored = json.loads(path.read_text())
    return {key: stored[key] for key in ("asked", "runs", "failed")}
  except (OSError, json.JSONDecodeError, KeyError, TypeError) as e:
    raise ValueError(
      f"cannot read the stored results {path} ({type(e).__name__}: {e}); "
      f"restore it (git checkout -- {path}) or move it away to start the "
      "report afresh"
    ) from e


def _finite(value):
  """``value`` with NaN and infinities as None (standard JSON)."""
  if isinstance(value, float) and not math.isfinite(value):
    return None
  if isinstance(value, dict):
    return {k: _finite(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_finite(v) for v in value]
  return value


def write_store(path: Path, report: dict) -> None:
  """The report as JSON, one line per run, cell or pair (readable diffs)."""
  parts = []
  for key, value in _finite(report).items():
    if isinstance(value, list):
      items = ",\n".join(f"  {json.dumps(v)}" for v in value)
      parts.append(f" {json.dumps(key)}: [\n{items}\n ]")
    else:
      parts.append(f" {json.dumps(key)}: {json.dumps(value)}")
  run_dir.write_text(path, "{\n" + ",\n".join(parts) + "\n}\n")


def _positive(kind):
  def parse(text: str):
    value = kind(text)
    if not value > 0:
      raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value

  parse.__name__ = kind.__name__
  return parse


def _configured_dataset(text: str) -> str:
  """An argparse type: a dataset with a configuration, as it is spelled."""
  if not default.has_config(text):
    raise argparse.ArgumentTypeError(
      f"{text!r} has no configuration; choose from "
      f"{', '.join(default.MODEL_SIZES)} or moleculeace/<set>"
    )
  return default.get_config(text).dataset


def make_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
    prog=f"python -m benchmarks.{NAME}",
    description=__doc__.split("\n")[0],
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  parser.add_argument(
    "--datasets",
    nargs="+",
    type=_configured_dataset,
    metavar="NAME",
    help=f"of {', '.join(default.MODEL_SIZES)} or moleculeace/<set> (needed "
    "unless --report-only)",
  )
  parser.add_argument(
    "--optimizers",
    nargs="+",
    default=["adam", "sam", "graphsam"],
    choices=optim.OPTIMIZERS,
    metavar="NAME",
    help=f"of {', '.join(optim.OPTIMIZERS)} (default adam sam graphsam)",
  )
  parser.add_argument(
    "--seeds", nargs="+", type=int, default=[0, 1, 2], metavar="K"
  )
  parser.add_argument(
    "--rho",
    nargs="+",
    type=_positive(float),
    metavar="R",
    help="a cell per value for each optimizer with a rho (the sweep)",
  )
  parser.add_argument(
    "--gamma",
    nargs="+",
    type=_positive(float),
    metavar="G",
    help="a cell per value for each optimizer with a gamma, the factor "
    "rho shrinks by once per decay_epochs epochs (1 keeps rho constant; "
    "sam takes GraphSAM's schedule with gamma < 1)",
  )
  parser.add_argument(
    "--config",
    choices=sorted(configs.CONFIGS),
    default="default",
    help="models.configs module: the paper's set-up or the tiny test one",
  )
  schedule = parser.add_argument_group(
    "schedule (changes the training config; unset: the config's value)"
  )
  for field in SCHEDULE_FIELDS:
    kind = float if field.endswith("_epochs") else int
    schedule.add_argument(
      f"--{field.replace('_', '-')}", type=_positive(kind), dest=field
    )
  parser.add_argument(
    "--runs",
    nargs="+",
    type=Path,
    default=[Path("runs/table1")],
    metavar="DIR",
    help="run roots: new runs go to the first; all are searched for "
    "finished runs of the schedule (default runs/table1)",
  )
  parser.add_argument(
    "--out",
    type=Path,
    default=Path("benchmarks/results"),
    help="report directory (default benchmarks/results)",
  )
  parser.add_argument("--data-dir", help="MoleculeNet CSVs")
  parser.add_argument("--cache-dir", help="downloads and featurized molecules")
  parser.add_argument(
    "--compile-cache",
    help="persistent XLA compilation cache (default <first root>/"
    "compile_cache; 'none' disables)",
  )
  parser.add_argument(
    "--epoch-progress", action="store_true", help="a bar per epoch too"
  )
  parser.add_argument(
    "--report-only", action="store_true", help="rewrite the report, train none"
  )
  parser.add_argument(
    "--merge",
    nargs="+",
    type=Path,
    default=[],
    metavar="JSON",
    help="stored results of the same schedule written elsewhere (another "
    "worktree's --out) to fold into this report",
  )
  parser.add_argument(
    "--retry-failed",
    action="store_true",
    help="train again the runs of this grid that diverged before",
  )
  return parser


def parse_args(parser, argv=None) -> argparse.Namespace:
  args = parser.parse_args(argv)
  if args.datasets is None and not args.report_only:
    parser.error(
      "argument --datasets: name the datasets to train (or pass "
      "--report-only to rewrite the report)"
    )
  negative = [s for s in args.seeds if s < 0]
  if negative:
    parser.error(f"argument --seeds: seeds must be >= 0, got {negative}")
  for name in SWEEPABLE:
    if getattr(args, name) and not any(
      name in graphsam_optax.optimizer_spec(o).defaults for o in args.optimizers
    ):
      parser.error(
        f"argument --{name}: none of --optimizers "
        f"{' '.join(args.optimizers)} has a {name}; add one that does "
        "(e.g. graphsam)"
      )
  if args.gamma and any(g > 1 for g in args.gamma):
    parser.error(
      f"argument --gamma: must be in (0, 1] (rho shrinks), got {args.gamma}"
    )
  for name in ("datasets", "optimizers", "seeds", *SWEEPABLE):
    if getattr(args, name):
      setattr(args, name, list(dict.fromkeys(getattr(args, name))))
  args.datasets = args.datasets or []
  return args


def train_run(schedule: Schedule, slot: dict, path: Path, args) -> None:
  """Trains (or resumes) one run into ``path``."""
  prefix = f"  [{_describe(slot)}]"
  with warnings.catch_warnings():
    # The same unparseable and repeated SMILES at every load of a dataset;
    # each run directory records them (data.json, dropped_rows.csv).
    warnings.simplefilter("ignore", datasets.InvalidSmilesWarning)
    warnings.simplefilter("ignore", datasets.DuplicateSmilesWarning)
    train.train_and_evaluate(
      schedule.config_for(slot),
      path,
      data_dir=args.data_dir,
      cache_dir=args.cache_dir,
      progress=args.epoch_progress,
      log=lambda line: print(f"{prefix} {line}", flush=True),
    )


def _minutes(seconds: float) -> str:
  return f"{seconds / 60:.1f} min"


def main(
  argv=None,
  name: str = NAME,
  report_module=report_lib,
  stem_of: Callable[[Schedule], str] = lambda schedule: schedule.stem,
) -> dict:
  """Runs the grid of ``argv``.

  Args:
    argv: the command line (None: ``sys.argv[1:]``).
    name: the script the report names.
    report_module: builds and writes the report: ``build(runs, asked,
      failed, **context)``, ``write(report, out)`` and ``main_table(cells)``
      as :mod:`benchmarks.table1_report` has them.
    stem_of: the report's file name (without suffix) for a schedule.
  """
  allocator.retain_freed_memory()  # before JAX runs anything
  parser = make_parser()
  args = parse_args(parser, argv)
  command = common.command(name, argv)
  info = common.machine()
  print(f"command: {command}\nmachine: {info}", flush=True)
  schedule = Schedule.from_args(args)
  stem = stem_of(schedule)
  store_path = args.out / f"{stem}.json"
  try:
    stored = read_store(store_path)
  except ValueError as e:
    parser.error(f"argument --out: {e}")
  for path in args.merge:
    if not path.exists():
      parser.error(f"argument --merge: {path} does not exist")
    try:
      other = read_store(path)
    except ValueError as e:
      parser.error(f"argument --merge: {e}")
    for key in stored:
      stored[key] = [*stored[key], *other[key]]
  runs, unfinished = collect(args.runs, stored["runs"], schedule, print)
  failed = {}
  for f in stored["failed"]:
    if mismatch(f, schedule) is None:
      failed.setdefault(slot_key(f), f)
  slots = grid(args)
  if args.retry_failed:
    for slot in slots:
      failed.pop(slot_key(slot), None)
  asked = {slot_key(s): s for s in [*stored["asked"], *slots]}
  done = runs.keys() | failed.keys()
  todo = [s for s in slots if slot_key(s) not in done]
  own = {run_path(args.runs[0], schedule, s) for s in todo}
  for path in unfinished:
    if path not in own:
      print(f"skipping the unfinished run {path} (no summary.json)")
  print(
    f"{schedule.name} ({schedule.describe()}): {len(slots) - len(todo)} of "
    f"this command's {len(slots)} runs done or diverged, {len(todo)} to "
    f"train{' (not with --report-only)' if args.report_only else ''}; "
    f"{len(runs)} finished runs of the schedule found",
    flush=True,
  )
  args.out.mkdir(parents=True, exist_ok=True)

  def rewrite_report() -> dict:
    report = report_module.build(
      sorted(runs.values(), key=slot_key),
      list(asked.values()),
      list(failed.values()),
      stem=stem,
      schedule_name=schedule.name,
      schedule_text=schedule.describe(),
      command=command,
      machine=info,
      written=datetime.datetime.now().isoformat(timespec="seconds"),
    )
    paths = report_module.write(report, args.out)
    write_store(
      store_path, {"schedule": dataclasses.asdict(schedule), **report}
    )
    return {**report, "paths": [store_path, *paths]}

  report = rewrite_report()
  if todo and not args.report_only:
    cache = args.compile_cache or str(args.runs[0] / "compile_cache")
    cli.enable_compile_cache(None if cache == "none" else cache)
    start = time.perf_counter()
    for i, slot in enumerate(todo, 1):
      path = run_path(args.runs[0], schedule, slot)
      tag = f"[{i}/{len(todo)}] {_describe(slot)}"
      print(f"{tag}: training in {path}", flush=True)
      tic = time.perf_counter()
      try:
        train_run(schedule, slot, path, args)
      except run_dir.RunDirError as e:
        raise SystemExit(
          f"{tag}: {e} (for table1: pass a new first --runs root)"
        ) from e
      except train.NonFiniteLossError as e:
        failed[slot_key(slot)] = {
          **slot,
          "config": dataclasses.asdict(schedule.config_for(slot)),
          "error": str(e),
        }
        outcome = f"diverged ({e})"
      else:
        runs[slot_key(slot)] = record = read_run(path)
        outcome = (
          f"test {record['metric']} {record['test']:.4f} after "
          f"{record['epochs']} epochs (best {record['best_epoch']})"
        )
      print(
        f"{tag}: {outcome}, {_minutes(time.perf_counter() - tic)}; "
        f"{_minutes(time.perf_counter() - start)} since the first run",
        flush=True,
      )
      report = rewrite_report()
  print(report_module.main_table(report["cells"]))
  print(f"wrote {', '.join(map(str, report['paths']))}")
  return report


if __name__ == "__main__":
  main()
