"""The corpus builders: embedded PTB, source directories, and bad input."""

import os

import pytest
import tensorflow_datasets as tfds

from srlm import config as config_lib
from srlm.data import builders
from srlm.data import pipeline
from srlm.errors import CorpusError


def _write_corpus(directory, train, valid=b"a b\n", test=b"c d\n"):
  os.makedirs(directory, exist_ok=True)
  for name, data in (("ptb.train.txt", train), ("ptb.valid.txt", valid),
                     ("ptb.test.txt", test)):
    with open(os.path.join(directory, name), "wb") as f:
      f.write(data)
  return str(directory)


def _data_config(tfds_dir, source_dir=""):
  return config_lib.DataConfig(dir=tfds_dir, source_dir=source_dir)


def test_embedded_ptb_is_the_published_corpus(tfds_dir):
  texts, metadata = pipeline.load_texts(_data_config(tfds_dir))
  assert {k: len(v) for k, v in texts.items()} == {"train": 42068, "valid": 3370, "test": 3761}
  assert metadata["train_empty_lines"] == 0
  # File order is kept, with 1-based line numbers.
  assert [line for line, _ in texts["test"][:3]] == [1, 2, 3]
  assert texts["test"][0][1].startswith("no it was n't black monday")


def test_source_dir_round_trip_skips_and_counts_empty_lines(tfds_dir, tmp_path):
  source = _write_corpus(tmp_path / "c", b"the cat\n\n  \nsat down\n")
  texts, metadata = pipeline.load_texts(_data_config(tfds_dir, source))
  assert texts["train"] == [(1, "the cat"), (4, "sat down")]
  assert metadata["train_empty_lines"] == 2


def test_source_dir_matches_the_shared_copy(tfds_dir, shared_data):
  """The embedded PTB and the shared data directory give the same sentences."""
  shared, _ = pipeline.load_texts(_data_config(tfds_dir, str(shared_data / "ptb")))
  embedded, _ = pipeline.load_texts(_data_config(tfds_dir))
  assert shared == embedded


def test_edited_source_files_are_prepared_again(tfds_dir, tmp_path):
  source = _write_corpus(tmp_path / "c", b"one\n")
  assert pipeline.load_texts(_data_config(tfds_dir, source))[0]["train"] == [(1, "one")]
  _write_corpus(tmp_path / "c", b"two\n")
  assert pipeline.load_texts(_data_config(tfds_dir, source))[0]["train"] == [(1, "two")]


def test_missing_file_names_it(tfds_dir, tmp_path):
  source = _write_corpus(tmp_path / "c", b"a\n")
  os.remove(os.path.join(source, "ptb.valid.txt"))
  with pytest.raises(CorpusError, match=r"ptb\.valid\.txt does not exist"):
    pipeline.load_texts(_data_config(tfds_dir, source))


def test_non_utf8_line_names_file_and_line(tfds_dir, tmp_path):
  source = _write_corpus(tmp_path / "c", b"good line\nbad \xff line\n")
  with pytest.raises(CorpusError, match=r"ptb\.train\.txt, line 2: not valid UTF-8"):
    pipeline.load_texts(_data_config(tfds_dir, source))


def test_empty_corpus_is_an_error(tfds_dir, tmp_path):
  source = _write_corpus(tmp_path / "c", b"\n \n")
  with pytest.raises(CorpusError, match=r"ptb\.train\.txt holds no sentence"):
    pipeline.load_texts(_data_config(tfds_dir, source))


def test_builder_is_registered_for_tfds_data_source(tfds_dir):
  source = tfds.data_source("ptb", split="valid", data_dir=tfds_dir,
                            builder_kwargs={"file_format": "array_record"})
  assert len(source) == 3370 and set(source[0]) == {"text", "line"}
  assert builders.BUILDERS["ptb"] is builders.Ptb
