"""Word vocabulary built from a corpus' training split.

Ids 0-3 are `<pad>`, `<unk>`, `<s>`, `</s>` (the SA-VAE / sri_text order), then the training
words by decreasing frequency, ties broken alphabetically, so the vocabulary is a pure function
of the training text.
"""

import collections
import dataclasses
from typing import Iterable, Sequence

import numpy as np

PAD, UNK, BOS, EOS = "<pad>", "<unk>", "<s>", "</s>"
SPECIALS = (PAD, UNK, BOS, EOS)
PAD_ID, UNK_ID, BOS_ID, EOS_ID = range(4)


@dataclasses.dataclass(frozen=True)
class Vocabulary:
  words: tuple[str, ...]

  def __post_init__(self):
    assert self.words[:4] == SPECIALS, self.words[:4]
    object.__setattr__(self, "_index", {w: i for i, w in enumerate(self.words)})

  def __len__(self) -> int:
    return len(self.words)

  def encode(self, tokens: Sequence[str]) -> np.ndarray:
    """`<s> tokens </s>` as int32 ids; unknown words map to `<unk>`."""
    index = self._index
    return np.array([BOS_ID] + [index.get(t, UNK_ID) for t in tokens] + [EOS_ID], np.int32)

  def decode(self, ids: Iterable[int]) -> str:
    """Words up to the first `</s>`, skipping `<s>` and `<pad>`."""
    words = []
    for i in ids:
      i = int(i)
      if i == EOS_ID:
        break
      if i not in (PAD_ID, BOS_ID):
        words.append(self.words[i])
    return " ".join(words)


def build_vocabulary(sentences: Iterable[Sequence[str]], max_size: int = 0) -> Vocabulary:
  """The training words (all of them, or the max_size - 4 most frequent) after the specials."""
  counts = collections.Counter(w for s in sentences for w in s)
  for special in SPECIALS:
    counts.pop(special, None)  # PTB's own <unk> token is our <unk>
  words = sorted(counts, key=lambda w: (-counts[w], w))
  if max_size:
    words = words[:max_size - len(SPECIALS)]
  return Vocabulary(SPECIALS + tuple(words))
