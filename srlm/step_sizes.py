"""Step sizes fitted after training (docs/method.md §7): `--mode=fit_step_sizes`.

For any trained run with a short-run chain (sri, sri_learned), the decoder is held fixed and
the K log step sizes take langevin.fit_steps Adam steps (rate langevin.learn_rate) on the
short-run ELBO of random sub-batches of langevin.learn_batch validation sentences, starting
from the run's own step sizes. The result is saved beside the checkpoint, as
WORKDIR/step_sizes/fitted_<step>.json (with the validation ELBO's mean and median before and
after, one chain per sentence, same noise), and `--mode=eval --config.eval.step_sizes=fitted` evaluates with it.
"""

import json
import os
import time
from typing import Any

from absl import logging
import jax
import numpy as np
import optax

from srlm import parallel
from srlm import reporting
from srlm import runs
from srlm.config import Config
from srlm.data import pipeline
from srlm.errors import ConfigError, UserError
from srlm.methods import base


def fitted_path(workdir: str, step: int) -> str:
  return os.path.join(workdir, "step_sizes", f"fitted_{step}.json")


def _require_chain(run: runs.TrainedRun, what: str) -> None:
  if run.method.step_size_elbo is None:
    raise ConfigError(f"{what}: the run's method {run.method.name!r} has no short-run chain, "
                      "so it has no step sizes to fit")


def with_fitted(workdir: str, run: runs.TrainedRun) -> runs.TrainedRun:
  """The run with the step sizes fitted for its checkpoint in its params. Raises UserError if
  --mode=fit_step_sizes has not been run for that checkpoint."""
  _require_chain(run, "--config.eval.step_sizes=fitted")
  path = fitted_path(workdir, run.step)
  if not os.path.exists(path):
    raise UserError(f"no fitted step sizes for the checkpoint of step {run.step} ({path} is "
                    f"missing): run python -m srlm.main --mode=fit_step_sizes "
                    f"--workdir={workdir} first.")
  try:
    with open(path) as f:
      fitted = np.asarray(json.load(f)["step_sizes"], np.float32)
  except (OSError, ValueError, KeyError) as e:
    raise UserError(f"cannot read the fitted step sizes in {path} ({e}): fit them again with "
                    f"--mode=fit_step_sizes.") from None
  expected = run.method.step_sizes(run.params).shape[0]
  if fitted.shape != (expected,):
    raise UserError(f"{path} holds {fitted.size} step sizes; the run's chain has {expected} "
                    "steps (--config.langevin.num_steps): fit them again.")
  params = {**run.params, base.STEP_SIZES_PART: {"log_step_sizes": np.log(fitted)}}
  return run._replace(params=params)


def split_elbos(config: Config, run: runs.TrainedRun, params, split: pipeline.Split,
                mesh: jax.sharding.Mesh, rng: jax.Array) -> np.ndarray:
  """Each sentence's short-run ELBO (one chain) under the step sizes `params` carry."""
  elbo = parallel.jit_replicated(run.method.step_size_elbo, mesh)
  return np.concatenate([out for _, out in parallel.map_split(
      lambda batch, key: elbo(params, batch, key), split, config.data.buckets,
      config.eval.batch_size, mesh, rng, label=f"short-run ELBO on {split.name}")])


def fit_workdir(config: Config, workdir: str) -> dict[str, Any]:
  """Fits the step sizes of the workdir's latest checkpoint on its validation split and writes
  them (see the module docstring); returns what was written, with its path."""
  run = runs.restore_trained(config, workdir)
  _require_chain(run, "--mode=fit_step_sizes")
  lcfg = config.langevin
  mesh = parallel.make_mesh(config.parallel.num_devices)
  parallel.check_batch_size(lcfg.learn_batch, mesh, "langevin.learn_batch")
  parallel.check_batch_size(config.eval.batch_size, mesh, "eval.batch_size")
  split = run.corpus.splits["valid"]
  if config.eval.max_sentences and config.eval.max_sentences < len(split):
    split = split.head(config.eval.max_sentences)
  initial_K = np.asarray(run.method.step_sizes(run.params), np.float32)
  tx = optax.adam(lcfg.learn_rate)
  part = {"log_step_sizes": np.log(initial_K)}
  opt_state = tx.init(part)

  def update_fn(part, opt_state, batch, rng):
    def loss_fn(part):
      values_B = run.method.step_size_elbo({**run.params, base.STEP_SIZES_PART: part}, batch,
                                           rng)
      return -base.sentence_mean(values_B, batch)
    loss, grad = jax.value_and_grad(loss_fn)(part)
    updates, opt_state = tx.update(grad, opt_state, part)
    return optax.apply_updates(part, updates), opt_state, -loss

  # Replicated outputs: every process holds the step sizes and can read the ELBO.
  update = parallel.jit_replicated(update_fn, mesh)
  eval_rng, fit_rng = jax.random.split(jax.random.key(config.eval.seed))
  before = split_elbos(config, run, run.params, split, mesh, eval_rng)
  plan = pipeline.plan_batches(split, config.data.buckets, lcfg.learn_batch)
  choice = np.random.default_rng([config.train.seed, run.step])
  elbos, start = [], time.time()
  for i in range(lcfg.fit_steps):
    index = int(choice.integers(len(plan)))
    batch = parallel.global_batch([split.sentences[j] for j in plan.indices[index]],
                                  plan.lengths[index], lcfg.learn_batch, mesh)
    part, opt_state, elbo = update(part, opt_state, batch, jax.random.fold_in(fit_rng, i))
    elbos.append(float(elbo))
    if (i + 1) % max(1, lcfg.fit_steps // 10) == 0 or i + 1 == lcfg.fit_steps:
      logging.info("fit step sizes: %d/%d updates, sub-batch ELBO (last %d) %.2f | ETA %s",
                   i + 1, lcfg.fit_steps, min(len(elbos), 10), np.mean(elbos[-10:]),
                   reporting.format_seconds((time.time() - start) / (i + 1)
                                            * (lcfg.fit_steps - i - 1)))
  fitted_K = np.exp(np.asarray(part["log_step_sizes"], np.float64))
  after = split_elbos(config, run, {**run.params, base.STEP_SIZES_PART: part}, split, mesh,
                      eval_rng)
  result = {
      "checkpoint_step": run.step, "model_kind": run.method.name,
      "step_sizes": fitted_K.tolist(), "initial_step_sizes": initial_K.tolist(),
      # The mean is dominated by a few chains with nearly singular Jacobians; the median is
      # the typical sentence (benchmarks/fitted_elbo_spread.py).
      "valid_elbo_before": float(before.mean()), "valid_elbo_after": float(after.mean()),
      "valid_elbo_median_before": float(np.median(before)),
      "valid_elbo_median_after": float(np.median(after)),
      "valid_sentences": len(split), "fit_steps": lcfg.fit_steps,
      "learn_batch": lcfg.learn_batch, "learn_rate": lcfg.learn_rate,
      "eval_temperature": lcfg.eval_temperature, "sub_batch_elbos": elbos,
      "fit_seconds": time.time() - start,
  }
  path = fitted_path(workdir, run.step)
  reporting.make_dirs(os.path.dirname(path))
  reporting.write_json_atomic(path, result)
  return {**result, "path": path}
