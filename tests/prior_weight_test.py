"""The authors' short-Yelp chain options (docs/method.md §2 and §6): the prior's weight in the
training chain's target with its per-batch warm-up, and feature chains with dropout on. At the
neutral settings both are today's SRI bit for bit."""

import chex
import jax
import numpy as np
import pytest

from srlm import config as config_lib
from srlm import langevin
from srlm import methods
from srlm import state as state_lib

from helpers import VOCAB, random_batch, replace

STEPS_PER_EPOCH = 10


def _method(**langevin_fields):
  config = replace(config_lib.tiny(), langevin=langevin_fields,
                   analysis={"feature_chains": 2, "feature_steps": 3})
  return config, methods.get(config, VOCAB, steps_per_epoch=STEPS_PER_EPOCH)


def _train(method, config, num_steps):
  state = state_lib.create_train_state(method, config.train, jax.random.key(0))
  step = jax.jit(method.train_step)
  logged = []
  for i in range(num_steps):
    state, metrics = step(state, random_batch(12, seed=i), jax.random.key(1))
    logged.append(metrics)
  return state, logged


def test_the_warmup_raises_beta_linearly_per_batch_from_start_to_one():
  # The authors' values: beta from 0.1, plus 1 / (6 epochs * batches per epoch) before each
  # batch, capped at 1.
  betas = np.array([float(langevin.prior_weight_at(step, 0.1, 6.0, STEPS_PER_EPOCH))
                    for step in range(70)])
  np.testing.assert_allclose(betas[0], 0.1 + 1 / 60, rtol=1e-6)
  np.testing.assert_allclose(np.diff(betas[:53]), 1 / 60, rtol=1e-4)
  np.testing.assert_allclose(betas[53], 1.0)  # 0.1 + 54 / 60
  assert np.all(betas[53:] == 1.0)
  assert float(langevin.prior_weight_at(5, 0.1, 0.0, STEPS_PER_EPOCH)) == 1.0


def test_the_neutral_settings_are_todays_train_step_bit_for_bit():
  default_config, default = _method()
  neutral_config, neutral = _method(prior_weight_start=1.0, prior_weight_warmup_epochs=0.0)
  expected, expected_metrics = _train(default, default_config, 3)
  got, got_metrics = _train(neutral, neutral_config, 3)
  chex.assert_trees_all_equal(expected.params, got.params)
  assert "prior_weight" not in got_metrics[0]
  # A warm-up that starts at 1 weights the prior by exactly 1: the same numbers too.
  at_one_config, at_one = _method(prior_weight_start=1.0, prior_weight_warmup_epochs=6.0)
  got, _ = _train(at_one, at_one_config, 3)
  chex.assert_trees_all_close(expected.params, got.params, rtol=1e-6, atol=1e-7)


def test_the_warmup_reaches_the_chain_and_is_logged_per_batch():
  default_config, default = _method()
  config, warm = _method(prior_weight_start=0.1, prior_weight_warmup_epochs=6.0)
  expected, _ = _train(default, default_config, 2)
  got, logged = _train(warm, config, 2)
  np.testing.assert_allclose([float(m["prior_weight"]) for m in logged],
                             [0.1 + 1 / 60, 0.1 + 2 / 60], rtol=1e-6)
  # Under a fresh decoder the likelihood's gradient is small and the chain's travel is mostly
  # the prior's pull towards 0, which a weight of 0.12 makes far weaker; the decoder then
  # learns from other codes.
  _, default_logged = _train(default, default_config, 1)
  assert float(logged[0]["z_distance_sum"]) < 0.5 * float(default_logged[0]["z_distance_sum"])
  assert not np.allclose(expected.params["decoder"]["out_w"], got.params["decoder"]["out_w"])
  assert "prior_weight" in warm.report.train_metrics
  assert "beta 0.117" in warm.report.progress({"z_distance": 1.0, "grad_norm_first": 1.0,
                                               "grad_norm_last": 1.0, "temperature": 0.1,
                                               "prior_weight": 0.1167})


@pytest.mark.parametrize("kind", ["sri", "sri_learned"])
def test_feature_chains_with_dropout_on_or_off(kind):
  def features(dropout):
    config = replace(config_lib.tiny(), model={"kind": kind},
                     analysis={"feature_chains": 2, "feature_steps": 3,
                               "feature_dropout": dropout})
    method = methods.get(config, VOCAB)
    params = method.init_params(jax.random.key(0))
    batch = random_batch(12)
    return method, [jax.jit(method.latent.feature_step)(params, batch, jax.random.key(seed))
                    for seed in (1, 1, 2)]

  default_config = replace(config_lib.tiny(), model={"kind": kind},
                           analysis={"feature_chains": 2, "feature_steps": 3})
  default = methods.get(default_config, VOCAB)
  off_method, off = features(False)
  on_method, on = features(True)
  params = default.init_params(jax.random.key(0))
  chex.assert_trees_all_equal(
      jax.jit(default.latent.feature_step)(params, random_batch(12), jax.random.key(1)), off[0])
  chex.assert_trees_all_equal(on[0], on[1])  # a function of the key
  # Same key, same starting points: dropout alone moves the noiseless chains.
  assert not np.allclose(on[0][0], off[0][0])
  assert on_method.latent.feature_settings["dropout"] is True
  assert off_method.latent.feature_settings["dropout"] is False
  assert "dropout on" in on_method.latent.features


def test_a_prior_weight_out_of_range_names_its_flag():
  config = replace(config_lib.tiny(), langevin={"prior_weight_start": 0.0})
  with pytest.raises(config_lib.ConfigError, match="--config.langevin.prior_weight_start"):
    config_lib.validate(config)
