"""How far an accelerator's reduced-precision float32 matmul moves srlm's figures, measured on
any backend: every float32 product's inputs rounded to TF32 (runtime.imitate_tf32, what JAX's
DEFAULT does on an H200) against full float32, at PTB sizes, on the same sentences, chains and
random numbers:
  * the exact log-det importance-sampled NLL (SRI's own estimate, M chains per sentence);
  * the AIS estimate (N steps, C chains);
  * one training step (the loss, and the parameters' update).
Per sentence: the mean and largest |difference| in nats, and the mean signed difference (a
bias would show there). The precision policy keeps evaluation at HIGHEST, where the rounding is
not applied (tests/runtime_test.py); this says what it protects. Writes
benchmarks/results/precision_<backend>.json.

    python benchmarks/precision.py                       # PTB sizes, the decoder at init
    python benchmarks/precision.py --workdir=DIR         # a trained run (any SRI workdir)
"""

import os
import sys
import time

from absl import app
from absl import flags
import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # pylint: disable=wrong-import-position

from srlm import cli  # pylint: disable=wrong-import-position
from srlm import config as config_lib  # pylint: disable=wrong-import-position
from srlm import evaluate  # pylint: disable=wrong-import-position
from srlm import methods  # pylint: disable=wrong-import-position
from srlm import runs  # pylint: disable=wrong-import-position
from srlm import runtime  # pylint: disable=wrong-import-position
from srlm import state as state_lib  # pylint: disable=wrong-import-position
from srlm.data import pipeline  # pylint: disable=wrong-import-position

_WORKDIR = flags.DEFINE_string("workdir", "", "A trained SRI run; empty: launch/ptb.flags' "
                               "decoder at its initialisation.")
_SENTENCES = flags.DEFINE_integer("sentences", 16, "Test sentences (the split's first).")
_SAMPLES = flags.DEFINE_integer("samples", 4, "M, chains per sentence of the log-det NLL.")
_AIS_STEPS = flags.DEFINE_integer("ais_steps", 100, "N of the AIS estimate.")
_AIS_CHAINS = flags.DEFINE_integer("ais_chains", 2, "C of the AIS estimate.")


def _differences(full: np.ndarray, rounded: np.ndarray) -> dict[str, float]:
  d = np.asarray(rounded, np.float64) - np.asarray(full, np.float64)
  return {"mean_abs": float(np.mean(np.abs(d))), "max_abs": float(np.max(np.abs(d))),
          "mean": float(np.mean(d)), "mean_value": float(np.mean(full)),
          "relative_mean_abs": float(np.mean(np.abs(d) / np.abs(full)))}


def _config() -> config_lib.Config:
  if _WORKDIR.value:
    return config_lib.load_run_config(_WORKDIR.value)
  return cli.config_from_flags(["--flagfile=launch/ptb.flags"])


def _run(config) -> runs.TrainedRun:
  if _WORKDIR.value:
    return runs.restore_trained(config, _WORKDIR.value)
  corpus = pipeline.load_corpus(config.data)
  method = methods.get(config, len(corpus.vocab))
  params = method.init_params(jax.random.key(0))
  return runs.TrainedRun(corpus, method, params, 0, None)


def main(argv):
  del argv
  config = _config()
  config = config_lib.from_dict({**config_lib.to_dict(config), "eval": {
      **config_lib.to_dict(config)["eval"], "max_sentences": _SENTENCES.value,
      "num_samples": _SAMPLES.value, "ais_steps": _AIS_STEPS.value,
      "ais_chains": _AIS_CHAINS.value, "batch_size": 8}})
  run = _run(config)
  split = run.corpus.splits["test"]
  rng = jax.random.key(0)

  def figures(precision: str) -> dict[str, np.ndarray]:
    with runtime.matmul_precision(precision):
      own = evaluate.evaluate_split(config, run.method, run.params, split, rng)
      ais = evaluate.evaluate_split(
          config, run.method, run.params, split, rng,
          estimator=evaluate.annealed_importance_sampling(config, run.method, run.params))
      step = train_step(precision)
    return {"own_nll": np.asarray(own["sentence_nll"]),
            "ais_nll": np.asarray(ais["sentence_nll"]), **step}

  def train_step(precision: str) -> dict[str, np.ndarray]:
    """One step from the run's parameters (fresh optimiser state) on the split's first
    batch-size sentences of up to 20 words, at the precision in force."""
    del precision
    state = state_lib.TrainState.create(run.params, config.train, run.method.optimizers)
    sentences = [s for s in split.sentences if len(s) <= 20][:config.data.batch_size]
    batch = {**pipeline.make_batch(sentences, 22, config.data.batch_size),
             "epoch": np.int32(0)}
    new_state, metrics = jax.jit(run.method.train_step)(state, batch, jax.random.key(1))
    update = jax.tree.map(lambda n, o: np.asarray(n) - np.asarray(o), new_state.params,
                          state.params)
    return {"loss": np.asarray([float(metrics["nll_sum"])]),
            "update": np.concatenate([u.ravel() for u in jax.tree.leaves(update)])}

  start = time.time()
  full = figures("highest")
  with runtime.imitate_tf32():
    rounded = figures("default")
  result = {"own_nll": _differences(full["own_nll"], rounded["own_nll"]),
            "ais_nll": _differences(full["ais_nll"], rounded["ais_nll"])}
  u, v = full["update"], rounded["update"]
  result["train_step"] = {
      "loss": _differences(full["loss"], rounded["loss"]),
      "update_relative_difference": float(np.linalg.norm(v - u) / np.linalg.norm(u)),
      "update_cosine": float(u @ v / np.linalg.norm(u) / np.linalg.norm(v))}
  settings = {"workdir": _WORKDIR.value or "(launch/ptb.flags at initialisation)",
              "checkpoint_step": run.step, "sentences": _SENTENCES.value,
              "num_samples": _SAMPLES.value, "ais_steps": _AIS_STEPS.value,
              "ais_chains": _AIS_CHAINS.value, "model_kind": run.method.name,
              "sizes": [config.model.embed_dim, config.model.hidden_dim,
                        config.model.latent_dim], "seconds": time.time() - start}
  for name, d in result.items():
    print(name, d)
  path = common.write_result("precision", {**settings, "tf32_minus_float32": result})
  print(f"wrote {path}")


if __name__ == "__main__":
  app.run(main)
