"""Short-run inference (docs/method.md §2-4): the paper's method.

There is no encoder. For each sentence, z is inferred by K Langevin steps on log p(x, z) from
z_0 ~ N(0, I) (`infer_z`); the decoder learns at the chain's end point z_K.

Training (docs/method.md §3). Per mini-batch: z_K = stop_gradient(chain(x, z_0)) with dropout
on and a fresh mask at every step; loss = mean over sentences of -log p(x | z_K) (summed over
tokens). `config.train.gradient` picks the decoder gradient:
  "final"        grad_theta loss(z_K): the method as written (default).
  "accumulated"  the authors' code: sum_{k<K} grad_theta NLL_sum(x | z_k) + grad_theta loss(z_K),
                 the chain terms taken from the chain's own backward passes (same dropout masks).

Evaluation (docs/method.md §4). For fixed noise the chain is a map F: z_0 -> z_K, so
    log q(z_K | x) = log N(z_0; 0, I) - log|det dz_K/dz_0|,
and with M independent chains per sentence
    log w_m = log p(x | z_K^m) + log p(z_K^m) - log q(z_K^m | x),
    NLL(x)  = -(logsumexp_m log w_m - log M).
E[w] = p(x) for any proposal, so the estimate is a stochastic upper bound on -log p(x) that
tightens as M grows. The log-determinant comes from the Hessians at the states the chain itself
visits (`langevin.short_run_chain_with_logdet`), so z_K and the Jacobian share their noise.

The decoder's Hessian (`decoder_value_grad_hessian`) is exact and cheaper than forward-mode
through the chain. With h_l(z) the LSTM outputs, J_l = dh_l/dz (H x D), p_l the softmax and
g_l = d log p(x | z)/dh_l = out_w[x_l] - out_w^T p_l:
    grad_z log p(x | z) = sum_l J_l^T g_l
    Hess_z log p(x | z) = -sum_l (W J_l)^T (diag(p_l) - p_l p_l^T) (W J_l)      (output layer)
                          + Hess_z sum_l g_l . h_l(z)  with g_l held fixed    (LSTM curvature)
The first term needs one (L D x H) @ (H x V) product per sentence instead of two per tangent.

Posterior moments (AU, MI, codes for the latent-space modes): the mean and variance of S
chains per sentence at the evaluation noise; features: the mean of the noiseless, constant-step
chains of docs/method.md §6.

Step sizes: a function of the params (`build`'s step_sizes_fn) that every chain but the
features' uses: the config's (docs/method.md §2, `make`), learned ones held in the params
(methods/sri_learned.py), or fitted ones (Chain.with_step_sizes, --mode=fit_step_sizes).
`make_chain_weights`' log w is the objective that tunes them (§7), `base.step_size_ascent`
the update that both learned and fitted step sizes take.
"""

from typing import Callable

import jax
import jax.numpy as jnp
import optax

from srlm import config as config_lib
from srlm import langevin
from srlm import objectives
from srlm.config import Config
from srlm.methods import base
from srlm.models import Decoder, make_decoder

Batch = base.Batch


def infer_z(model: Decoder, params, batch: Batch, rng: jax.Array, step_sizes_K: jax.Array,
            temperature: jax.Array, dropout: bool, param_grads: bool = False,
            prior_weight: jax.Array | None = None):
  """The short-run chain from z_0 ~ N(0, I) for every sentence: (z_0, z_K, StepInfo, aux).

  The chain's target is log p(x, z), or log p(x | z) + prior_weight log p(z) when
  prior_weight is given (the authors' short-Yelp warm-up; None is the paper's chain).

  With `dropout`, each step's log density draws its own dropout mask (docs/method.md §2). With
  `param_grads`, aux is sum_k grad_theta NLL_sum(x | z_k) over the K chain states, taken from
  the same backward pass as each step's z gradient (the authors' accumulated gradient);
  otherwise aux is ().
  """
  z0_rng, chain_rng = jax.random.split(rng)
  z0_BxD = jax.random.normal(z0_rng, (batch["targets"].shape[0], model.latent_dim))

  def logdensity_fn(params, z_BxD, dropout_rng):
    def log_likelihood_fn(z):
      return objectives.decoder_log_likelihood(model, params, z, batch,
                                               dropout_rng if dropout else None)
    if prior_weight is None:
      return objectives.log_joint(log_likelihood_fn, z_BxD)
    return log_likelihood_fn(z_BxD) + prior_weight * objectives.log_prior(z_BxD)

  if param_grads:
    def value_and_grad_fn(z_BxD, dropout_rng):
      def total(params, z_BxD):
        values = logdensity_fn(params, z_BxD, dropout_rng)
        return jnp.sum(values), values
      (_, values), (params_grad, z_grad) = jax.value_and_grad(
          total, argnums=(0, 1), has_aux=True)(params, z_BxD)
      # d/dtheta NLL_sum = -d/dtheta log p(x, z): the prior has no parameters.
      return values, z_grad, jax.tree.map(jnp.negative, params_grad)
  else:
    value_and_grad_fn = langevin.per_example_value_and_grad(
        lambda z_BxD, dropout_rng: logdensity_fn(params, z_BxD, dropout_rng))
  zK_BxD, infos, aux = langevin.short_run_chain(chain_rng, z0_BxD, value_and_grad_fn,
                                                step_sizes_K, temperature)
  return z0_BxD, zK_BxD, infos, aux


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

  def hidden_LxH(z_D, inputs_L):
    return model.apply({"params": params}, z_D[None], inputs_L[None], deterministic=True,
                       method="hidden")[:, 0]

  def one_sentence(z_D, inputs_L, targets_L, mask_L):
    keep_L = mask_L > 0
    h_LxH = hidden_LxH(z_D, inputs_L)
    logits_LxV = h_LxH @ out_w_VxH.T + out_b_V[None]
    log_probs_LxV = jax.nn.log_softmax(logits_LxV, axis=-1)
    p_LxV = jnp.exp(log_probs_LxV)
    target_log_probs_L = jnp.take_along_axis(log_probs_LxV, targets_L[:, None], axis=-1)[:, 0]
    log_lik = jnp.sum(jnp.where(keep_L, target_log_probs_L, 0.0))
    g_LxH = jnp.where(keep_L[:, None], out_w_VxH[targets_L] - p_LxV @ out_w_VxH, 0.0)

    # One forward-over-reverse pass over the LSTM gives grad_z sum_l g_l . h_l (= the gradient
    # of log p(x | z)), its Hessian with g held fixed, and J_l as the Jacobian of the aux output.
    def lstm_terms(z_D):
      return jax.grad(lambda z: (jnp.sum(g_LxH * hidden_LxH(z, inputs_L)),
                                 hidden_LxH(z, inputs_L)), has_aux=True)(z_D)
    (lstm_hessian_DxD, jac_LxHxD), grad_D = jax.jacfwd(
        lambda z: (lambda out: (out, out[0]))(lstm_terms(z)), has_aux=True)(z_D)
    log_joint = log_lik + objectives.log_prior(z_D[None])[0]
    return log_joint, grad_D - z_D, lstm_hessian_DxD - jnp.eye(z_D.shape[0]), jac_LxHxD, p_LxV

  def fn(z_BxD):
    log_joint_B, grad_BxD, hessian_BxDxD, jac_BxLxHxD, p_BxLxV = jax.vmap(one_sentence)(
        z_BxD, batch["inputs"], batch["targets"], batch["mask"])
    B, L, H, D = jac_BxLxHxD.shape
    fisher_BxLxDxD = output_layer_fisher(jac_BxLxHxD.reshape(B * L, H, D),
                                         p_BxLxV.reshape(B * L, -1), out_w_VxH
                                         ).reshape(B, L, D, D)
    keep_BxL = batch["mask"] > 0
    output_hessian_BxDxD = -jnp.sum(jnp.where(keep_BxL[..., None, None], fisher_BxLxDxD, 0.0),
                                    axis=1)
    return log_joint_B, grad_BxD, hessian_BxDxD + output_hessian_BxDxD
  return fn


def importance_weights(rng: jax.Array, batch_size: int, latent_dim: int,
                       value_grad_hessian_fn: langevin.ValueGradHessianFn,
                       log_likelihood_fn, step_sizes_K: jax.Array,
                       temperature: jax.Array) -> dict[str, jax.Array]:
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


# (params) -> the (K,) step sizes a method's chains use: the config's, learned or fitted.
StepSizesFn = Callable[[base.Params], jax.Array]


def fixed_step_sizes(step_sizes_K) -> StepSizesFn:
  """Step sizes that do not depend on the params: the config's, or those fitted post hoc."""
  step_sizes_K = jnp.asarray(step_sizes_K, jnp.float32)
  return lambda params: step_sizes_K


def make_chain_weights(model: Decoder, temperature: float):
  """(params, step sizes (K,), batch, rng) -> `importance_weights` of one chain per sentence
  at `temperature`, dropout off: the NLL's samples (§4), and with its "log_w" the short-run
  ELBO of docs/method.md §7,
      log p(x, z_K) - log N(z_0; 0, I) + log|det dz_K/dz_0|.
  Differentiable in the step sizes by autodiff through the log-det chain: exact, and it takes
  derivatives of the Hessians (third derivatives of the decoder), so use a few sentences for
  that."""
  temperature = jnp.float32(temperature)

  def chain_weights(params, step_sizes_K, batch, rng):
    decoder_params = params["decoder"]
    return importance_weights(
        rng, batch["targets"].shape[0], model.latent_dim,
        decoder_value_grad_hessian(model, decoder_params, batch),
        lambda z: objectives.decoder_log_likelihood(model, decoder_params, z, batch, None),
        step_sizes_K, temperature)

  return chain_weights


def make_train_step(config: Config, model: Decoder, step_sizes_fn: StepSizesFn,
                    steps_per_epoch: int = 1) -> base.TrainStepFn:
  """The decoder's step of docs/method.md §3, its chain at step_sizes_fn(state.params), with
  the prior weighted by the warm-up schedule if one is configured (steps_per_epoch sets its
  pace)."""
  lcfg = config.langevin
  accumulated = config.train.gradient == "accumulated"
  warmup = lcfg.prior_weight_warmup_epochs > 0

  def train_step(state, batch: Batch, rng: jax.Array):
    rng = jax.random.fold_in(rng, state.step)
    chain_rng, dropout_rng = jax.random.split(rng)
    temperature = langevin.temperature_at(batch["epoch"] + 1, lcfg.temperature_epochs,
                                          lcfg.temperature_values)
    prior_weight = (langevin.prior_weight_at(state.step, lcfg.prior_weight_start,
                                             lcfg.prior_weight_warmup_epochs, steps_per_epoch)
                    if warmup else None)
    z0, zK, infos, chain_grads = infer_z(
        model, state.params["decoder"], batch, chain_rng, step_sizes_fn(state.params),
        temperature, dropout=True, param_grads=accumulated, prior_weight=prior_weight)
    zK = jax.lax.stop_gradient(zK)
    sentence_mask_B = base.sentence_mask(batch)
    num_sentences = jnp.sum(sentence_mask_B)

    def loss_fn(params):
      nll_B = -objectives.decoder_log_likelihood(model, params, zK, batch, dropout_rng)
      return jnp.sum(nll_B) / jnp.maximum(num_sentences, 1.0), nll_B

    (loss, nll_B), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params["decoder"])
    if accumulated:
      grads = jax.tree.map(jnp.add, grads, chain_grads)
    state = state.apply_gradients({"decoder": grads})
    return state, {
        "loss": loss,
        "nll_sum": jnp.sum(nll_B),
        "num_tokens": jnp.sum(batch["mask"]),
        "num_sentences": num_sentences,
        "grad_norm_first_sum": jnp.sum(infos.grad_norm[0] * sentence_mask_B),
        "grad_norm_last_sum": jnp.sum(infos.grad_norm[-1] * sentence_mask_B),
        "z_distance_sum": jnp.sum(jnp.linalg.norm(zK - z0, axis=-1) * sentence_mask_B),
        "param_grad_norm": optax.tree.norm(grads),
        "temperature": temperature,
        **({"prior_weight": prior_weight} if warmup else {}),
    }

  return train_step


def make_posterior_step(model: Decoder, num_chains: int, step_sizes_fn: StepSizesFn,
                        temperature: float, dropout: bool = False) -> base.BatchFn:
  """(params, batch, rng) -> the mean and variance (B, D) of num_chains chains per sentence,
  at step_sizes_fn(params) and `temperature`, dropout off (on: a fresh mask per chain step,
  the authors' feature chains)."""
  temperature = jnp.float32(temperature)

  def posterior_step(params, batch, rng):
    step_sizes_K = step_sizes_fn(params)
    z_SxBxD = jax.lax.map(
        lambda key: infer_z(model, params["decoder"], batch, key, step_sizes_K, temperature,
                            dropout=dropout)[1],
        jax.random.split(rng, num_chains))
    return jnp.mean(z_SxBxD, axis=0), jnp.var(z_SxBxD, axis=0)

  return posterior_step


def progress(summary: dict[str, float]) -> str:
  return (f"|z_K-z_0| {summary['z_distance']:.2f} |grad z| first "
          f"{summary['grad_norm_first']:.1f} last {summary['grad_norm_last']:.2f} "
          f"| T {summary['temperature']:.3f}"
          + (f" | beta {summary['prior_weight']:.3f}" if "prior_weight" in summary else ""))


def _rounded(values) -> str:
  return "(" + ", ".join(f"{float(v):.3g}" for v in values) + ")"


def build(config: Config, vocab_size: int, step_sizes_fn: StepSizesFn,
          step_sizes_source: str, name: str = "sri", steps_per_epoch: int = 1) -> base.Method:
  """SRI whose chains (training, validation, NLL, posterior moments) take their step sizes
  from step_sizes_fn(params); step_sizes_source says where they come from (eval JSON)."""
  model = make_decoder(config.model, vocab_size, config.model.latent_dim)
  lcfg, ecfg, acfg = config.langevin, config.eval, config.analysis
  eval_temperature = jnp.float32(lcfg.eval_temperature)
  num_samples = ecfg.num_samples
  chain_weights = make_chain_weights(model, lcfg.eval_temperature)

  def valid_step(params, batch, rng):
    _, z, _, _ = infer_z(model, params["decoder"], batch, rng, step_sizes_fn(params),
                         eval_temperature, dropout=False)
    return {"rec": -objectives.decoder_log_likelihood(model, params["decoder"], z, batch, None)}

  def nll_step(params, batch, rng):
    step_sizes_K = step_sizes_fn(params)
    # Samples one after another (lax.map) keeps memory at one chain's worth per sentence.
    parts = jax.lax.map(lambda key: chain_weights(params, step_sizes_K, batch, key),
                        jax.random.split(rng, num_samples))
    return {"nll": objectives.nll_from_log_weights(parts["log_w"]),
            "kl": jnp.mean(parts["log_q"] - parts["log_prior"], axis=0),
            "rec": -jnp.mean(parts["log_likelihood"], axis=0)}

  def eval_settings(params):
    return {"num_posterior_chains": ecfg.num_posterior_chains,
            "eval_temperature": lcfg.eval_temperature, "num_steps": lcfg.num_steps,
            "step_sizes": [float(s) for s in jax.device_get(step_sizes_fn(params))],
            "step_sizes_source": step_sizes_source}

  def with_step_sizes(step_sizes_K, source: str) -> base.Method:
    return build(config, vocab_size, fixed_step_sizes(step_sizes_K), source, name,
                 steps_per_epoch)

  # The features' chains are the paper's protocol (docs/method.md §6), whatever the run's own
  # step sizes: noiseless, constant step, dropout as configured.
  feature_step = make_posterior_step(
      model, acfg.feature_chains,
      fixed_step_sizes((acfg.feature_step_size,) * acfg.feature_steps), 0.0,
      dropout=acfg.feature_dropout)
  return base.Method(
      name=name,
      decoder=model,
      init_params=lambda rng: {"decoder": base.init_decoder(model, rng)},
      train_step=make_train_step(config, model, step_sizes_fn, steps_per_epoch),
      valid_step=valid_step,
      nll_step=nll_step,
      latent=base.Latent(
          posterior_step=make_posterior_step(model, ecfg.num_posterior_chains, step_sizes_fn,
                                             lcfg.eval_temperature),
          feature_step=feature_step,
          features=(f"mean of {acfg.feature_chains} noiseless chains of {acfg.feature_steps} "
                    f"steps of size {acfg.feature_step_size}"
                    + (", dropout on" if acfg.feature_dropout else "")),
          feature_settings={"chains": acfg.feature_chains, "steps": acfg.feature_steps,
                            "step_size": acfg.feature_step_size, "temperature": 0.0,
                            "dropout": acfg.feature_dropout},
          log_likelihood=base.decoder_log_likelihood_fn(model)),
      chain=base.Chain(
          step_sizes=step_sizes_fn,
          elbo=lambda params, log_step_sizes_K, batch, rng: chain_weights(
              params, jnp.exp(log_step_sizes_K), batch, rng)["log_w"],
          with_step_sizes=with_step_sizes),
      report=base.Report(
          train_metrics={**base.COMMON_METRICS,
                         "grad_norm_first": ("grad_norm_first_sum", base.PER_SENTENCE),
                         "grad_norm_last": ("grad_norm_last_sum", base.PER_SENTENCE),
                         "z_distance": ("z_distance_sum", base.PER_SENTENCE),
                         "temperature": ("temperature", base.LAST),
                         **({"prior_weight": ("prior_weight", base.LAST)}
                            if lcfg.prior_weight_warmup_epochs > 0 else {})},
          progress=progress,
          curve=base.Curve("z_distance", "|z_K - z_0| (chain travel)", in_valid=False),
          schedule=None,
          estimator=base.Estimator(
              nll=(f"importance sampling with M={num_samples} short-run chains per sentence "
                   f"(K={lcfg.num_steps}, T={lcfg.eval_temperature})"),
              kl=("log q(z_K|x) = log N(z_0) - log|det dz_K/dz_0| (exact Jacobian of the "
                  "chain)"),
              rec="mean over the same chains",
              latent=(f"diagonal Gaussian moment-matched to {ecfg.num_posterior_chains} "
                      "chains per sentence, MI's q(z) over the whole split"),
              extra=f"The chains' step sizes: {step_sizes_source}."),
          nll_samples=f"M={num_samples} short-run chains per sentence",
          eval_settings=eval_settings,
          eval_note=lambda settings: (f"chain step sizes: {settings['step_sizes_source']} "
                                      f"{_rounded(settings['step_sizes'])}")),
  )


# Where the config's step sizes are named in eval JSONs.
CONFIG_STEP_SIZES = "the run's (config)"


def make(config: Config, vocab_size: int, steps_per_epoch: int = 1) -> base.Method:
  """steps_per_epoch paces the prior weight's warm-up (the noise schedule is a function of
  the epoch, which batches carry)."""
  return build(config, vocab_size, fixed_step_sizes(config_lib.step_sizes(config.langevin)),
               CONFIG_STEP_SIZES, steps_per_epoch=steps_per_epoch)
