"""The analysis modes on a trained workdir: files written, shapes, and bad input."""

import json
import os

import numpy as np
import pytest

from srlm import analysis
from srlm import config as config_lib
from srlm import methods
from srlm import runs
from srlm import train
from srlm.errors import UserError

from helpers import copy_workdir, replace


@pytest.fixture(scope="module")
def workdir(trained_workdir, tmp_path_factory):
  """The session's short SRI run, copied: the modes write their files into it."""
  return copy_workdir(trained_workdir("sri", 3), tmp_path_factory.mktemp("analysis"))


def _config(workdir, **analysis_fields):
  return config_lib.load_run_config(workdir, {f"analysis.{k}": v
                                              for k, v in analysis_fields.items()})


def _run_mode(mode, config, workdir):
  """srlm.main --mode=<mode> without the command line: the restored run, its mode function."""
  return getattr(analysis, f"{mode}_mode")(config, runs.restore_trained(config, workdir),
                                           workdir)


def test_sample_writes_the_requested_number_of_sentences(workdir):
  config = _config(workdir, num_samples=4, max_length=6)
  text, path = analysis.sample_mode(config, runs.restore_trained(config, workdir), workdir)
  assert path == os.path.join(workdir, "samples.txt")
  with open(path) as f:
    lines = f.read().split("\n")[:-1]
  assert len(lines) == 4 and text.split("\n") == lines
  assert all(len(line.split()) <= 6 for line in lines)


def test_reconstruct_pairs_each_input_with_its_decoding(workdir, tmp_path):
  inputs = tmp_path / "in.txt"
  inputs.write_text("the market fell\n\nstocks rose sharply\n")
  _, path = _run_mode("reconstruct", _config(workdir, input_file=str(inputs)), workdir)
  with open(path) as f:
    rows = [line.split("\t") for line in f.read().splitlines()]
  assert [r[0] for r in rows] == ["the market fell", "stocks rose sharply"]
  assert all(len(r) == 2 for r in rows)
  _, path = _run_mode("reconstruct", _config(workdir, split="valid", max_sentences=3),
                              workdir)
  with open(path) as f:
    assert len(f.read().splitlines()) == 3


def test_interpolate_decodes_every_point_of_every_pair(workdir, tmp_path):
  _, path = _run_mode(
      "interpolate", _config(workdir, pair="the market fell|stocks rose", num_points=5), workdir)
  with open(path) as f:
    lines = f.read().splitlines()
  assert lines[0] == "# the market fell | stocks rose" and len(lines) == 1 + 5 + 1
  pairs = tmp_path / "pairs.txt"
  pairs.write_text("the market fell|stocks rose\na b|c d\n")
  _, path = _run_mode("interpolate", _config(workdir, pairs_file=str(pairs),
                                                     num_points=3), workdir)
  with open(path) as f:
    lines = f.read().splitlines()
  assert [l for l in lines if l.startswith("#")] == ["# the market fell | stocks rose",
                                                      "# a b | c d"]
  assert len(lines) == 2 * (1 + 3 + 1)
  # Each pair's segment is decoded from its own codes: the first block equals a lone run.
  _, alone = _run_mode("interpolate", _config(workdir, pair="the market fell|stocks "
                                                      "rose", num_points=3), workdir)
  with open(alone) as f:
    assert f.read().splitlines() == lines[:5]


def test_posterior_means_are_deterministic_given_the_seed(workdir):
  config = _config(workdir)
  run = runs.restore_trained(config, workdir)
  a = analysis.posterior_means(config, run, ["the market fell", "stocks rose"])
  b = analysis.posterior_means(config, run, ["the market fell", "stocks rose"])
  assert a.shape == (2, config.model.latent_dim) and (a == b).all()


@pytest.mark.parametrize("mode,fields,message", [
    ("interpolate", {}, "needs two sentences"),
    ("interpolate", {"pair": "only one sentence"}, "line 1 is not 'sentence a|sentence b'"),
    ("reconstruct", {"input_file": "/nonexistent/in.txt"}, "/nonexistent/in.txt does not exist"),
    ("reconstruct", {"split": "dev"}, "unknown split 'dev'"),
])
def test_bad_analysis_input_is_explained(workdir, mode, fields, message):
  with pytest.raises(UserError, match=message):
    _run_mode(mode, _config(workdir, **fields), workdir)


def test_the_lm_has_no_latent_space_to_analyse():
  config = replace(config_lib.tiny(), model={"kind": "lm"})
  run = runs.TrainedRun(corpus=None, method=methods.get(config, 30), params=None, step=0,
                        mesh=None, config=config)
  for mode in (analysis.sample_prior, lambda c, r: analysis.features(c, r, "test", "/tmp")):
    with pytest.raises(UserError, match="kind=lm"):
      mode(config, run)


def _feature_config(workdir, **fields):
  return _config(workdir, **{"feature_chains": 3, "feature_steps": 6, "batch_size": 16,
                             **fields})


def test_features_have_one_row_per_sentence_and_depend_only_on_the_seed(workdir, tmp_path):
  config = _feature_config(workdir)
  run = runs.restore_trained(config, workdir)
  first = analysis.features(config, run, "valid", str(tmp_path / "a"))
  second = analysis.features(config, run, "valid", str(tmp_path / "b"))
  num_valid = len(run.corpus.splits["valid"])
  assert first.features.shape == (num_valid, config.model.latent_dim)
  assert first.labels.shape == (num_valid,) and np.all(first.labels == -1)
  np.testing.assert_array_equal(first.features, second.features)
  other = analysis.features(_feature_config(workdir, seed=1), run, "valid", str(tmp_path / "c"))
  assert not np.allclose(other.features, first.features)


def test_features_are_reused_only_for_the_same_checkpoint_and_settings(workdir, tmp_path):
  config = _feature_config(workdir)
  run = runs.restore_trained(config, workdir)
  out = str(tmp_path)
  computed = analysis.features(config, run, "valid", out)
  saved = np.load(os.path.join(out, "features_valid.npy"))
  np.testing.assert_array_equal(saved, computed.features)
  # Mark the saved file: a matching record reuses it, other settings recompute.
  np.save(os.path.join(out, "features_valid.npy"), np.zeros_like(saved))
  assert np.all(analysis.features(config, run, "valid", out).features == 0)
  again = analysis.features(_feature_config(workdir, feature_steps=7), run, "valid", out)
  assert not np.all(again.features == 0)


def test_features_mode_writes_arrays_and_a_projection(workdir):
  text, path = _run_mode("features", _feature_config(workdir, split="valid"), workdir)
  assert path == os.path.join(workdir, "features_valid.npy") and "unlabelled" in text
  with open(os.path.join(workdir, "features_valid.png"), "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  with pytest.raises(UserError, match="'valid' has no labels"):
    _run_mode("cluster", _feature_config(workdir, split="valid"), workdir)
  with pytest.raises(UserError, match="unknown split 'train_100'"):
    _run_mode("classify", _feature_config(workdir), workdir)


def test_training_draws_its_curves(workdir):
  with open(os.path.join(workdir, "training_curves.png"), "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"


_POSITIVE, _NEGATIVE, _NEUTRAL = ("good", "great", "tasty"), ("bad", "awful", "rude"), (
    "the", "food", "was", "service", "and")


def _labelled_corpus(directory, rng):
  """A short-Yelp-shaped corpus whose label decides which sentiment words a sentence uses."""
  os.makedirs(directory)
  with open(os.path.join(directory, "vocab.txt"), "w") as f:
    f.write("\n".join(["<pad>", "<s>", "</s>", "<unk>", *_POSITIVE, *_NEGATIVE, *_NEUTRAL])
            + "\n")
  lines_of = {}
  for name, size in (("train", 240), ("valid", 120), ("test", 400)):
    lines = lines_of[name] = []
    for _ in range(size):
      label = int(rng.integers(2))
      words = list(rng.choice(_NEUTRAL, 3)) + list(rng.choice(
          _POSITIVE if label else _NEGATIVE, 2))
      lines.append(f"{label}\t{' '.join(rng.permutation(words))}")
    with open(os.path.join(directory, f"short_yelp.{name}.txt"), "w") as f:
      f.write("\n".join(lines) + "\n")
  # A labelled subset, as short_yelp.train.100.txt is of the real corpus.
  with open(os.path.join(directory, "short_yelp.train.40.txt"), "w") as f:
    f.write("\n".join(lines_of["train"][:40]) + "\n")
  return str(directory)


def test_classify_and_cluster_find_the_labels_in_a_labelled_corpus(tfds_dir, tmp_path):
  source = _labelled_corpus(tmp_path / "corpus", np.random.default_rng(0))
  config = replace(config_lib.tiny(), data={
      "dir": tfds_dir, "corpus": "short_yelp", "source_dir": source, "buckets": (12,),
      "split_files": ("train_40=short_yelp.train.40.txt",), "max_eval_sentences": 0},
                   train={"max_steps": 100, "num_epochs": 4})
  workdir = str(tmp_path / "run")
  train.train_and_evaluate(config, workdir)
  # The paper's 40 noiseless steps; 3 chains instead of 200 (their starting points' share
  # of the mean shrinks by (1 - 0.4**2 / 2)**40 = 0.04 anyway).
  config = replace(config, analysis={"feature_chains": 3, "label_splits": ("train_40", "train")})
  text, path = _run_mode("classify", config, workdir)
  with open(path) as f:
    result = json.load(f)
  assert [row["train_split"] for row in result["rows"]] == ["train_40", "train"]
  assert [row["num_labels"] for row in result["rows"]] == [40, 240]
  # Only z can carry the sentiment from one word to the next, so after 100 steps the codes
  # hold it (about 0.72 here; chance is 0.5, one standard error 0.025).
  assert result["rows"][-1]["test_accuracy"] > 0.62, text
  assert "majority class on test" in text
  text, path = _run_mode("cluster", config, workdir)
  assert path == os.path.join(workdir, "cluster_test.json")
  with open(path) as f:
    assert 0.5 <= json.load(f)["accuracy"] <= 1.0


# Issue 14: fail fast, and say which input words the model does not know.

def test_classify_checks_its_splits_before_computing_features(workdir, tmp_path):
  config = _config(workdir)
  run = runs.restore_trained(config, workdir)
  out = str(tmp_path)  # features would be written here
  with pytest.raises(UserError, match="unknown split 'train_100'"):
    analysis.classify(config, run, out)
  config.analysis.label_splits, config.analysis.test_split = ("valid",), "test"
  with pytest.raises(UserError, match="split 'valid' has no labels"):
    analysis.classify(config, run, out)
  assert not os.listdir(out)


def test_unknown_input_words_are_named(workdir, caplog):
  config = _config(workdir)
  run = runs.restore_trained(config, workdir)
  analysis.posterior_means(config, run, ["the market fell", "zzxq qqzx"])
  text = caplog.text
  assert "2 input word(s) are not in the" in text and "qqzx, zzxq" in text
  assert "input sentence 2 ('zzxq qqzx') has no known word" in text
  assert "input sentence 1" not in text
