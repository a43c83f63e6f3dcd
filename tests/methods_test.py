"""Every registered method honours the interface of srlm/methods/base.py: shapes, finite
values, one compilation per bucket, a posterior exactly when there is a latent, and a run from
its tiny flagfile that trains, evaluates and (with a latent) samples. (Resuming is
method-agnostic: train_test and parallel_test check it.)"""

import json

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from srlm import cli
from srlm import analysis
from srlm import config as config_lib
from srlm import evaluate
from srlm import methods
from srlm import runs
from srlm import state as state_lib
from srlm import train
from srlm.errors import UserError
from srlm.methods import base

from helpers import REPO, VOCAB, copy_workdir, random_batch, replace, tiny_flagfile

KINDS = sorted(methods.REGISTRY)


@pytest.fixture(scope="module", params=KINDS)
def method_and_state(request):
  config = replace(config_lib.tiny(), model={"kind": request.param},
                   eval={"num_samples": 2, "num_posterior_chains": 2})
  method = methods.get(config, VOCAB, steps_per_epoch=5)
  return config, method, state_lib.create_train_state(method, config.train, jax.random.key(0))


def test_every_registered_method_has_a_tiny_flagfile_of_its_kind():
  for kind in KINDS:
    assert (REPO / tiny_flagfile(kind)).exists(), kind
    config = cli.config_from_flags([f"--flagfile={REPO / tiny_flagfile(kind)}"])
    assert config.model.kind == kind


def test_an_unknown_method_is_named_with_the_known_ones():
  config = replace(config_lib.tiny(), model={"kind": "diffusion"})
  with pytest.raises(config_lib.ConfigError, match="--config.model.kind.*'diffusion'.*sri"):
    methods.get(config, VOCAB)


def test_steps_give_per_sentence_values_of_the_right_shapes(method_and_state):
  config, method, state = method_and_state
  assert method.name == config.model.kind
  assert set(state.params) >= {"decoder"}
  batch, key = random_batch(12), jax.random.key(1)
  new_state, metrics = jax.jit(method.train_step)(state, batch, key)
  assert int(new_state.step) == 1
  for name in base.REQUIRED_TRAIN_SUMS:
    assert np.isfinite(metrics[name]), name
  assert float(metrics["num_sentences"]) == 3  # padding rows are not sentences
  report = method.report
  summary = train.summarize_train(jax.device_get([metrics]), report.train_metrics)
  assert all(np.isfinite(v) for v in summary.values()), summary
  assert isinstance(report.progress(summary), str)
  if report.curve is not None:
    assert report.curve.metric in summary
  if report.schedule is not None:
    assert set(report.schedule.metrics) <= set(summary)
  assert report.estimator.text.endswith(".") and report.nll_samples
  settings = report.eval_settings(state.params)
  json.dumps(settings)  # eval_<split>.json holds them
  assert isinstance(report.eval_note(settings), str)
  valid = jax.jit(method.valid_step)(state.params, batch, key)
  nll = jax.jit(method.nll_step)(state.params, batch, key)
  for out in (valid, nll):
    for name, value in out.items():
      assert value.shape == (4,) and np.all(np.isfinite(value)), name
  assert set(nll) == {"nll", "kl", "rec"} and "rec" in valid
  assert np.all(nll["nll"][:3] > 0) and np.all(nll["rec"][:3] > 0)  # the 3 real sentences


def test_a_posterior_exactly_when_there_is_a_latent(method_and_state):
  _, method, state = method_and_state
  has_latent = method.latent_dim > 0
  assert (method.latent is not None) == has_latent
  if not has_latent:
    assert method.chain is None
    return
  batch = random_batch(12)
  for step in (method.latent.posterior_step, method.latent.feature_step):
    mean, variance = jax.jit(step)(state.params, batch, jax.random.key(2))
    assert mean.shape == variance.shape == (4, method.latent_dim)
    assert np.all(np.isfinite(mean)) and np.all(variance >= 0)
  # The decoder's log p(x | z), dropout off: a function of z, the same z giving the same value.
  z = jax.random.normal(jax.random.key(3), (4, method.latent_dim))
  log_lik = jax.jit(method.latent.log_likelihood)(state.params, z, batch)
  assert log_lik.shape == (4,) and np.all(log_lik[:3] < 0)
  np.testing.assert_array_equal(log_lik, method.latent.log_likelihood(state.params, z, batch))
  assert not np.allclose(log_lik, method.latent.log_likelihood(state.params, 3 * z, batch))


def test_a_method_with_a_chain_fits_reports_and_swaps_its_step_sizes(method_and_state):
  _, method, state = method_and_state
  # What has a chain says so in what it reports (where eval's step sizes come from).
  settings = method.report.eval_settings(state.params)
  assert (method.chain is not None) == ("step_sizes_source" in settings)
  if method.chain is None:
    return
  step_sizes_K = np.asarray(method.chain.step_sizes(state.params))
  batch = random_batch(12)
  elbo = jax.jit(method.chain.elbo)(state.params, jnp.log(step_sizes_K), batch,
                                    jax.random.key(4))
  assert elbo.shape == (4,) and np.all(np.isfinite(elbo))
  # Fixed step sizes reach every chain: the ELBO's and the NLL's samples.
  halved = method.chain.with_step_sizes(step_sizes_K / 2, "halved")
  assert halved.name == method.name
  np.testing.assert_allclose(halved.chain.step_sizes(state.params), step_sizes_K / 2)
  assert halved.report.eval_settings(state.params)["step_sizes_source"] == "halved"
  key = jax.random.key(5)
  assert not np.allclose(jax.jit(halved.nll_step)(state.params, batch, key)["nll"],
                         jax.jit(method.nll_step)(state.params, batch, key)["nll"])


def test_one_compilation_per_bucket(method_and_state):
  _, method, state = method_and_state
  # chex counts traces per function code: methods built from another's pieces (sri_learned's
  # nll_step is SRI's, savae's train_step the VAE's) share them.
  chex.clear_trace_counter()
  train_step = jax.jit(chex.assert_max_traces(method.train_step, n=2))
  nll_step = jax.jit(chex.assert_max_traces(method.nll_step, n=2))
  for seed, length in enumerate((12, 12, 22, 22)):  # two buckets, two batches each
    batch = random_batch(length, seed=seed)
    state, _ = train_step(state, batch, jax.random.key(seed))
    nll_step(state.params, batch, jax.random.key(seed))
  with pytest.raises(AssertionError):  # a third shape is a third trace
    train_step(state, random_batch(32), jax.random.key(0))


def test_init_params_depend_only_on_the_key(method_and_state):
  _, method, _ = method_and_state
  a, b = method.init_params(jax.random.key(3)), method.init_params(jax.random.key(3))
  c = method.init_params(jax.random.key(4))
  chex.assert_trees_all_equal(a, b)
  assert not np.allclose(a["decoder"]["out_w"], c["decoder"]["out_w"])
  assert jnp.max(jnp.abs(a["decoder"]["out_w"])) <= config_lib.tiny().model.init_scale


@pytest.mark.parametrize("kind", KINDS)
def test_every_method_trains_and_evaluates_from_its_tiny_flagfile(kind, trained_workdir,
                                                                   tmp_path):
  workdir = copy_workdir(trained_workdir(kind, 3), tmp_path)  # one bucket: one compilation
  config = config_lib.load_run_config(workdir, {"eval.max_sentences": 4, "eval.num_samples": 2,
                                                "analysis.num_samples": 2})
  result = evaluate.evaluate_workdir(config, workdir)
  assert result["model_kind"] == kind and result["checkpoint_step"] == 3
  for key in ("nll", "ppl", "kl", "mi", "rec"):
    assert np.isfinite(result[key]), key
  run = runs.restore_trained(config, workdir)
  if run.method.latent_dim:
    assert result["kl"] >= 0 and result["nll"] > 0
    assert len(analysis.sample_prior(config, run)) == 2
  else:
    assert result["kl"] == result["mi"] == result["au"] == 0 and result["rec"] == result["nll"]

  # AIS and BDMC need nothing of the method but Latent.log_likelihood: they run on every one.
  ais_config = config_lib.load_run_config(workdir, {
      "eval.max_sentences": 4, "eval.num_samples": 2, "eval.estimator": "ais",
      "eval.ais_steps": 3, "eval.ais_chains": 2, "eval.bdmc_steps": (2,),
      "eval.bdmc_sentences": 2})
  ais_result = evaluate.evaluate_workdir(ais_config, workdir)
  assert ais_result["path"].endswith("eval_test_ais.json")
  # eval's keys, less the settings of the method's own proposal (its chains), which AIS does
  # not use.
  own_settings = set(run.method.report.eval_settings(run.params))
  assert set(ais_result) >= set(result) - own_settings
  assert ais_result["num_sentences"] == result["num_sentences"]
  if not run.method.latent_dim:
    assert ais_result["nll"] == result["nll"] and ais_result["ais_acceptance_rate"] is None
    with pytest.raises(UserError, match="no latent"):
      evaluate.bdmc_workdir(ais_config, workdir)
    return
  assert np.isfinite(ais_result["nll"]) and 0 <= ais_result["ais_acceptance_rate"] <= 1
  assert 1 <= ais_result["ais_ess"] <= 2 + 1e-5
  (row,) = evaluate.bdmc_workdir(ais_config, workdir)["rows"]
  assert row["ais_steps"] == 2 and np.isfinite(row["gap"])
