"""The corpus builders: embedded PTB, source directories, and bad input."""

import glob
import os

import numpy as np
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
  assert [line for line, _, _ in texts["test"][:3]] == [1, 2, 3]
  assert texts["test"][0][1].startswith("no it was n't black monday")


def test_source_dir_round_trip_skips_and_counts_empty_lines(tfds_dir, tmp_path):
  source = _write_corpus(tmp_path / "c", b"the cat\n\n  \nsat down\n")
  texts, metadata = pipeline.load_texts(_data_config(tfds_dir, source))
  assert texts["train"] == [(1, "the cat", -1), (4, "sat down", -1)]
  assert metadata["train_empty_lines"] == 2


def test_source_dir_matches_the_shared_copy(tfds_dir, shared_data):
  """The embedded PTB and the shared data directory give the same sentences."""
  shared, _ = pipeline.load_texts(_data_config(tfds_dir, str(shared_data / "ptb")))
  embedded, _ = pipeline.load_texts(_data_config(tfds_dir))
  assert shared == embedded


def test_edited_source_files_are_prepared_again(tfds_dir, tmp_path):
  source = _write_corpus(tmp_path / "c", b"one\n")
  assert pipeline.load_texts(_data_config(tfds_dir, source))[0]["train"] == [(1, "one", -1)]
  _write_corpus(tmp_path / "c", b"two\n")
  assert pipeline.load_texts(_data_config(tfds_dir, source))[0]["train"] == [(1, "two", -1)]


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
  assert len(source) == 3370 and set(source[0]) == {"text", "line", "label"}
  assert builders.BUILDERS["ptb"] is builders.Ptb


def _labelled_corpus(directory, train=b"1\tgreat food\n0\tbad service\n"):
  os.makedirs(directory, exist_ok=True)
  files = {"short_yelp.train.txt": train, "short_yelp.valid.txt": b"0\tcold soup\n",
           "short_yelp.test.txt": b"1\tnice staff\n\n",
           "vocab.txt": b"<pad>\n<s>\n</s>\n<unk>\ngreat\nfood\nbad\n"}
  for name, data in files.items():
    with open(os.path.join(directory, name), "wb") as f:
      f.write(data)
  return str(directory)


def test_decoded_splits_are_kept_and_read_back_while_the_records_are_unchanged(tmp_path,
                                                                             monkeypatch):
  """Every command reads the corpus: the decoded copy beside the records serves later runs,
  never a stale or damaged one."""
  source = _write_corpus(tmp_path / "c", "the café\nsat down\n".encode())
  config = _data_config(str(tmp_path / "tfds"), source)
  expected = {"train": [(1, "the café", -1), (2, "sat down", -1)], "valid": [(1, "a b", -1)],
              "test": [(1, "c d", -1)]}
  assert pipeline.load_texts(config)[0] == expected
  (decoded,) = glob.glob(str(tmp_path / "tfds" / "**" / pipeline.DECODED), recursive=True)
  with monkeypatch.context() as patch:  # read back, not decoded again
    patch.setattr(pipeline, "_write_decoded", lambda *_: pytest.fail("decoded again"))
    assert pipeline.load_texts(config)[0] == expected
  with open(decoded, "wb") as f:  # damaged (a full disk, say): decoded again and rewritten
    f.write(b"PK\x03\x04 cut short")
  assert pipeline.load_texts(config)[0] == expected
  with np.load(decoded) as saved:
    assert saved["train.lines"].tolist() == [1, 2]
  # Records rewritten in place (same size here): the copy no longer matches them.
  records = glob.glob(os.path.join(os.path.dirname(decoded), "*train.array_record*"))[0]
  os.utime(records, ns=(os.stat(records).st_atime_ns, os.stat(records).st_mtime_ns + 1))
  decoded_again = []
  with monkeypatch.context() as patch:
    patch.setattr(pipeline, "_write_decoded", lambda *_: decoded_again.append(True))
    assert pipeline.load_texts(config)[0] == expected and decoded_again
  _write_corpus(tmp_path / "c", b"two\n")  # prepared again from an edited source
  assert pipeline.load_texts(config)[0]["train"] == [(1, "two", -1)]


def test_labelled_corpus_round_trip_with_its_fixed_vocabulary(tfds_dir, tmp_path):
  source = _labelled_corpus(tmp_path / "sy")
  config = config_lib.DataConfig(corpus="short_yelp", dir=tfds_dir, source_dir=source)
  texts, metadata = pipeline.load_texts(config)
  assert texts["train"] == [(1, "great food", 1), (2, "bad service", 0)]
  assert texts["test"] == [(1, "nice staff", 1)] and metadata["test_empty_lines"] == 1
  corpus = pipeline.load_corpus(config)
  assert corpus.vocab.words == ("<pad>", "<unk>", "<s>", "</s>", "great", "food", "bad")
  assert corpus.splits["train"].labels.tolist() == [1, 0]
  assert corpus.vocab.decode(corpus.splits["valid"].sentences[0]) == "<unk> <unk>"


def test_split_files_rename_join_and_add_splits(tfds_dir, tmp_path):
  source = _labelled_corpus(tmp_path / "sy")
  with open(os.path.join(source, "extra.txt"), "wb") as f:
    f.write(b"1\tgreat")  # no final newline: joining must not glue lines together
  config = config_lib.DataConfig(
      corpus="short_yelp", dir=tfds_dir, source_dir=source,
      split_files=("train=extra.txt+short_yelp.valid.txt", "train_1=extra.txt"))
  texts, _ = pipeline.load_texts(config)
  assert [t[1:] for t in texts["train"]] == [("great", 1), ("cold soup", 0)]
  assert [t[1:] for t in texts["train_1"]] == [("great", 1)]


def test_malformed_labelled_line_names_file_and_line(tfds_dir, tmp_path):
  source = _labelled_corpus(tmp_path / "sy", train=b"1\tgood\nno label here\n")
  with pytest.raises(CorpusError, match=r"short_yelp\.train\.txt, line 2: expected "
                                         r"'label<TAB>sentence'"):
    pipeline.load_texts(config_lib.DataConfig(corpus="short_yelp", dir=tfds_dir,
                                              source_dir=source))


@pytest.mark.parametrize("corpus,missing,where", [
    ("short_yelp", "short_yelp.train.txt", "18h8UYr801qr-USCYRzZySi_DSbUkHW71"),
    ("snli", "snli.train.txt", "11NHEPxV7OrqmODozxQGezSU8093iUlUx"),
    ("yahoo", "train.txt", "1PecZKhrPkMZmvMyiOJfMS-FsHW3FE0rH"),
])
def test_missing_split_says_which_file_and_where_to_get_it(tfds_dir, shared_data, corpus,
                                                           missing, where):
  with pytest.raises(CorpusError, match=rf"{missing} does not exist.*'train' file.*{where}"):
    pipeline.load_texts(config_lib.DataConfig(corpus=corpus, dir=tfds_dir,
                                              source_dir=str(shared_data / corpus)))


def test_corpora_without_an_embedded_copy_need_a_source_dir(tfds_dir):
  with pytest.raises(CorpusError, match="yelp corpus is not embedded.*source_dir"):
    pipeline.load_texts(config_lib.DataConfig(corpus="yelp", dir=tfds_dir))


@pytest.mark.parametrize("spec", ["train", "=a.txt", "train="])
def test_malformed_split_files_entry_is_named(tfds_dir, tmp_path, spec):
  source = _labelled_corpus(tmp_path / "sy")
  with pytest.raises(CorpusError, match=r"--config.data.split_files: .* is not 'split=file"):
    pipeline.load_texts(config_lib.DataConfig(corpus="short_yelp", dir=tfds_dir,
                                              source_dir=source, split_files=(spec,)))
