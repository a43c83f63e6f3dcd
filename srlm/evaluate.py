"""Honest evaluation (docs/method.md §4): importance-sampled NLL, PPL, KL, REC, active units and
mutual information, for any method.

The method supplies the per-sentence estimates (`Method.nll_step`: SRI's short-run chains with
their exact log-det, the VAE's importance-weighted bound, the LM's exact NLL) and the posterior
moments (`Method.posterior_step`); this module runs them over a split and reduces:

  NLL  mean over sentences of the method's -log p(x) estimate.
  PPL  exp(sum NLL / sum predicted tokens), tokens counting </s>.
  KL   mean over sentences of the method's KL estimate.
  REC  mean over sentences of -log p(x | z).
  AU   dimensions whose posterior mean E[z | x] varies across the split with variance >= 0.01
       (0 for a method without a latent).
  MI   E_x E_q log q(z | x) - E_x E_q log q(z), with q(z | x) a diagonal Gaussian (the VAE's
       own, or moment-matched to S short-run chains for SRI) and q(z) the average of q(z | x')
       over the whole split, one z per x.
"""

import math
import os
import time
from typing import Any

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from srlm import config as config_lib
from srlm import methods
from srlm import parallel
from srlm import reporting
from srlm import runs
from srlm import step_sizes
from srlm.config import Config
from srlm.data import pipeline

AU_THRESHOLD = 0.01


def active_units(posterior_means_NxD: np.ndarray, threshold: float = AU_THRESHOLD) -> int:
  """Dimensions whose posterior mean varies across sentences with variance >= threshold."""
  return int(np.sum(np.var(posterior_means_NxD, axis=0) >= threshold))


def mutual_information(means_NxD: np.ndarray, variances_NxD: np.ndarray, rng: jax.Array,
                       chunk: int = 256) -> float:
  """E_x E_q log q(z|x) - E_x E_q log q(z) for diagonal Gaussians q(z|x), q(z) their average.

  One z ~ q(z | x) per sentence; log q(z) = logsumexp_x' log q(z | x') - log N over the split.
  """
  means = jnp.asarray(means_NxD, jnp.float32)
  variances = jnp.maximum(jnp.asarray(variances_NxD, jnp.float32), 1e-12)
  n, d = means.shape
  neg_entropy = jnp.mean(-0.5 * d * math.log(2 * math.pi) - 0.5 * jnp.sum(
      1.0 + jnp.log(variances), axis=-1))
  z = means + jnp.sqrt(variances) * jax.random.normal(rng, means.shape)

  @jax.jit
  def log_aggregate(z_CxD):
    log_density_CxN = -0.5 * jnp.sum(
        (z_CxD[:, None, :] - means[None]) ** 2 / variances[None] + jnp.log(variances[None])
        + math.log(2 * math.pi), axis=-1)
    return jax.nn.logsumexp(log_density_CxN, axis=1) - math.log(n)

  log_qz = np.concatenate([np.asarray(log_aggregate(z[i:i + chunk]))
                           for i in range(0, n, chunk)])
  return float(neg_entropy - np.mean(log_qz))


def latent_statistics(config: Config, method: methods.Method, params, split: pipeline.Split,
                      rng: jax.Array, batch_size: int, mesh: jax.sharding.Mesh
                      ) -> dict[str, Any]:
  """AU and MI of a split from each sentence's posterior mean and variance (0 without a
  latent)."""
  if method.latent is None:
    return {"au": 0, "mi": 0.0, "posterior_mean_variance": []}
  chains_rng, mi_rng = jax.random.split(rng)
  parallel.check_batch_size(batch_size, mesh, "eval.batch_size")
  step = parallel.jit_replicated(method.latent.posterior_step, mesh)
  outputs = [moments for _, moments in parallel.map_split(
      lambda batch, key: step(params, batch, key), split, config.data.buckets, batch_size,
      mesh, chains_rng)]
  means = np.concatenate([mean for mean, _ in outputs])
  variances = np.concatenate([variance for _, variance in outputs])
  return {"au": active_units(means),
          "mi": mutual_information(means, variances, mi_rng),
          "posterior_mean_variance": np.var(means, axis=0).tolist()}


def reconstruction(config: Config, method: methods.Method, params, split: pipeline.Split,
                   rng: jax.Array, mesh: jax.sharding.Mesh
                   ) -> tuple[dict[str, float], dict[str, float]]:
  """The per-epoch validation: REC = -log p(x | z) per token and per sentence (one z per
  sentence from the method's posterior, dropout off), exp(REC/token) and the counts; and apart,
  the per-sentence mean of every other value the method's valid_step reports (e.g. the VAE's
  KL: kl_per_sentence).

  exp(REC/token) is a reconstruction perplexity, not the model's perplexity, which needs the
  importance-sampled NLL (`evaluate_split`).
  """
  step = parallel.jit_replicated(method.valid_step, mesh)
  totals: dict[str, float] = {}
  for _, out in parallel.map_split(lambda batch, key: step(params, batch, key), split,
                                   config.data.buckets, config.data.batch_size, mesh, rng):
    for key, values in out.items():
      totals[key] = totals.get(key, 0.0) + float(np.sum(values))
  num_sentences, num_tokens = len(split), split.num_tokens
  rec = totals.pop("rec")
  return ({"rec_per_token": rec / num_tokens, "rec_ppl": reporting.safe_exp(rec / num_tokens),
           "rec_per_sentence": rec / num_sentences,
           "num_sentences": num_sentences, "num_tokens": num_tokens},
          {f"{key}_per_sentence": total / num_sentences for key, total in totals.items()})


def evaluate_split(config: Config, method: methods.Method, params, split: pipeline.Split,
                   rng: jax.Array, mesh: jax.sharding.Mesh | None = None) -> dict[str, Any]:
  """Every metric of docs/method.md §4 on a split (the first max_sentences sentences if set),
  with the settings the method reports (`Report.eval_settings`). mesh: None builds it from
  config.parallel."""
  ecfg = config.eval
  if ecfg.max_sentences and ecfg.max_sentences < len(split):
    split = split.head(ecfg.max_sentences)
  nll_rng, latent_rng = jax.random.split(rng)
  mesh = parallel.make_mesh(config.parallel.num_devices) if mesh is None else mesh
  parallel.check_batch_size(ecfg.batch_size, mesh, "eval.batch_size")
  nll_step = parallel.jit_replicated(method.nll_step, mesh)
  totals = {"nll": 0.0, "kl": 0.0, "rec": 0.0}
  non_finite_lines: list[int] = []  # source lines of sentences whose NLL is NaN or inf
  done, start = 0, time.time()

  def status() -> str:
    return f"NLL/sentence so far {totals['nll'] / max(done, 1):.2f}"

  for indices, out in parallel.map_split(
      lambda batch, key: nll_step(params, batch, key), split, config.data.buckets,
      ecfg.batch_size, mesh, nll_rng, label=f"eval {split.name}", status=status):
    for key in totals:
      totals[key] += float(np.sum(out[key]))
    non_finite_lines += [int(split.lines[i]) for i in indices[~np.isfinite(out["nll"])]]
    done += len(indices)
  nll_seconds = time.time() - start
  non_finite_lines.sort()
  if non_finite_lines:
    logging.warning("eval %s: the NLL of %d sentence(s) is not finite (NaN or inf), so the "
                    "split's NLL and PPL are not either; source lines: %s", split.name,
                    len(non_finite_lines), non_finite_lines[:20])
  latent = latent_statistics(config, method, params, split, latent_rng, ecfg.batch_size, mesh)
  settings = method.report.eval_settings(params)
  num_sentences, num_tokens = len(split), split.num_tokens
  return {
      "split": split.name,
      "nll": totals["nll"] / num_sentences,
      "ppl": reporting.safe_exp(totals["nll"] / num_tokens),
      "nll_per_token": totals["nll"] / num_tokens,
      "kl": totals["kl"] / num_sentences,
      "rec": totals["rec"] / num_sentences,
      "mi": latent["mi"],
      "au": latent["au"],
      "num_sentences": num_sentences,
      "num_tokens": num_tokens,
      "num_samples": ecfg.num_samples,
      **settings,
      "model_kind": method.name,
      "estimator": method.report.estimator.text,
      "nll_samples": method.report.nll_samples,
      # The method's line of the printed summary (e.g. its chain's step sizes), "" for none.
      "method_note": method.report.eval_note(settings),
      "au_threshold": AU_THRESHOLD,
      "posterior_mean_variance": latent["posterior_mean_variance"],
      "nll_seconds": nll_seconds,
      # Line numbers in the split's source file (1-based), at most 1,000.
      "non_finite_nll_sentences": len(non_finite_lines),
      "non_finite_nll_lines": non_finite_lines[:1000],
  }


def evaluate_workdir(config: Config, workdir: str,
                     mesh: jax.sharding.Mesh | None = None) -> dict[str, Any]:
  """Restores the workdir's latest checkpoint, evaluates config.eval.split, and writes
  WORKDIR/eval_<split>.json (eval_<split>_fitted.json with --config.eval.step_sizes=fitted:
  the chain's step sizes from --mode=fit_step_sizes). Raises UserError for a missing
  checkpoint, fitted file or a bad split."""
  run = runs.restore_trained(config, workdir, mesh)
  fitted = config.eval.step_sizes == "fitted"
  if fitted:
    run = step_sizes.with_fitted(workdir, run)
  if config.eval.split not in run.corpus.splits:
    raise config_lib.ConfigError(
        f"--config.eval.split: unknown split {config.eval.split!r}; "
        f"{config.data.corpus} has {sorted(run.corpus.splits)}.")
  result = evaluate_split(config, run.method, run.params,
                          run.corpus.splits[config.eval.split],
                          jax.random.key(config.eval.seed), run.mesh)
  result["checkpoint_step"] = run.step
  path = os.path.join(workdir, f"eval_{config.eval.split}{'_fitted' if fitted else ''}.json")
  reporting.write_json_atomic(path, result)
  result["path"] = path
  return result
