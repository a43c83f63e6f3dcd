"""The analysis modes on a trained workdir: files written, shapes, and bad input."""

import os

import pytest

from srlm import analysis
from srlm import config as config_lib
from srlm import train
from srlm.errors import UserError

from conftest import replace


@pytest.fixture(scope="module")
def workdir(tfds_dir, tmp_path_factory):
  path = str(tmp_path_factory.mktemp("trained"))
  config = config_lib.tiny()
  config.data.dir = tfds_dir
  train.train_and_evaluate(replace(config, train={"max_steps": 3}), path)
  return path


def _config(workdir, **analysis_fields):
  return config_lib.load_run_config(workdir, {f"analysis.{k}": v
                                              for k, v in analysis_fields.items()})


def test_sample_writes_the_requested_number_of_sentences(workdir):
  text, path = analysis.run_mode("sample", _config(workdir, num_samples=4, max_length=6),
                                 workdir)
  assert path == os.path.join(workdir, "samples.txt")
  with open(path) as f:
    lines = f.read().split("\n")[:-1]
  assert len(lines) == 4 and text.split("\n") == lines
  assert all(len(line.split()) <= 6 for line in lines)


def test_reconstruct_pairs_each_input_with_its_decoding(workdir, tmp_path):
  inputs = tmp_path / "in.txt"
  inputs.write_text("the market fell\n\nstocks rose sharply\n")
  _, path = analysis.run_mode("reconstruct", _config(workdir, input_file=str(inputs)), workdir)
  with open(path) as f:
    rows = [line.split("\t") for line in f.read().splitlines()]
  assert [r[0] for r in rows] == ["the market fell", "stocks rose sharply"]
  assert all(len(r) == 2 for r in rows)
  _, path = analysis.run_mode("reconstruct", _config(workdir, split="valid", max_sentences=3),
                              workdir)
  with open(path) as f:
    assert len(f.read().splitlines()) == 3


def test_interpolate_decodes_every_point_of_every_pair(workdir, tmp_path):
  _, path = analysis.run_mode(
      "interpolate", _config(workdir, pair="the market fell|stocks rose", num_points=5), workdir)
  with open(path) as f:
    lines = f.read().splitlines()
  assert lines[0] == "# the market fell | stocks rose" and len(lines) == 1 + 5 + 1
  pairs = tmp_path / "pairs.txt"
  pairs.write_text("the market fell|stocks rose\na b|c d\n")
  _, path = analysis.run_mode("interpolate", _config(workdir, pairs_file=str(pairs),
                                                     num_points=3), workdir)
  with open(path) as f:
    lines = f.read().splitlines()
  assert [l for l in lines if l.startswith("#")] == ["# the market fell | stocks rose",
                                                      "# a b | c d"]
  assert len(lines) == 2 * (1 + 3 + 1)
  # Each pair's segment is decoded from its own codes: the first block equals a lone run.
  _, alone = analysis.run_mode("interpolate", _config(workdir, pair="the market fell|stocks "
                                                      "rose", num_points=3), workdir)
  with open(alone) as f:
    assert f.read().splitlines() == lines[:5]


def test_posterior_means_are_deterministic_given_the_seed(workdir):
  from srlm import evaluate  # pylint: disable=import-outside-toplevel
  config = _config(workdir)
  run = evaluate.restore_trained(config, workdir)
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
    analysis.run_mode(mode, _config(workdir, **fields), workdir)


def test_the_lm_has_no_latent_space_to_analyse():
  config = config_lib.tiny()
  config.model.kind = "lm"
  with pytest.raises(UserError, match="LSTM-LM"):
    analysis.sample_prior(config, run=None)
