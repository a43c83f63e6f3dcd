"""Run as a script with 8 forced CPU devices (tests/parallel_test.py does): compares sharded
and single-device train steps and evaluation, prints the differences as JSON.

  XLA_FLAGS=--xla_force_host_platform_device_count=8 python tests/multidevice_check.py TFDS_DIR
"""

import json
import sys

import jax
import numpy as np

from srlm import config as config_lib
from srlm import evaluate
from srlm import methods
from srlm import parallel
from srlm import state as state_lib
from srlm import train
from srlm.data import pipeline


def _max_diff(a, b) -> float:
  return max(float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64))))
             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def main(tfds_dir: str) -> None:
  assert jax.device_count() == 8, jax.devices()
  config = config_lib.tiny()
  config.data.dir = tfds_dir
  config.data.batch_size = 16
  config.eval.batch_size = 8
  config.eval.max_sentences = 24
  corpus = pipeline.load_corpus(config.data)
  method = methods.get(config, len(corpus.vocab))
  split = corpus.splits["train"]
  plan = pipeline.epoch_plan(split, config.data, config.train.seed, 0)
  rng = jax.random.key(3)
  mesh = parallel.make_mesh(8)
  out = {}

  single_state = state_lib.create_train_state(method, config.train, jax.random.key(0))
  single_step = train.make_train_step(method)
  sharded_state = state_lib.create_replicated_train_state(method, config.train,
                                                          jax.random.key(0), mesh)
  sharded_step = train.make_train_step(method, mesh=mesh)
  out["initial_params"] = _max_diff(single_state.params, sharded_state.params)
  for i in range(2):
    sentences = [split.sentences[j] for j in plan.indices[i]]
    batch = {**pipeline.make_batch(sentences, plan.lengths[i], 16), "epoch": np.int32(0)}
    sharded_batch = {**parallel.global_batch(sentences, plan.lengths[i], 16, mesh),
                     "epoch": np.int32(0)}
    out["batch_devices"] = len(sharded_batch["inputs"].sharding.device_set)
    out["batch_shard_rows"] = sharded_batch["inputs"].addressable_shards[0].data.shape[0]
    single_state, single_metrics = single_step(single_state, batch, rng)
    sharded_state, sharded_metrics = sharded_step(sharded_state, sharded_batch, rng)
    out[f"step{i + 1}_loss"] = abs(float(single_metrics["loss"]) -
                                  float(sharded_metrics["loss"]))
    out[f"step{i + 1}_params"] = _max_diff(single_state.params, sharded_state.params)
  out["params_replicated"] = bool(jax.tree.leaves(sharded_state.params)[0].sharding
                                  .is_fully_replicated)

  results = {}
  for num_devices in (1, 8):
    config.parallel.num_devices = num_devices
    results[num_devices] = evaluate.evaluate_split(
        config, method, {"decoder": single_state.params["decoder"]}, corpus.splits["valid"],
        jax.random.key(5))
  for key in ("nll", "kl", "rec", "mi"):
    out[f"eval_{key}"] = abs(results[1][key] - results[8][key])
  out["eval_au_equal"] = results[1]["au"] == results[8]["au"]
  out["eval_nll_value"] = results[1]["nll"]
  print(json.dumps(out))


if __name__ == "__main__":
  main(sys.argv[1])
