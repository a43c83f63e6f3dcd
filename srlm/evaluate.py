"""Honest evaluation of SRI models (SRI_SPEC §4): importance-sampled NLL with the exact
short-run density, PPL, KL, REC, active units and mutual information.

NLL. For fixed noise the short-run chain is a map F: z_0 -> z_K, so its density is
    log q(z_K | x) = log N(z_0; 0, I) - log|det dz_K/dz_0|,
and with M independent chains per sentence
    log w_m = log p(x | z_K^m) + log p(z_K^m) - log q(z_K^m | x),
    NLL(x)  = -(logsumexp_m log w_m - log M).
E[w] = p(x) for any proposal, so the estimate is a stochastic upper bound on -log p(x) that
tightens as M grows. The log-determinant comes from the Hessians at the states the chain itself
visits (`langevin.short_run_chain_with_logdet`), so z_K and the Jacobian share their noise.

The decoder's Hessian (`decoder_value_grad_hessian`) is exact and cheaper than forward-mode
through the chain. With h_t(z) the LSTM outputs, J_t = dh_t/dz (H x D), p_t the softmax and
g_t = d log p(x | z)/dh_t = out_w[x_t] - out_w^T p_t:
    grad_z log p(x | z) = sum_t J_t^T g_t
    Hess_z log p(x | z) = -sum_t (W J_t)^T (diag(p_t) - p_t p_t^T) (W J_t)      (output layer)
                          + Hess_z sum_t g_t . h_t(z)  with g_t held fixed    (LSTM curvature)
The first term needs one (T D x H) @ (H x V) product per sentence instead of two per tangent.

Other metrics:
  PPL  exp(sum NLL / sum predicted tokens), tokens counting </s>.
  KL   mean over sentences and chains of log q(z_K | x) - log p(z_K).
  REC  mean over sentences of -log p(x | z_K), averaged over the M chains (each one chain).
  AU   dimensions whose posterior mean E[z | x] (mean of S chains) varies across the split with
       variance >= 0.01.
  MI   the baselines' estimator E_x E_q log q(z | x) - E log q(z), with q(z | x) a diagonal
       Gaussian moment-matched to S chains per sentence (SRI has no closed-form q at other
       sentences' points), q(z) the average of q(z | x') over the whole split, one z per x.
"""

import math
import os
import time
from typing import Any, Callable, NamedTuple

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from srlm import checkpointing
from srlm import config as config_lib
from srlm import inference
from srlm import langevin
from srlm import objectives
from srlm import parallel
from srlm import reporting
from srlm.config import Config
from srlm.data import pipeline
from srlm.errors import UserError
from srlm.models import Decoder, Encoder, make_decoder, make_encoder

Batch = dict[str, jax.Array]
AU_THRESHOLD = 0.01


def output_layer_fisher(jac_NxHxD: jax.Array, p_NxV: jax.Array,
                        out_w_VxH: jax.Array) -> jax.Array:
  """(W J_n)^T (diag(p_n) - p_n p_n^T) (W J_n) for every token n: (N, D, D).

  One token at a time (lax.map): the (V, D) product never exists for more than one token, and
  the per-token Gram runs ~4x faster on CPU than the same contraction batched over tokens.
  """
  def one_token(args):
    jac_HxD, p_V = args
    wj_VxD = out_w_VxH @ jac_HxD
    mean_D = p_V @ wj_VxD
    return (wj_VxD * p_V[:, None]).T @ wj_VxD - mean_D[:, None] * mean_D[None, :]
  return jax.lax.map(one_token, (jac_NxHxD, p_NxV))


def decoder_value_grad_hessian(model: Decoder, params, batch: Batch
                               ) -> langevin.ValueGradHessianFn:
  """z (B, D) -> (log p(x, z), its gradient, its Hessian) per sentence, dropout off."""
  out_w_VxH, out_b_V = params["out_w"], params["out_b"]

  def hidden_TxH(z_D, inputs_T):
    return model.apply({"params": params}, z_D[None], inputs_T[None], deterministic=True,
                       method="hidden")[:, 0]

  def one_sentence(z_D, inputs_T, targets_T, mask_T):
    keep_T = mask_T > 0
    h_TxH = hidden_TxH(z_D, inputs_T)
    logits_TxV = h_TxH @ out_w_VxH.T + out_b_V[None]
    log_probs_TxV = jax.nn.log_softmax(logits_TxV, axis=-1)
    p_TxV = jnp.exp(log_probs_TxV)
    target_log_probs_T = jnp.take_along_axis(log_probs_TxV, targets_T[:, None], axis=-1)[:, 0]
    log_lik = jnp.sum(jnp.where(keep_T, target_log_probs_T, 0.0))
    g_TxH = jnp.where(keep_T[:, None], out_w_VxH[targets_T] - p_TxV @ out_w_VxH, 0.0)

    # One forward-over-reverse pass over the LSTM gives grad_z sum_t g_t . h_t (= the gradient
    # of log p(x | z)), its Hessian with g held fixed, and J_t as the Jacobian of the aux output.
    def lstm_terms(z_D):
      return jax.grad(lambda z: (jnp.sum(g_TxH * hidden_TxH(z, inputs_T)),
                                 hidden_TxH(z, inputs_T)), has_aux=True)(z_D)
    (lstm_hessian_DxD, jac_TxHxD), grad_D = jax.jacfwd(
        lambda z: (lambda out: (out, out[0]))(lstm_terms(z)), has_aux=True)(z_D)
    log_joint = log_lik + objectives.log_prior(z_D[None])[0]
    return log_joint, grad_D - z_D, lstm_hessian_DxD - jnp.eye(z_D.shape[0]), jac_TxHxD, p_TxV

  def fn(z_BxD):
    log_joint_B, grad_BxD, hessian_BxDxD, jac_BxTxHxD, p_BxTxV = jax.vmap(one_sentence)(
        z_BxD, batch["inputs"], batch["targets"], batch["mask"])
    B, T, H, D = jac_BxTxHxD.shape
    fisher_BxTxDxD = output_layer_fisher(jac_BxTxHxD.reshape(B * T, H, D),
                                         p_BxTxV.reshape(B * T, -1), out_w_VxH
                                         ).reshape(B, T, D, D)
    keep_BxT = batch["mask"] > 0
    output_hessian_BxDxD = -jnp.sum(jnp.where(keep_BxT[..., None, None], fisher_BxTxDxD, 0.0),
                                    axis=1)
    return log_joint_B, grad_BxD, hessian_BxDxD + output_hessian_BxDxD
  return fn


def importance_weights(rng: jax.Array, batch_size: int, latent_dim: int,
                       value_grad_hessian_fn: langevin.ValueGradHessianFn,
                       log_likelihood_fn: Callable[[jax.Array], jax.Array],
                       step_sizes_K: jax.Array, temperature: jax.Array) -> dict[str, jax.Array]:
  """One short-run chain per sentence from z_0 ~ N(0, I): log w and its parts, each (B,)."""
  z0_rng, chain_rng = jax.random.split(rng)
  z0_BxD = jax.random.normal(z0_rng, (batch_size, latent_dim))
  zK_BxD, logdet_B, _ = langevin.short_run_chain_with_logdet(
      chain_rng, z0_BxD, value_grad_hessian_fn, step_sizes_K, temperature)
  log_q_B = objectives.log_prior(z0_BxD) - logdet_B
  log_prior_B = objectives.log_prior(zK_BxD)
  log_lik_B = log_likelihood_fn(zK_BxD)
  return {"log_w": log_lik_B + log_prior_B - log_q_B, "log_q": log_q_B,
          "log_prior": log_prior_B, "log_likelihood": log_lik_B}


def nll_from_log_weights(log_w_MxB: jax.Array) -> jax.Array:
  """-(logsumexp_m log w_m - log M) per sentence."""
  return -(jax.nn.logsumexp(log_w_MxB, axis=0) - math.log(log_w_MxB.shape[0]))


def make_nll_step(config: Config, model: Decoder, encoder: Encoder | None = None,
                  mesh: jax.sharding.Mesh | None = None):
  """Jitted (params, batch, rng) -> per-sentence nll, kl, rec (B,) for config.model.kind.

  sri: M short-run chains with the exact log-det. vae: M samples of q(z | x) (importance-
  weighted bound), closed-form KL. lm: the exact NLL (kl 0, rec = nll).
  """
  kind, num_samples = config.model.kind, config.eval.num_samples

  if kind == "lm":
    def lm_step(params, batch, rng):
      del rng
      z_Bx0 = jnp.zeros((batch["targets"].shape[0], 0), jnp.float32)
      nll_B = -objectives.decoder_log_likelihood(model, params["decoder"], z_Bx0, batch, None)
      return {"nll": nll_B, "kl": jnp.zeros_like(nll_B), "rec": nll_B}
    return parallel.jit_replicated(lm_step, mesh)

  if kind == "vae":
    def vae_step(params, batch, rng):
      mean_BxD, logvar_BxD = encoder.apply({"params": params["encoder"]}, batch["targets"],
                                           batch["mask"])

      def one_sample(key):
        z_BxD = mean_BxD + jnp.exp(0.5 * logvar_BxD) * jax.random.normal(key, mean_BxD.shape)
        log_lik_B = objectives.decoder_log_likelihood(model, params["decoder"], z_BxD, batch,
                                                      None)
        log_w_B = (log_lik_B + objectives.log_prior(z_BxD)
                   - objectives.log_normal_diag(z_BxD, mean_BxD, logvar_BxD))
        return log_w_B, log_lik_B

      log_w_MxB, log_lik_MxB = jax.lax.map(one_sample, jax.random.split(rng, num_samples))
      return {"nll": nll_from_log_weights(log_w_MxB),
              "kl": jnp.sum(objectives.gaussian_kl(mean_BxD, logvar_BxD), axis=-1),
              "rec": -jnp.mean(log_lik_MxB, axis=0)}
    return parallel.jit_replicated(vae_step, mesh)

  step_sizes_K = jnp.asarray(config_lib.step_sizes(config.langevin), jnp.float32)
  temperature = jnp.float32(config.langevin.eval_temperature)

  def sri_step(params, batch, rng):
    batch_size = batch["targets"].shape[0]
    decoder_params = params["decoder"]
    vgh_fn = decoder_value_grad_hessian(model, decoder_params, batch)
    log_lik_fn = lambda z: objectives.decoder_log_likelihood(model, decoder_params, z, batch,
                                                             None)
    # Samples one after another (lax.map) keeps memory at one chain's worth per sentence.
    parts = jax.lax.map(
        lambda key: importance_weights(key, batch_size, model.latent_dim, vgh_fn, log_lik_fn,
                                       step_sizes_K, temperature),
        jax.random.split(rng, num_samples))
    return {"nll": nll_from_log_weights(parts["log_w"]),
            "kl": jnp.mean(parts["log_q"] - parts["log_prior"], axis=0),
            "rec": -jnp.mean(parts["log_likelihood"], axis=0)}

  return parallel.jit_replicated(sri_step, mesh)


class ChainSettings(NamedTuple):
  """How posterior moments are estimated: num_chains chains with these step sizes and noise."""
  num_chains: int
  step_sizes: tuple[float, ...]
  temperature: float


def posterior_chains(config: Config) -> ChainSettings:
  """The S chains of AU and MI (SRI_SPEC §4): the eval chain with eval noise."""
  return ChainSettings(config.eval.num_posterior_chains, config_lib.step_sizes(config.langevin),
                       config.langevin.eval_temperature)


def feature_chains(config: Config) -> ChainSettings:
  """The chains of the classification features (SRI_SPEC §6): noiseless, constant step."""
  a = config.analysis
  return ChainSettings(a.feature_chains, (a.feature_step_size,) * a.feature_steps, 0.0)


def make_posterior_step(config: Config, model: Decoder, encoder: Encoder | None = None,
                        chains: ChainSettings | None = None,
                        mesh: jax.sharding.Mesh | None = None):
  """Jitted (params, batch, rng) -> the posterior's mean and variance (B, D): the moments of
  `chains` (default: posterior_chains(config)) short-run chains per sentence (sri), or
  q(z | x) itself (vae)."""
  if config.model.kind == "vae":
    def vae_posterior(params, batch, rng):
      del rng
      mean, logvar = encoder.apply({"params": params["encoder"]}, batch["targets"],
                                   batch["mask"])
      return mean, jnp.exp(logvar)
    return parallel.jit_replicated(vae_posterior, mesh)

  chains = chains or posterior_chains(config)
  step_sizes_K = jnp.asarray(chains.step_sizes, jnp.float32)
  temperature = jnp.float32(chains.temperature)
  num_chains = chains.num_chains

  def sri_posterior(params, batch, rng):
    z_SxBxD = jax.lax.map(
        lambda key: inference.infer_z(model, params["decoder"], batch, key, step_sizes_K,
                                      temperature, dropout=False)[1],
        jax.random.split(rng, num_chains))
    return jnp.mean(z_SxBxD, axis=0), jnp.var(z_SxBxD, axis=0)

  return parallel.jit_replicated(sri_posterior, mesh)


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


def latent_statistics(config: Config, model: Decoder, params, split: pipeline.Split,
                      rng: jax.Array, batch_size: int,
                      encoder: Encoder | None = None) -> dict[str, Any]:
  """AU and MI of a split from each sentence's posterior mean and variance (0 for the LM)."""
  if config.model.kind == "lm":
    return {"au": 0, "mi": 0.0, "posterior_mean_variance": []}
  chains_rng, mi_rng = jax.random.split(rng)
  mesh = parallel.make_mesh(config.parallel.num_devices)
  parallel.check_batch_size(batch_size, mesh, "eval.batch_size")
  step = make_posterior_step(config, model, encoder, mesh=mesh)
  plan = pipeline.plan_batches(split, config.data.buckets, batch_size)
  means, variances = [], []
  for i, batch in enumerate(parallel.batches(split, plan, batch_size, mesh)):
    mean, var = parallel.to_host(step(params, batch, jax.random.fold_in(chains_rng, i)))
    # A batch's sentences fill its first rows; the rest is padding.
    num_real = len(plan.indices[i])
    means.append(mean[:num_real])
    variances.append(var[:num_real])
  means, variances = np.concatenate(means), np.concatenate(variances)
  return {"au": active_units(means),
          "mi": mutual_information(means, variances, mi_rng),
          "posterior_mean_variance": np.var(means, axis=0).tolist()}


_ESTIMATORS = {
    "sri": ("importance sampling with M={M} short-run chains per sentence (K={K}, T={T}); "
            "log q(z_K|x) = log N(z_0) - log|det dz_K/dz_0| (exact Jacobian of the chain). "
            "REC: mean over the same chains. AU/MI: diagonal Gaussian moment-matched to {S} "
            "chains per sentence; MI's q(z) over the whole split."),
    "vae": ("importance-weighted bound with M={M} samples of q(z|x) as proposal; KL in closed "
            "form; REC: mean over the same samples; AU from the encoder means; MI closed-form "
            "for the Gaussian q(z|x), q(z) over the whole split."),
    "lm": "exact NLL (no latent): KL, MI and AU are 0 and REC equals the NLL.",
}


def evaluate_split(config: Config, model: Decoder, params, split: pipeline.Split,
                   rng: jax.Array, encoder: Encoder | None = None) -> dict[str, Any]:
  """Every metric of SRI_SPEC §4 on a split (the first max_sentences sentences if set)."""
  ecfg = config.eval
  if ecfg.max_sentences and ecfg.max_sentences < len(split):
    split = split.head(ecfg.max_sentences)
  nll_rng, latent_rng = jax.random.split(rng)
  mesh = parallel.make_mesh(config.parallel.num_devices)
  parallel.check_batch_size(ecfg.batch_size, mesh, "eval.batch_size")
  nll_step = make_nll_step(config, model, encoder, mesh)
  plan = pipeline.plan_batches(split, config.data.buckets, ecfg.batch_size)
  totals = {"nll": 0.0, "kl": 0.0, "rec": 0.0}
  done, start = 0, time.time()
  for i, batch in enumerate(parallel.batches(split, plan, ecfg.batch_size, mesh)):
    out = parallel.to_host(nll_step(params, batch, jax.random.fold_in(nll_rng, i)))
    num_real = len(plan.indices[i])  # the batch's first rows; the rest is padding
    for key in totals:
      totals[key] += float(np.sum(out[key][:num_real]))
    done += num_real
    if i == 0 or (i + 1) % 10 == 0 or done == len(split):
      elapsed = time.time() - start
      logging.info("eval %s: %d/%d sentences, NLL/sentence so far %.2f | ETA %s",
                   split.name, done, len(split), totals["nll"] / done,
                   reporting.format_seconds(elapsed / done * (len(split) - done)))
  nll_seconds = time.time() - start
  latent = latent_statistics(config, model, params, split, latent_rng, ecfg.batch_size,
                             encoder)
  num_sentences, num_tokens = len(split), split.num_tokens
  return {
      "split": split.name,
      "nll": totals["nll"] / num_sentences,
      "ppl": math.exp(totals["nll"] / num_tokens),
      "nll_per_token": totals["nll"] / num_tokens,
      "kl": totals["kl"] / num_sentences,
      "rec": totals["rec"] / num_sentences,
      "mi": latent["mi"],
      "au": latent["au"],
      "num_sentences": num_sentences,
      "num_tokens": num_tokens,
      "num_samples": ecfg.num_samples,
      "num_posterior_chains": ecfg.num_posterior_chains,
      "eval_temperature": config.langevin.eval_temperature,
      "num_steps": config.langevin.num_steps,
      "model_kind": config.model.kind,
      "estimator": _ESTIMATORS[config.model.kind].format(
          M=ecfg.num_samples, K=config.langevin.num_steps, T=config.langevin.eval_temperature,
          S=ecfg.num_posterior_chains),
      "au_threshold": AU_THRESHOLD,
      "posterior_mean_variance": latent["posterior_mean_variance"],
      "nll_seconds": nll_seconds,
  }


class TrainedRun(NamedTuple):
  """A workdir's latest checkpoint with what is needed to use it."""
  corpus: pipeline.Corpus
  model: Decoder
  encoder: Encoder | None
  params: dict[str, Any]
  step: int


def restore_trained(config: Config, workdir: str) -> TrainedRun:
  """Loads the corpus and the workdir's latest checkpoint, read-only. Raises UserError when
  there is no checkpoint or it does not fit the config."""
  config_lib.validate(config)
  corpus = parallel.load_corpus(config.data)
  model = make_decoder(config.model, len(corpus.vocab))
  encoder = make_encoder(config.model, len(corpus.vocab))
  # train imports this module (for per-epoch latent metrics); import it here to avoid a cycle.
  from srlm.train import create_replicated_train_state  # pylint: disable=import-outside-toplevel
  mesh = parallel.make_mesh(config.parallel.num_devices)
  state = create_replicated_train_state(config, model, jax.random.key(0), mesh, encoder)
  directory = checkpointing.checkpoint_dir(workdir)
  no_checkpoint = UserError(f"no checkpoint in {directory}: train first "
                            f"(python -m srlm.main --workdir={workdir} ...).")
  if not os.path.isdir(directory):
    raise no_checkpoint
  checkpointer = checkpointing.Checkpointer(workdir, config, read_only=True)
  try:
    restored = checkpointer.restore(checkpointing.abstract(state))
  finally:
    checkpointer.close()
  if restored is None:
    raise no_checkpoint
  state, _ = restored
  return TrainedRun(corpus, model, encoder, state.params, int(state.step))


def evaluate_workdir(config: Config, workdir: str) -> dict[str, Any]:
  """Restores the workdir's latest checkpoint, evaluates config.eval.split, and writes
  WORKDIR/eval_<split>.json. Raises UserError for a missing checkpoint or a bad split."""
  run = restore_trained(config, workdir)
  if config.eval.split not in run.corpus.splits:
    raise config_lib.ConfigError(
        f"--config.eval.split: unknown split {config.eval.split!r}; "
        f"{config.data.corpus} has {sorted(run.corpus.splits)}.")
  result = evaluate_split(config, run.model, run.params, run.corpus.splits[config.eval.split],
                          jax.random.key(config.eval.seed), run.encoder)
  result["checkpoint_step"] = run.step
  path = os.path.join(workdir, f"eval_{config.eval.split}.json")
  reporting.write_json_atomic(path, result)
  result["path"] = path
  return result
