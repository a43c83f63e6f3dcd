"""Evaluation: the short-run density and importance sampling against closed forms and
brute force; AU and MI on posteriors with known answers; the workdir evaluation."""

import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from srlm import config as config_lib
from srlm import evaluate
from srlm import langevin
from srlm import methods
from srlm import objectives
from srlm.methods import sri
from srlm.models import Decoder, Encoder

from helpers import copy_workdir, per_example_value_grad_hessian, replace

# --- a linear-Gaussian model: p(z) = N(0, I), p(x | z) = N(W z + b, s^2 I) -----------------
W = jnp.array([[1.0, -0.5], [0.3, 0.8], [-0.7, 0.2]])
B_ = jnp.array([0.2, -0.1, 0.4])
S = 0.6
X = jnp.array([[0.5, 1.0, -0.3], [-1.2, 0.1, 0.9], [2.0, -1.5, 0.0]])


def _gaussian_log_likelihood(z_BxD):
  mean = z_BxD @ W.T + B_[None]
  return jnp.sum(-0.5 * ((X - mean) / S) ** 2 - math.log(S) - 0.5 * math.log(2 * math.pi),
                 axis=-1)


def _true_log_marginal():
  cov = W @ W.T + S ** 2 * jnp.eye(3)
  return jax.vmap(lambda x: jax.scipy.stats.multivariate_normal.logpdf(x, B_, cov))(X)


@pytest.fixture(scope="module")
def gaussian_log_weights():
  """log w (M=4000, B=3) from 3 chain steps of size 0.3 at T = 0.2. Short: longer chains
  contract volumes so much (the paper's 20 steps give log|det J| of about -18 here) that
  E[w] = p(x) still holds but the weights' tails make Monte Carlo checks useless."""
  vgh = per_example_value_grad_hessian(
      lambda z: _gaussian_log_likelihood(z) + objectives.log_prior(z))
  run = jax.jit(lambda key: sri.importance_weights(
      key, 3, 2, vgh, _gaussian_log_likelihood, jnp.full((3,), 0.3), 0.2)["log_w"])
  return np.asarray(jax.lax.map(run, jax.random.split(jax.random.key(0), 4000)), np.float64)


def test_short_run_importance_sampling_recovers_the_exact_marginal(gaussian_log_weights):
  log_w = gaussian_log_weights
  true_nll = -np.asarray(_true_log_marginal(), np.float64)
  # E[w] = p(x): the mean weight over p(x) is 1 within Monte Carlo error.
  w_ratio = np.exp(log_w + true_nll[None])
  std_err = w_ratio.std(axis=0) / np.sqrt(len(w_ratio))
  assert np.all(np.abs(w_ratio.mean(axis=0) - 1.0) < 4 * std_err + 0.01), (
      w_ratio.mean(axis=0), std_err)
  # With all M = 4000 samples the NLL estimate is the true -log p(x) within that error.
  nll = np.asarray(objectives.nll_from_log_weights(jnp.asarray(log_w)))
  assert np.all(np.abs(nll - true_nll) < 4 * std_err + 0.01), (nll, true_nll)


def test_iw_bound_tightens_as_m_grows(gaussian_log_weights):
  """E[NLL_M] decreases in M towards -log p(x) (averaged over disjoint groups of M)."""
  log_w = jnp.asarray(gaussian_log_weights)
  true_nll = -np.asarray(_true_log_marginal(), np.float64)
  bias = {m: float(np.mean(objectives.nll_from_log_weights(log_w.reshape(-1, m, 3).swapaxes(0, 1))
                           .mean(axis=0) - true_nll)) for m in (1, 10, 100, 4000)}
  assert bias[1] > bias[10] > bias[100] > -0.02, bias
  assert abs(bias[4000]) < abs(bias[1]) / 10, bias


def _reference_log_joint(model, params, batch):
  """log p(x, z) from logits and log_softmax: independent of the fused VJP and the Hessian."""
  def fn(z_BxD):
    logits = model.apply({"params": params}, z_BxD, batch["inputs"], deterministic=True)
    lp = jnp.take_along_axis(jax.nn.log_softmax(logits), batch["targets"][..., None], -1)
    return jnp.sum(lp[..., 0] * batch["mask"], axis=-1) + objectives.log_prior(z_BxD)
  return fn


def test_decoder_hessian_matches_autodiff(tiny_decoder):
  model, params, batch = tiny_decoder
  z = jax.random.normal(jax.random.key(1), (4, 3))
  got = sri.decoder_value_grad_hessian(model, params, batch)(z)
  want = per_example_value_grad_hessian(_reference_log_joint(model, params, batch))(z)
  for g, w in zip(got, want):
    np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4)


def test_logdet_equals_brute_force_jacobian_of_the_chain(tiny_decoder):
  model, params, batch = tiny_decoder
  ref = _reference_log_joint(model, params, batch)
  steps = jnp.asarray(config_lib.step_sizes(config_lib.LangevinConfig()))
  key = jax.random.key(5)
  z0 = jax.random.normal(jax.random.key(6), (4, 3))

  def chain_map(z0_BxD):
    value_and_grad = langevin.per_example_value_and_grad(lambda z, rng: ref(z))
    return langevin.short_run_chain(key, z0_BxD, value_and_grad, steps, 0.2)[0]

  zK, logdet, _ = langevin.short_run_chain_with_logdet(
      key, z0, sri.decoder_value_grad_hessian(model, params, batch), steps, 0.2)
  np.testing.assert_allclose(zK, chain_map(z0), rtol=1e-4, atol=1e-5)  # same noise, same z_K
  full = jax.jacrev(lambda z: chain_map(z.reshape(4, 3)).reshape(-1))(z0.reshape(-1))
  for b in range(4):  # chains are independent: the Jacobian is block diagonal
    block = full[3 * b:3 * b + 3, 3 * b:3 * b + 3]
    np.testing.assert_allclose(logdet[b], jnp.linalg.slogdet(block)[1], rtol=1e-3, atol=1e-4)
  off_diagonal = full.reshape(4, 3, 4, 3).transpose(0, 2, 1, 3)[~np.eye(4, dtype=bool)]
  assert np.abs(off_diagonal).max() < 1e-5
  # Central finite differences agree too (looser: float32).
  eps, b = 1e-2, 0
  fd = jnp.stack([(chain_map(z0.at[b, d].add(eps))[b] - chain_map(z0.at[b, d].add(-eps))[b])
                  / (2 * eps) for d in range(3)], axis=1)
  np.testing.assert_allclose(jnp.linalg.slogdet(fd)[1], logdet[b], atol=2e-2)


def test_jacobian_and_end_point_must_share_their_noise(tiny_decoder):
  """With other noise the log-det changes: drawing the two separately (the original code's
  bug) gives a different density than the one of the z_K that is scored."""
  model, params, batch = tiny_decoder
  vgh = sri.decoder_value_grad_hessian(model, params, batch)
  steps = jnp.asarray(config_lib.step_sizes(config_lib.LangevinConfig()))
  z0 = jax.random.normal(jax.random.key(6), (4, 3))
  za, logdet_a, _ = langevin.short_run_chain_with_logdet(jax.random.key(1), z0, vgh, steps, 0.2)
  zb, logdet_b, _ = langevin.short_run_chain_with_logdet(jax.random.key(2), z0, vgh, steps, 0.2)
  assert np.all(np.abs(logdet_a - logdet_b) > 1e-4)
  assert not np.allclose(za, zb)


def test_active_units_count_only_varying_dimensions():
  rng = np.random.default_rng(0)
  means = np.stack([rng.normal(size=500), 0.5 * rng.normal(size=500),
                    0.05 * rng.normal(size=500), np.full(500, 3.0)], axis=1)
  assert evaluate.active_units(means) == 2  # variances 1, 0.25 | 0.0025, 0


def test_mutual_information_on_known_posteriors():
  n, d = 400, 4
  # Posteriors that ignore x: q(z | x) = N(0, I) for every x, so I(x; z) = 0.
  mi = evaluate.mutual_information(np.zeros((n, d)), np.ones((n, d)), jax.random.key(0))
  assert abs(mi) < 0.05
  # Far-apart, tight posteriors: z identifies x, so I(x; z) = log N.
  means = np.zeros((n, d))
  means[:, 0] = 10.0 * np.arange(n)
  mi = evaluate.mutual_information(means, np.full((n, d), 0.01), jax.random.key(0))
  # One z per sentence: log q(z | x) at the sample has standard deviation sqrt(D / 2).
  assert abs(mi - math.log(n)) < 3 * math.sqrt(d / 2 / n)


def test_mutual_information_compiles_once_per_split_size():
  """Every epoch's validation MI reuses one program (it was compiled afresh on every call, and
  again for a short last chunk); padding the last chunk changes nothing."""
  rng = np.random.default_rng(1)
  means, variances = rng.normal(size=(300, 3)), rng.uniform(0.1, 1.0, size=(300, 3))
  before = evaluate._log_aggregate_density._cache_size()  # pylint: disable=protected-access
  chunked = [evaluate.mutual_information(means, variances, jax.random.key(s), chunk=256)
             for s in (0, 1)]
  assert evaluate._log_aggregate_density._cache_size() == before + 1  # pylint: disable=protected-access
  whole = evaluate.mutual_information(means, variances, jax.random.key(0), chunk=300)
  np.testing.assert_allclose(chunked[0], whole, rtol=1e-5)
  assert chunked[0] != chunked[1]


def test_workdir_evaluation_writes_every_metric(trained_workdir, tmp_path):
  workdir = copy_workdir(trained_workdir("sri", 3), tmp_path)
  config = config_lib.load_run_config(workdir, {"eval.max_sentences": 6, "eval.split": "valid",
                                                "eval.num_samples": 3})
  result = evaluate.evaluate_workdir(config, workdir)
  with open(os.path.join(workdir, "eval_valid.json")) as f:
    saved = json.load(f)
  for key in ("nll", "ppl", "kl", "mi", "au", "rec", "num_sentences", "num_tokens",
              "num_samples", "estimator", "checkpoint_step"):
    assert key in saved, key
  assert saved["num_sentences"] == 6 and saved["num_samples"] == 3
  assert saved["checkpoint_step"] == 3 and result["nll"] == saved["nll"]
  # Jensen: logsumexp >= mean, so NLL <= mean(-log w) = REC + KL, per sentence and on average.
  assert saved["nll"] <= saved["rec"] + saved["kl"] + 1e-3
  assert saved["ppl"] == pytest.approx(math.exp(saved["nll"] * 6 / saved["num_tokens"]))


def _tiny_decoder_method(kind, num_samples):
  """The method `kind` with the sizes of the tiny_decoder fixture (V=23, E=8, H=12, D=3)."""
  config = replace(config_lib.tiny(), model={"kind": kind, "embed_dim": 8, "hidden_dim": 12,
                                             "latent_dim": 3},
                   eval={"num_samples": num_samples})
  return methods.get(config, 23)


def test_single_sample_nll_is_rec_plus_kl(tiny_decoder):
  _, params, batch = tiny_decoder
  nll_step = _tiny_decoder_method("sri", num_samples=1).nll_step
  out = jax.jit(nll_step)({"decoder": params}, batch, jax.random.key(0))
  np.testing.assert_allclose(out["nll"], out["rec"] + out["kl"], rtol=1e-5)


def test_lm_nll_equals_a_token_by_token_sum(tiny_decoder):
  _, params, batch = tiny_decoder
  model = Decoder(vocab_size=23, embed_dim=8, hidden_dim=12, latent_dim=0, dropout=0.5,
                  init_scale=0.1)
  lm_params = model.init(jax.random.key(3), jnp.zeros((1, 0)), jnp.zeros((1, 2), jnp.int32),
                         deterministic=True)["params"]
  nll = jax.jit(_tiny_decoder_method("lm", num_samples=1).nll_step)(
      {"decoder": lm_params}, batch, jax.random.key(0))
  for b in range(batch["inputs"].shape[0]):
    total, t = 0.0, 0
    while t < batch["mask"].shape[1] and batch["mask"][b, t] > 0:
      prefix = jnp.asarray(batch["inputs"][b:b + 1, :t + 1])  # x_0 .. x_t only
      logits = model.apply({"params": lm_params}, jnp.zeros((1, 0)), prefix,
                           deterministic=True)[0, -1]
      total -= float(jax.nn.log_softmax(logits)[batch["targets"][b, t]])
      t += 1
    assert float(nll["nll"][b]) == pytest.approx(total, rel=1e-5)
  np.testing.assert_array_equal(nll["rec"], nll["nll"])


def test_vae_iw_bound_tightens_with_more_samples(tiny_decoder):
  _, params, batch = tiny_decoder
  encoder = Encoder(vocab_size=23, embed_dim=8, hidden_dim=12, latent_dim=3, init_scale=0.5)
  encoder_params = encoder.init(jax.random.key(4), batch["targets"], batch["mask"])["params"]
  all_params = {"decoder": params, "encoder": encoder_params}

  def mean_nll(m, seeds):
    step = jax.jit(_tiny_decoder_method("vae", num_samples=m).nll_step)
    return float(np.mean([step(all_params, batch, jax.random.key(s))["nll"] for s in seeds]))

  nll_1, nll_10 = mean_nll(1, range(200)), mean_nll(10, range(50))
  nll_100 = mean_nll(100, range(20))
  assert nll_1 > nll_10 > nll_100, (nll_1, nll_10, nll_100)
