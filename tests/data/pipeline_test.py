"""Vocabulary, encoding, buckets and fixed-shape batches, deterministic epochs."""


import numpy as np
import pytest

from srlm import config as config_lib
from srlm import parallel
from srlm.data import pipeline
from srlm.data.vocab import BOS_ID, EOS_ID, PAD_ID, UNK_ID, build_vocabulary


@pytest.fixture(scope="module")
def corpus(tfds_dir):
  return pipeline.load_corpus(config_lib.DataConfig(dir=tfds_dir))


def test_ptb_vocabulary_and_token_counts(corpus):
  vocab = corpus.vocab
  assert len(vocab) == 10002  # 9,999 training types incl. <unk> + <pad> <s> </s>
  assert vocab.words[:5] == ("<pad>", "<unk>", "<s>", "</s>", "the")
  assert corpus.splits["test"].num_tokens == 82430  # 78,669 words + 3,761 </s>
  assert len(corpus.splits["test"]) == 3761
  ids = vocab.encode("the <unk> zzzunseen".split())
  assert list(ids) == [BOS_ID, vocab.words.index("the"), UNK_ID, UNK_ID, EOS_ID]
  assert vocab.decode(list(ids) + [PAD_ID]) == "the <unk> <unk>"


def test_vocabulary_is_deterministic_and_capped():
  sentences = [["b", "a"], ["a", "c"], ["c", "d"]]
  assert build_vocabulary(sentences).words[4:] == ("a", "c", "b", "d")
  assert len(build_vocabulary(sentences, max_size=6)) == 6


def test_batches_cover_every_sentence_once_with_fixed_shapes(corpus):
  config = config_lib.DataConfig(batch_size=32)
  split = corpus.splits["valid"]
  plan = pipeline.epoch_plan(split, config, seed=0, epoch=0)
  seen = np.concatenate(plan.indices)
  assert sorted(seen.tolist()) == list(range(len(split)))
  shapes = set()
  mesh = parallel.make_mesh(1)
  for batch, length, indices in zip(parallel.batches(split, plan, 32, mesh), plan.lengths,
                                    plan.indices):
    batch = {name: np.asarray(value) for name, value in batch.items()}
    shapes.add(batch["inputs"].shape)
    assert batch["inputs"].shape == batch["targets"].shape == batch["mask"].shape
    assert batch["inputs"].shape == (32, length - 1)
    # Each real row predicts its words and </s>; filler rows predict nothing.
    expected = [len(split.sentences[i]) - 1 for i in indices] + [0] * (32 - len(indices))
    assert batch["mask"].sum(axis=1).tolist() == expected
    np.testing.assert_array_equal(batch["inputs"][:, 1:], batch["targets"][:, :-1])
  assert shapes == {(32, b - 1) for b in config.buckets}


def test_epoch_order_is_a_function_of_seed_and_epoch(corpus):
  config = config_lib.DataConfig()
  split = corpus.splits["valid"]
  order = lambda seed, epoch: np.concatenate(
      pipeline.epoch_plan(split, config, seed, epoch).indices).tolist()
  assert order(0, 3) == order(0, 3)
  assert order(0, 3) != order(0, 4)
  assert order(0, 3) != order(1, 3)


def test_sentences_go_to_the_smallest_bucket_that_holds_them():
  assert [pipeline.bucket_index(n, (12, 22, 84)) for n in (3, 12, 13, 22, 23, 84)] == [
      0, 0, 1, 1, 2, 2]


@pytest.mark.parametrize("rule", ["drop", "truncate"])
def test_overlong_sentences_are_counted(rule):
  vocab = build_vocabulary([["a"]])
  config = config_lib.DataConfig(buckets=(5,), overlong=rule)
  texts = [(1, "a a a"), (2, "a a a a"), (3, "a")]
  split = pipeline.encode_split("train", texts, vocab, config, max_sentences=0)
  assert all(len(s) <= 5 for s in split.sentences)
  if rule == "drop":
    assert len(split) == 2 and split.counts["dropped"] == 1
    assert split.lines.tolist() == [1, 3]
  else:
    assert len(split) == 3 and split.counts["truncated"] == 1
    assert split.sentences[1].tolist()[-1] == EOS_ID and len(split.sentences[1]) == 5
