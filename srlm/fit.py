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
from srlm import runtime
from srlm.config import Config
from srlm.data import pipeline
from srlm.errors import ConfigError, UserError
from srlm.journal import Journal, reuse_or_run, run_settings
from srlm.methods import base


def fitted_path(workdir: str, step: int) -> str:
  return os.path.join(workdir, "step_sizes", f"fitted_{step}.json")


FITTED_SOURCE = "fitted (--mode=fit_step_sizes)"


def _chain(run: runs.TrainedRun, what: str) -> base.Chain:
  if run.method.chain is None:
    raise ConfigError(f"{what}: the run's method {run.method.name!r} has no short-run chain, "
                      "so it has no step sizes to fit")
  return run.method.chain


def with_fitted(workdir: str, run: runs.TrainedRun) -> runs.TrainedRun:
  """The run with its method's chains at the step sizes fitted for its checkpoint. Raises
  UserError if --mode=fit_step_sizes has not been run for that checkpoint."""
  chain = _chain(run, "--config.eval.step_sizes=fitted")
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
  expected = chain.step_sizes(run.params).shape[0]
  if fitted.shape != (expected,):
    raise UserError(f"{path} holds {fitted.size} step sizes; the run's chain has {expected} "
                    "steps (--config.langevin.num_steps): fit them again.")
  return run._replace(method=chain.with_step_sizes(fitted, FITTED_SOURCE))


def split_elbos(config: Config, run: runs.TrainedRun, log_step_sizes_K, split: pipeline.Split,
                rng: jax.Array, journal: Journal | None = None,
                journal_prefix: str = "") -> np.ndarray:
  """Each sentence's short-run ELBO (one chain) with the step sizes exp(log_step_sizes_K);
  with a journal, its batches are journaled (see parallel.map_split)."""
  elbo = parallel.jit_replicated(_chain(run, "split_elbos").elbo, run.mesh)
  log_step_sizes_K = np.asarray(log_step_sizes_K, np.float32)
  return np.concatenate([out["elbo"] for _, out in parallel.map_split(
      lambda batch, key: {"elbo": elbo(run.params, log_step_sizes_K, batch, key)}, split,
      config.data.buckets, config.eval.batch_size, run.mesh, rng,
      label=f"short-run ELBO on {split.name}", journal=journal, journal_prefix=journal_prefix)])


@runtime.at_evaluation_precision
def fit_workdir(config: Config, workdir: str,
                mesh: jax.sharding.Mesh | None = None) -> dict[str, Any]:
  """Fits the step sizes of the workdir's latest checkpoint on its validation split and writes
  them (see the module docstring); returns what was written, with its path."""
  run = runs.restore_trained(config, workdir, mesh)
  chain = _chain(run, "--mode=fit_step_sizes")
  lcfg = config.langevin
  parallel.check_batch_size(lcfg.learn_batch, run.mesh, "langevin.learn_batch")
  parallel.check_batch_size(config.eval.batch_size, run.mesh, "eval.batch_size")
  split = run.corpus.splits["valid"]
  if config.eval.max_sentences and config.eval.max_sentences < len(split):
    split = split.head(config.eval.max_sentences)
  initial_K = np.asarray(chain.step_sizes(run.params), np.float32)
  tx = optax.adam(lcfg.learn_rate)
  part = {"log_step_sizes": np.log(initial_K)}
  opt_state = tx.init(part)
  # The update sri_learned takes during training, here unclipped (as fitted runs always were).
  # Replicated outputs: every process holds the step sizes and can read the ELBO.
  update = parallel.jit_replicated(base.step_size_ascent(chain.elbo, tx), run.mesh)
  # Every update and every batch of the two validation passes is journaled: a stopped fit
  # resumes at the update after the last one journaled, with that update's Adam state, and
  # ends where an uninterrupted one does (update i's sub-batch and noise depend on i alone).
  journal = Journal(workdir, f"fitted_{run.step}",
                    run_settings(config, run.step, runtime.precision_in_force()),
                    config.eval.keep_journal)
  eval_rng, fit_rng = jax.random.split(jax.random.key(config.eval.seed))
  before = split_elbos(config, run, part["log_step_sizes"], split, eval_rng, journal, "before/")
  batches = parallel.random_batches(split, config.data.buckets, lcfg.learn_batch, run.mesh,
                                    (config.train.seed, run.step))
  opt_structure = jax.tree.structure(opt_state)
  elbos, start, computed = [], time.time(), 0
  for i in range(lcfg.fit_steps):
    batch = next(batches)  # drawn for every update, reused or not, to keep the sequence

    def run_update(batch=batch, i=i, part=part, opt_state=opt_state):
      new_part, new_opt_state, elbo = parallel.to_host(update(
          run.params, part, opt_state, batch, jax.random.fold_in(fit_rng, i)))
      return {"log_step_sizes": new_part["log_step_sizes"], "elbo": elbo,
              **{f"adam_{j}": leaf for j, leaf in enumerate(jax.tree.leaves(new_opt_state))}}

    values, ran = reuse_or_run(journal, f"update/{i}", run_update)
    computed += ran
    part = {"log_step_sizes": values["log_step_sizes"]}
    opt_state = jax.tree.unflatten(opt_structure, [
        values[f"adam_{j}"] for j in range(opt_structure.num_leaves)])
    elbos.append(float(values["elbo"]))
    if (i + 1) % max(1, lcfg.fit_steps // 10) == 0 or i + 1 == lcfg.fit_steps:
      logging.info("fit step sizes: %d/%d updates, sub-batch ELBO (last %d) %.2f | ETA %s",
                   i + 1, lcfg.fit_steps, min(len(elbos), 10), np.mean(elbos[-10:]),
                   reporting.format_seconds((time.time() - start) / computed
                                            * (lcfg.fit_steps - i - 1)) if computed
                   else "after the first update run")
  fitted_K = np.exp(np.asarray(part["log_step_sizes"], np.float64))
  after = split_elbos(config, run, part["log_step_sizes"], split, eval_rng, journal, "after/")
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
      # The updates' compute seconds, in whichever run each was computed.
      "fit_seconds": journal.total_seconds("update/"),
      "matmul_precision": runtime.precision_in_force(),
  }
  path = fitted_path(workdir, run.step)
  reporting.make_dirs(os.path.dirname(path))
  reporting.write_json_atomic(path, result)
  journal.close()
  return {**result, "path": path}
