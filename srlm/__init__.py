"""srlm: latent-variable text generators trained with short-run Langevin inference.

Pang, Nijkamp, Han, Wu. "Generative Text Modeling through Short Run Inference", EACL 2021.
The maths, the estimators and where srlm departs from the original code: docs/method.md.

Array names carry their shapes as suffixes (`logits_BxLxV`), in these letters:
  B  sentences in a batch              L  time steps (tokens) of a padded batch
  E  word embedding size               H  LSTM hidden size
  D  latent size (z)                   V  vocabulary size
  K  Langevin steps of a chain         M  importance samples per sentence (eval NLL)
  S  posterior chains per sentence     N  a flattened or whole-split count (tokens, sentences)
T is kept for the chain's noise temperature in equations; code spells it `temperature`.
"""

__version__ = "0.1.0"
