"""Data-parallel training across processes, as on a TPU pod slice or GPU hosts.

``python -m tests.models.multihost PROCESS_ID NUM_PROCESSES PORT OUT``
starts one process of a localhost "cluster" (``jax.distributed`` with a
local coordinator and CPU collectives over gloo); with ``NUM_PROCESSES`` 1
it is the single-process reference. Every process trains the tiny test
configuration for two epochs with the engine of ``models.train`` over all
devices of all processes, building only its own devices' batches, and
process 0 writes the per-epoch losses, the final parameters and their
predictions on a validation batch to ``OUT`` (``.npz``).
"""

import sys

import jax
import numpy as np


def train_two_epochs(out: str) -> None:
  from models import engine as engine_lib
  from models import input_pipeline
  from models import optim
  from models.configs import test as test_config
  from tests.models import synthetic

  config = test_config.get_config().replace(epochs=2, optimizer="graphsam")
  data = input_pipeline.data_for(config, cache_dir=synthetic.TEST_CACHE)
  spec = data.dataset.spec
  steps = data.steps_per_epoch(config.drop_last)
  fns = engine_lib.build(config, spec.num_tasks, spec.task_type, steps)
  engine = engine_lib.make_engine(
    fns, data, config, spec.task_type, None, print
  )
  assert engine.num_devices == 8, engine.num_devices
  values = optim.hyperparameter_values(config)
  first = next(data.train_batches(0, config.seed, config.drop_last))
  params, opt_state = engine_lib.to_host(
    fns.init(config.seed, first.graphs, values, data.blocks_of(first))
  )
  params, opt_state, values = engine.place((params, opt_state, values))
  losses = []
  for epoch in (1, 2):
    params, opt_state, totals, _, _ = engine_lib.train_epoch(
      engine, params, opt_state, values, epoch, config, False
    )
    losses.append(float(totals.loss_sum / totals.steps))
  clean = engine_lib.to_host(fns.eval_params(opt_state, params))
  batch = next(data.eval_batches("valid"))
  predictions = fns.predict(clean, batch.graphs, data.blocks_of(batch))
  if jax.process_index() == 0:
    leaves = {
      jax.tree_util.keystr(path): x
      for path, x in jax.tree_util.tree_flatten_with_path(clean)[0]
    }
    np.savez(
      out,
      losses=np.array(losses),
      predictions=np.asarray(predictions)[batch.graph_mask],
      **leaves,
    )
  print(f"process {jax.process_index()}: epoch losses {losses}", flush=True)


def main(argv) -> None:
  process_id, num_processes, port, out = argv
  if int(num_processes) > 1:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
      coordinator_address=f"localhost:{port}",
      num_processes=int(num_processes),
      process_id=int(process_id),
    )
  train_two_epochs(out)


if __name__ == "__main__":
  main(sys.argv[1:])
