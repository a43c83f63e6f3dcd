"""srlm: latent-variable text generators trained with short-run Langevin inference.

Pang, Nijkamp, Han, Wu. "Generative Text Modeling through Short Run Inference", EACL 2021.
"""

__version__ = "0.1.0"
