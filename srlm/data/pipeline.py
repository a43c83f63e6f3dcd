"""From a prepared TFDS corpus to fixed-shape, length-bucketed batches.

A sentence of n words becomes `<s> w_1 .. w_n </s>` (n + 2 ids) and goes to the smallest bucket
length L that holds it; a batch of bucket L has `inputs` = ids[:-1] and `targets` = ids[1:],
both (B, L - 1), and `mask` (B, L - 1), 1.0 on the n + 1 predicted tokens (w_1 .. </s>), 0.0
on padding. Every batch has exactly `batch_size` rows: a bucket's last batch is filled with
all-padding rows (mask 0), so jit compiles once per bucket and every sentence is seen.

Training order is a pure function of (seed, epoch): sentences are shuffled within their
bucket, cut into batches, and the batches of all buckets shuffled together. The position in
an epoch is a batch index, which the checkpoint stores.
"""

import contextlib
import dataclasses
import hashlib
import io
import os
import re
import zipfile
from typing import Sequence

from absl import logging
import numpy as np
import tensorflow_datasets as tfds

from srlm import reporting
from srlm.config import DataConfig
from srlm.data import builders
from srlm.errors import CorpusError
from srlm.data.vocab import PAD_ID, EOS_ID, SPECIALS, Vocabulary, build_vocabulary

Batch = dict[str, np.ndarray]


@dataclasses.dataclass(frozen=True)
class Split:
  """One split, encoded: `sentences[i]` are the ids of source line `lines[i]`, whose label is
  `labels[i]` (-1 for unlabelled corpora)."""
  name: str
  sentences: list[np.ndarray]
  lines: np.ndarray
  # empty_lines (skipped when preparing), dropped / truncated (longer than the last bucket),
  # limited (beyond max_*_sentences).
  counts: dict[str, int]
  labels: np.ndarray

  def head(self, n: int) -> "Split":
    """The first n sentences."""
    return dataclasses.replace(self, sentences=self.sentences[:n], lines=self.lines[:n],
                               labels=self.labels[:n])

  def __len__(self) -> int:
    return len(self.sentences)

  @property
  def num_tokens(self) -> int:
    """Predicted tokens: the words and </s> of every sentence (PPL's denominator)."""
    return sum(len(s) - 1 for s in self.sentences)


@dataclasses.dataclass(frozen=True)
class Corpus:
  vocab: Vocabulary
  splits: dict[str, Split]


def load_texts(config: DataConfig) -> tuple[dict[str, list[tuple[int, str, int]]], dict]:
  """Prepares the corpus as ArrayRecord if needed; returns {split: [(line, text, label)]}
  and the data set's metadata."""
  builder_cls = builders.BUILDERS[config.corpus]
  # TFDS prints "Downloading and preparing dataset Unknown size ..." to stdout when it
  # prepares a corpus (nothing is downloaded): say what happens instead. Its progress bars
  # (stderr) still show.
  printed = io.StringIO()
  try:
    with contextlib.redirect_stdout(printed):
      sources = tfds.data_source(
          builder_cls.name, data_dir=config.dir or None,
          builder_kwargs={"file_format": "array_record", "source_dir": config.source_dir,
                          "split_files": tuple(config.split_files)})
  except CorpusError as e:
    # TFDS prefixes the message with its own context; the builder's message is what helps.
    raise CorpusError(e.message) from None
  prepared = re.search(r"prepared to (\S+?)\.? Subsequent", printed.getvalue())
  if prepared:
    logging.info("Prepared %s as ArrayRecord in %s (once; later runs read it).", config.corpus,
                 prepared.group(1))
  decoded_path, decoded_key = _decoded_path_and_key(sources)
  texts = _read_decoded(decoded_path, decoded_key, list(sources))
  if texts is None:
    texts = {}
    for split, source in sources.items():
      examples = source.__getitems__(range(len(source)))
      texts[split] = [(int(e["line"]), e["text"].decode("utf-8"), int(e["label"]))
                      for e in examples]
    _write_decoded(decoded_path, decoded_key, texts)
  return texts, dict(sources["train"].dataset_info.metadata)


# TFDS decodes its records one at a time in Python: 5 s for PTB's 49,199 sentences, paid by
# every command. The decoded splits are kept once beside the prepared files (DECODED, keyed by
# those files' names, sizes and times, so a corpus prepared again is decoded again) and read
# back in a fraction of a second.
DECODED = "srlm_decoded.npz"
_DECODED_FORMAT = 1  # raised when what DECODED holds changes


def _decoded_path_and_key(sources) -> tuple[str, str]:
  directory = next(iter(sources.values())).dataset_info.data_dir
  stamps = sorted((entry.name, entry.stat().st_size, entry.stat().st_mtime_ns)
                  for entry in os.scandir(directory)
                  if entry.is_file() and not entry.name.startswith((DECODED, ".")))
  return (os.path.join(directory, DECODED),
          hashlib.sha256(repr((_DECODED_FORMAT, sorted(sources), stamps)).encode()).hexdigest())


def _read_decoded(path: str, key: str,
                  splits: list[str]) -> dict[str, list[tuple[int, str, int]]] | None:
  """The splits' (line, text, label) items from DECODED, or None where it is missing, stale
  or unreadable (then they are decoded from the records)."""
  try:
    with np.load(path) as saved:
      if str(saved["key"]) != key:
        return None
      texts = {}
      for split in splits:
        lines, labels = saved[f"{split}.lines"].tolist(), saved[f"{split}.labels"].tolist()
        words = saved[f"{split}.texts"].tobytes().decode("utf-8").split("\n")
        if len(words) != max(len(lines), 1):
          return None
        texts[split] = list(zip(lines, words, labels))
      return texts
  except (OSError, KeyError, ValueError, zipfile.BadZipFile, UnicodeDecodeError):
    return None


def _write_decoded(path: str, key: str, texts: dict[str, list[tuple[int, str, int]]]) -> None:
  """Keeps the decoded splits for later runs; where the prepared data's folder cannot be
  written (a shared, read-only copy) every run decodes the records, as before."""
  if any("\n" in text for items in texts.values() for _, text, _ in items):
    return  # one text per line: a text holding a newline cannot be stored so
  arrays = {"key": np.array(key)}
  for split, items in texts.items():
    arrays[f"{split}.lines"] = np.array([line for line, _, _ in items], np.int64)
    arrays[f"{split}.labels"] = np.array([label for _, _, label in items], np.int64)
    arrays[f"{split}.texts"] = np.frombuffer(
        "\n".join(text for _, text, _ in items).encode("utf-8"), np.uint8)
  try:
    reporting.write_npz(path, arrays)
  except OSError as e:
    logging.info("Decoded corpus not kept (%s): every run decodes the prepared records.", e)


def encode_split(name: str, texts: Sequence[tuple], vocab: Vocabulary,
                 config: DataConfig, max_sentences: int, empty_lines: int = 0) -> Split:
  """Encodes (line, text) or (line, text, label) items, applying the over-long rule and the
  sentence limit, with counts."""
  max_len = config.buckets[-1]
  sentences, lines, labels = [], [], []
  counts = {"empty_lines": empty_lines, "dropped": 0, "truncated": 0, "limited": 0}
  for line, text, *label in texts:
    if max_sentences and len(sentences) == max_sentences:
      counts["limited"] += 1
      continue
    ids = vocab.encode(text.split())
    if len(ids) > max_len:
      if config.overlong == "drop":
        counts["dropped"] += 1
        continue
      ids = np.concatenate([ids[:max_len - 1], [EOS_ID]]).astype(np.int32)
      counts["truncated"] += 1
    sentences.append(ids)
    lines.append(line)
    labels.append(label[0] if label else -1)
  return Split(name, sentences, np.array(lines, np.int64), counts, np.array(labels, np.int64))


def load_corpus(config: DataConfig) -> Corpus:
  """Every split of the configured corpus, encoded with the training split's vocabulary."""
  texts, metadata = load_texts(config)
  if "vocab" in metadata:  # the corpus' own vocabulary, with srlm's special tokens first
    vocab = Vocabulary(SPECIALS + tuple(w for w in metadata["vocab"] if w not in SPECIALS))
  else:
    vocab = build_vocabulary((text.split() for _, text, _ in texts["train"]), config.vocab_size)
  splits = {}
  for name, split_texts in texts.items():
    limit = config.max_train_sentences if name == "train" else config.max_eval_sentences
    split = encode_split(name, split_texts, vocab, config, limit,
                         metadata.get(f"{name}_empty_lines", 0))
    splits[name] = split
    logging.info("%s %s: %d sentences, %d tokens; skipped %s", config.corpus, name,
                 len(split), split.num_tokens, split.counts)
  return Corpus(vocab, splits)


def bucket_index(num_ids: int, buckets: Sequence[int]) -> int:
  """The smallest bucket holding a sequence of num_ids ids (<s> and </s> included)."""
  return int(np.searchsorted(np.asarray(buckets), num_ids, side="left"))


def make_batch(sentences: Sequence[np.ndarray], length: int, batch_size: int) -> Batch:
  """Pads up to `batch_size` rows of `length` ids; returns inputs, targets and mask."""
  ids = np.full((batch_size, length), PAD_ID, np.int32)
  for row, sentence in enumerate(sentences):
    ids[row, :len(sentence)] = sentence
  targets = ids[:, 1:]
  return {"inputs": ids[:, :-1], "targets": targets,
          "mask": (targets != PAD_ID).astype(np.float32)}


@dataclasses.dataclass(frozen=True)
class BatchPlan:
  """Which sentences form each batch of an epoch, and each batch's padded length."""
  indices: list[np.ndarray]
  lengths: list[int]

  def __len__(self) -> int:
    return len(self.indices)


def plan_batches(split: Split, buckets: Sequence[int], batch_size: int,
                 rng: np.random.Generator | None = None) -> BatchPlan:
  """Groups sentences by bucket into batches; shuffled with `rng`, else in corpus order."""
  assignment = np.array([bucket_index(len(s), buckets) for s in split.sentences], np.int64)
  indices, lengths = [], []
  for b, length in enumerate(buckets):
    members = np.flatnonzero(assignment == b)
    if rng is not None:
      members = rng.permutation(members)
    for start in range(0, len(members), batch_size):
      indices.append(members[start:start + batch_size])
      lengths.append(length)
  if rng is not None:
    order = rng.permutation(len(indices))
    indices, lengths = [indices[i] for i in order], [lengths[i] for i in order]
  return BatchPlan(indices, lengths)


def epoch_plan(split: Split, config: DataConfig, seed: int, epoch: int) -> BatchPlan:
  """The training batches of `epoch` (0-based): a pure function of (seed, epoch)."""
  return plan_batches(split, config.buckets, config.batch_size,
                      np.random.default_rng([seed, epoch]))
