"""Honest evaluation (docs/method.md §4): importance-sampled NLL, PPL, KL, REC, active units and
mutual information, for any method.

An estimator (NllEstimator, chosen by --config.eval.estimator: ESTIMATORS) supplies the
per-sentence estimates: "is", the method's own (`Method.nll_step`: SRI's short-run chains with
their exact log-det, the VAE's importance-weighted bound, the LM's exact NLL), with the
posterior moments from `Latent.posterior_step`; "ais", annealed importance sampling from the
prior, the same for every latent method, with the moments of its weighted chain ends. This
module runs them over a split and reduces:

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
from typing import Any, Callable, NamedTuple

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from srlm import ais
from srlm import config as config_lib
from srlm import fit
from srlm import methods
from srlm import parallel
from srlm import reporting
from srlm import runs
from srlm import runtime
from srlm import sampling
from srlm.config import Config
from srlm.data import pipeline
from srlm.data.vocab import BOS_ID, EOS_ID
from srlm.errors import UserError
from srlm.journal import Journal, reuse_or_run, run_settings

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
  # Chunks of one shape (the last padded): one compilation per split size, not one per call
  # and another for the last chunk.
  z = jnp.pad(z, ((0, -n % chunk), (0, 0)))
  log_qz = np.concatenate([np.asarray(_log_aggregate_density(z[i:i + chunk], means, variances))
                           for i in range(0, n, chunk)])[:n]
  return float(neg_entropy - np.mean(log_qz))


@jax.jit
def _log_aggregate_density(z_CxD, means_NxD, variances_NxD):
  """log q(z) = logsumexp_x log q(z | x) - log N for each of C codes, q(z | x) the N diagonal
  Gaussians."""
  log_density_CxN = -0.5 * jnp.sum(
      (z_CxD[:, None, :] - means_NxD[None]) ** 2 / variances_NxD[None]
      + jnp.log(variances_NxD[None]) + math.log(2 * math.pi), axis=-1)
  return jax.nn.logsumexp(log_density_CxN, axis=1) - math.log(means_NxD.shape[0])


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


def _per_sentence(step, params, split: pipeline.Split, config: Config, batch_size: int,
                  mesh: jax.sharding.Mesh, rng: jax.Array, label: str,
                  journal: Journal | None = None) -> tuple[dict[str, np.ndarray], float]:
  """Runs step(params, batch, key) (jitted by the caller) over the split with progress and an
  ETA; returns each output key's per-sentence values in split order, and the seconds (with a
  journal, the compute seconds of every batch, in whichever run it was computed)."""
  values: dict[str, np.ndarray] = {}
  progress = {"done": 0, "nll": 0.0}

  def status() -> str:
    return f"NLL/sentence so far {progress['nll'] / max(progress['done'], 1):.2f}"

  start = time.time()
  for indices, out in parallel.map_split(
      lambda batch, key: step(params, batch, key), split, config.data.buckets, batch_size,
      mesh, rng, label=label, status=status, journal=journal):
    for key, value in out.items():
      if key not in values:
        values[key] = np.zeros((len(split),) + value.shape[1:], value.dtype)
      values[key][indices] = value
    progress["nll"] += float(np.sum(out["nll"]))
    progress["done"] += len(indices)
  return values, journal.total_seconds() if journal else time.time() - start


def _nll_summary(split: pipeline.Split, values: dict[str, np.ndarray], seconds: float
                 ) -> dict[str, Any]:
  """NLL, PPL, KL, REC of per-sentence values (docs/method.md §4), the sentences whose NLL is
  not finite (named by source line, and warned about), and every sentence's NLL (for paired
  comparisons of methods or estimators on the same sentences)."""
  nll, num_sentences, num_tokens = values["nll"], len(split), split.num_tokens
  non_finite_lines = sorted(int(line) for line in split.lines[~np.isfinite(nll)])
  if non_finite_lines:
    logging.warning("eval %s: the NLL of %d sentence(s) is not finite (NaN or inf), so the "
                    "split's NLL and PPL are not either; source lines: %s", split.name,
                    len(non_finite_lines), non_finite_lines[:20])
  total = float(np.sum(nll, dtype=np.float64))
  return {
      "split": split.name,
      "nll": total / num_sentences,
      "ppl": reporting.safe_exp(total / num_tokens),
      "nll_per_token": total / num_tokens,
      "kl": float(np.sum(values["kl"], dtype=np.float64)) / num_sentences,
      "rec": float(np.sum(values["rec"], dtype=np.float64)) / num_sentences,
      "num_sentences": num_sentences,
      "num_tokens": num_tokens,
      "nll_seconds": seconds,
      # Line numbers in the split's source file (1-based), at most 1,000.
      "non_finite_nll_sentences": len(non_finite_lines),
      "non_finite_nll_lines": non_finite_lines[:1000],
      # Every sentence's NLL, by its source line.
      "sentence_lines": [int(line) for line in split.lines],
      "sentence_nll": [float(v) for v in nll],
  }


def _eval_split(config: Config, split: pipeline.Split) -> pipeline.Split:
  ecfg = config.eval
  if ecfg.max_sentences and ecfg.max_sentences < len(split):
    return split.head(ecfg.max_sentences)
  return split


class NllEstimator(NamedTuple):
  """One way eval estimates -log p(x), chosen by name (--config.eval.estimator; ESTIMATORS)."""
  name: str  # its --config.eval.estimator value
  nll_step: Callable[..., dict[str, jax.Array]]  # (params, batch, key) -> per-sentence values
  label: str  # what the progress line calls it
  num_samples: int  # chains (or samples) per sentence
  samples: str  # their short description, for the summary line
  text: str  # how every number is estimated (the result's "estimator")
  settings: dict[str, Any]  # recorded in the result
  note: str = ""  # the method's line of the summary (e.g. its chain's step sizes), "" for none
  # Whether the step returns each sentence's posterior moments (AU and MI come from them) or
  # the method's own posterior_step gives them in a second pass.
  moments: bool = False
  extra: Callable[[dict[str, np.ndarray], float, int], dict[str, Any]] = (
      lambda values, seconds, num_sentences: {})


def importance_sampling(config: Config, method: methods.Method, params) -> NllEstimator:
  """"is": the method's own proposal (docs/method.md §4), as the method describes it."""
  settings = method.report.eval_settings(params)
  return NllEstimator(
      "is", method.nll_step, "", config.eval.num_samples, method.report.nll_samples,
      method.report.estimator.text, settings, method.report.eval_note(settings))


def ais_settings(config: Config) -> dict[str, Any]:
  ecfg = config.eval
  return {"ais_steps": ecfg.ais_steps, "ais_chains": ecfg.ais_chains,
          "ais_leapfrog": ecfg.ais_leapfrog, "ais_step_size": ecfg.ais_step_size,
          "ais_target_acceptance": ais.TARGET_ACCEPTANCE, "ais_schedule": "sigmoid",
          "ais_schedule_sharpness": ais.SCHEDULE_SHARPNESS}


def annealed_importance_sampling(config: Config, method: methods.Method,
                                 params) -> NllEstimator:
  """"ais": AIS from the prior (docs/method.md §9), the same for every method with a latent
  (it uses only Latent.log_likelihood, never the method's own posterior). A method without a
  latent (the LM) has an exact NLL: that is reported, and said."""
  ecfg = config.eval
  if method.latent is None:
    exact = importance_sampling(config, method, params)
    return exact._replace(
        name="ais", text=f"{exact.text}: the NLL is exact, so AIS is not run",
        settings={**exact.settings, **ais_settings(config)},
        extra=lambda values, seconds, num_sentences: {"ais_acceptance_rate": None,
                                                      "ais_ess": None})
  step = ais.make_nll_step(method.latent.log_likelihood, method.latent_dim, ecfg.ais_steps,
                           ecfg.ais_chains, ecfg.ais_leapfrog, ecfg.ais_step_size)
  text = (f"annealed importance sampling from the prior (docs/method.md §9): "
          f"N={ecfg.ais_steps} intermediate distributions (sigmoid schedule), "
          f"C={ecfg.ais_chains} chains per sentence, HMC with L={ecfg.ais_leapfrog} leapfrog "
          f"step(s) and per-chain adaptive step sizes (target acceptance "
          f"{ais.TARGET_ACCEPTANCE}); KL and REC under the weighted chain ends (importance "
          f"samples of the posterior); AU and MI from their weighted moments")

  def extra(values, seconds, num_sentences):
    return {"ais_acceptance_rate": float(np.mean(values["acceptance_rate"])),
            # Of the chains' weights, per sentence: from 1 (one chain has all the weight) to C.
            "ais_ess": float(np.mean(values["ess"])),
            "seconds_per_sentence_per_1000_steps":
                seconds / num_sentences * 1000 / ecfg.ais_steps}

  return NllEstimator(
      "ais", step, f" (AIS, N={ecfg.ais_steps}, C={ecfg.ais_chains})", ecfg.ais_chains,
      f"C={ecfg.ais_chains} AIS chains of N={ecfg.ais_steps} steps per sentence", text,
      ais_settings(config), moments=True, extra=extra)


# --config.eval.estimator's values (config.ESTIMATORS), each (config, method, params) ->
# NllEstimator.
ESTIMATORS = {"is": importance_sampling, "ais": annealed_importance_sampling}


def evaluate_split(config: Config, method: methods.Method, params, split: pipeline.Split,
                   rng: jax.Array, mesh: jax.sharding.Mesh | None = None,
                   journal: Journal | None = None,
                   estimator: NllEstimator | None = None) -> dict[str, Any]:
  """Every metric of docs/method.md §4 on a split (the first max_sentences sentences if set),
  by `estimator` (None: the one --config.eval.estimator names), with its settings. mesh: None
  builds it from config.parallel. journal: the NLL's finished batches (the long part) are
  kept there and reused; AU and MI are recomputed."""
  ecfg = config.eval
  if estimator is None:
    estimator = ESTIMATORS[ecfg.estimator](config, method, params)
  split = _eval_split(config, split)
  nll_rng, latent_rng = jax.random.split(rng)
  mesh = parallel.make_mesh(config.parallel.num_devices) if mesh is None else mesh
  parallel.check_batch_size(ecfg.batch_size, mesh, "eval.batch_size")
  values, seconds = _per_sentence(parallel.jit_replicated(estimator.nll_step, mesh), params,
                                  split, config, ecfg.batch_size, mesh, nll_rng,
                                  f"eval {split.name}{estimator.label}", journal)
  if estimator.moments:
    means, variances = values["posterior_mean"], values["posterior_variance"]
    latent = {"au": active_units(means),
              "mi": (mutual_information(means, variances, latent_rng)
                     if estimator.num_samples > 1 else None),
              "posterior_mean_variance": np.var(means, axis=0).tolist()}
  else:
    latent = latent_statistics(config, method, params, split, latent_rng, ecfg.batch_size,
                               mesh)
  return {
      **_nll_summary(split, values, seconds),
      "mi": latent["mi"],
      "au": latent["au"],
      "num_samples": estimator.num_samples,
      **estimator.settings,
      **estimator.extra(values, seconds, len(split)),
      "model_kind": method.name,
      "estimator": estimator.text,
      "nll_samples": estimator.samples,
      "method_note": estimator.note,
      "au_threshold": AU_THRESHOLD,
      "posterior_mean_variance": latent["posterior_mean_variance"],
  }


@runtime.at_evaluation_precision
def evaluate_workdir(config: Config, workdir: str,
                     mesh: jax.sharding.Mesh | None = None) -> dict[str, Any]:
  """Restores the workdir's latest checkpoint, evaluates config.eval.split, and writes
  WORKDIR/eval_<split>.json: eval_<split>_fitted.json with --config.eval.step_sizes=fitted
  (the chain's step sizes from --mode=fit_step_sizes), eval_<split>_ais.json with
  --config.eval.estimator=ais. Raises UserError for a missing checkpoint, fitted file or a
  bad split."""
  run = runs.restore_trained(config, workdir, mesh)
  fitted = config.eval.step_sizes == "fitted"
  if fitted:
    run = fit.with_fitted(workdir, run)
  split = _named_split(config, run)
  estimator = ESTIMATORS[config.eval.estimator](config, run.method, run.params)
  # eval_<split>.json; eval_<split>_ais.json by another estimator, _fitted.json by the
  # method's own under fitted step sizes.
  if estimator.name != "is":
    suffix = f"_{estimator.name}"
  else:
    suffix = "_fitted" if fitted else ""
  name = f"eval_{config.eval.split}{suffix}"
  journal = Journal(workdir, name, run_settings(
      config, run.step, runtime.precision_in_force(),
      method_settings=run.method.report.eval_settings(run.params)), config.eval.keep_journal)
  result = evaluate_split(config, run.method, run.params, split,
                          jax.random.key(config.eval.seed), run.mesh, journal, estimator)
  result.update(checkpoint_step=run.step, **reporting.provenance())
  path = os.path.join(workdir, f"{name}.json")
  reporting.write_json_atomic(path, result)
  journal.close()
  result["path"] = path
  return result


def _named_split(config: Config, run: runs.TrainedRun) -> pipeline.Split:
  if config.eval.split not in run.corpus.splits:
    raise config_lib.ConfigError(
        f"--config.eval.split: unknown split {config.eval.split!r}; "
        f"{config.data.corpus} has {sorted(run.corpus.splits)}.")
  return run.corpus.splits[config.eval.split]


def model_sentences(method: methods.Method, params, num_sentences: int, max_ids: int,
                    rng: jax.Array) -> tuple[pipeline.Split, np.ndarray, int]:
  """num_sentences sentences drawn from the model itself, z ~ p(z) and x ~ p(x | z) (dropout
  off, temperature 1, no top-k), with the codes that generated them: (a Split of them, their
  codes (n, D), how many are prefixes). A draw that has not ended (</s>) within max_ids ids
  (<s> and </s> included) is kept as the prefix it is, scored as one (its words, no </s>):
  p(prefix | z) is the model's probability of starting so, and the code is still an exact
  sample of p(z | prefix). (Decoding never draws <pad> or <s>, which a trained decoder all but
  never predicts; that is the one departure from x ~ p(x | z).)"""
  z_key, x_key = jax.random.split(rng)
  z = jax.random.normal(z_key, (num_sentences, method.latent_dim))
  tokens = np.asarray(jax.jit(lambda z, key: sampling.decode(
      method.decoder, params["decoder"], z, key, max_ids - 1, temperature=1.0))(z, x_key))
  sentences, prefixes = [], 0
  for ids in tokens:
    ends = np.flatnonzero(ids == EOS_ID)
    prefixes += not len(ends)
    words = ids[:ends[0] + 1] if len(ends) else ids
    sentences.append(np.concatenate([[BOS_ID], words]).astype(np.int32))
  split = pipeline.Split("model samples", sentences, np.arange(1, num_sentences + 1),
                         {"prefixes": prefixes}, np.full(num_sentences, -1))
  return split, np.asarray(z), prefixes


def bdmc(config: Config, method: methods.Method, params, mesh: jax.sharding.Mesh,
         journal: Journal | None = None) -> dict[str, Any]:
  """Bidirectional Monte Carlo (Grosse, Ghahramani, Adams 2015; docs/method.md §9): on
  sentences sampled from the model, forward AIS from the prior (a stochastic upper bound on
  -log p(x)) and reverse AIS from the code that generated each sentence (a stochastic lower
  bound), at each N of eval.bdmc_steps with eval.ais_chains chains. The gap between the two
  bounds the AIS error at that N, on data like the model's. journal: each (N, batch)'s
  bounds are kept there as they finish and reused."""
  if method.latent is None:
    raise UserError(f"--mode=bdmc: a {method.name} run has no latent; its NLL is exact "
                    "(--mode=eval)")
  ecfg = config.eval
  parallel.check_batch_size(ecfg.batch_size, mesh, "eval.batch_size")
  sample_rng, forward_rng, reverse_rng = jax.random.split(
      jax.random.key(ecfg.bdmc_seed), 3)
  split, codes, prefixes = model_sentences(method, params, ecfg.bdmc_sentences,
                                           config.data.buckets[-1], sample_rng)
  plan = pipeline.plan_batches(split, config.data.buckets, ecfg.batch_size)
  rows = []
  for num_steps in ecfg.bdmc_steps:
    forward = parallel.jit_replicated(ais.make_nll_step(
        method.latent.log_likelihood, method.latent_dim, num_steps, ecfg.ais_chains,
        ecfg.ais_leapfrog, ecfg.ais_step_size), mesh)
    reverse = parallel.jit_replicated(ais.make_reverse_step(
        method.latent.log_likelihood, num_steps, ecfg.ais_chains, ecfg.ais_leapfrog,
        ecfg.ais_step_size), mesh)
    upper, lower = np.zeros(len(split)), np.zeros(len(split))
    accept = {"forward": [], "reverse": []}
    start = time.time()
    for i, batch in enumerate(parallel.batches(split, plan, ecfg.batch_size, mesh)):
      indices = plan.indices[i]

      def run(i=i, batch=batch, indices=indices):
        z_star = np.zeros((ecfg.batch_size, method.latent_dim), np.float32)
        z_star[:len(indices)] = codes[indices]
        up = parallel.to_host(forward(params, batch, jax.random.fold_in(forward_rng, i)))
        down = parallel.to_host(reverse(params, batch, z_star,
                                        jax.random.fold_in(reverse_rng, i)))
        out = {"upper": up["nll"], "lower": down["nll_lower"],
               "accept_forward": up["acceptance_rate"],
               "accept_reverse": down["acceptance_rate"]}
        return {name: value[:len(indices)] for name, value in out.items()}

      out, _ = reuse_or_run(journal, f"{num_steps}/{i}", run)
      upper[indices], lower[indices] = out["upper"], out["lower"]
      accept["forward"].append(out["accept_forward"])
      accept["reverse"].append(out["accept_reverse"])
    seconds = (journal.total_seconds(f"{num_steps}/") if journal is not None
               else time.time() - start)
    gap = upper - lower
    rows.append({"ais_steps": num_steps, "upper": float(np.mean(upper)),
                 "lower": float(np.mean(lower)), "gap": float(np.mean(gap)),
                 "gap_stderr": float(np.std(gap, ddof=1) / np.sqrt(len(gap)))
                 if len(gap) > 1 else None,
                 "max_gap": float(np.max(gap)),
                 "acceptance_forward": float(np.mean(np.concatenate(accept["forward"]))),
                 "acceptance_reverse": float(np.mean(np.concatenate(accept["reverse"]))),
                 "seconds": seconds})
    logging.info("bdmc N=%d: upper %.3f lower %.3f gap %.3f nats/sentence (%s)", num_steps,
                 rows[-1]["upper"], rows[-1]["lower"], rows[-1]["gap"],
                 reporting.format_seconds(seconds))
  return {"model_kind": method.name, "num_sentences": len(split),
          # Draws that had not ended within the last bucket, scored as prefixes.
          "prefixes": prefixes,
          "mean_length": float(np.mean([len(s) - 1 for s in split.sentences])),
          "ais_chains": ecfg.ais_chains, "ais_leapfrog": ecfg.ais_leapfrog,
          "ais_step_size": ecfg.ais_step_size, "seed": ecfg.bdmc_seed, "rows": rows}


def bdmc_table(result: dict[str, Any]) -> str:
  lines = [f"BDMC on {result['num_sentences']} sentences sampled from the {result['model_kind']}"
           f" model ({result['prefixes']} of them unfinished prefixes; C={result['ais_chains']}"
           f", L={result['ais_leapfrog']}); -log p(x) in nats per sentence:",
           "     N     upper     lower       gap  accept fwd/rev   seconds"]
  for r in result["rows"]:
    lines.append(f"{r['ais_steps']:>6} {r['upper']:>9.3f} {r['lower']:>9.3f} {r['gap']:>9.3f}"
                 f"     {r['acceptance_forward']:.2f}/{r['acceptance_reverse']:.2f}"
                 f" {r['seconds']:>9.1f}")
  return "\n".join(lines)


@runtime.at_evaluation_precision
def bdmc_workdir(config: Config, workdir: str,
                 mesh: jax.sharding.Mesh | None = None) -> dict[str, Any]:
  """--mode=bdmc: restores the workdir's latest checkpoint, runs `bdmc`, writes
  WORKDIR/bdmc.json."""
  run = runs.restore_trained(config, workdir, mesh)
  journal = Journal(workdir, "bdmc", run_settings(config, run.step, runtime.precision_in_force()),
                    config.eval.keep_journal)
  result = {**bdmc(config, run.method, run.params, run.mesh, journal),
            "checkpoint_step": run.step, **reporting.provenance()}
  path = os.path.join(workdir, "bdmc.json")
  reporting.write_json_atomic(path, result)
  journal.close()
  result["path"] = path
  return result
