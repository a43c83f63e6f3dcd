"""The methods srlm trains and evaluates, one module each, behind one interface (base.Method).

`get(config, vocab_size)` builds the method named by --config.model.kind. To add a method:
write `srlm/methods/<name>.py` with `make(config, vocab_size, steps_per_epoch=1) -> Method`,
add one line to REGISTRY, give its settings a config section (srlm/config.py) if it has any,
and add `launch/ptb_<name>.flags` with its `_tiny` variant for the tests.
"""

from typing import Callable

from srlm import config as config_lib
from srlm.config import Config
from srlm.errors import ConfigError
from srlm.methods import lm
from srlm.methods import savae
from srlm.methods import sri
from srlm.methods import sri_learned
from srlm.methods import vae
from srlm.methods.base import Method

# --config.model.kind -> make(config, vocab_size, steps_per_epoch=1) -> Method
REGISTRY: dict[str, Callable[..., Method]] = {
    "sri": sri.make,
    "sri_learned": sri_learned.make,
    "lm": lm.make,
    "vae": vae.make,
    "savae": savae.make,
}


def validate(config: Config) -> Config:
  """config_lib.validate, and the method's name: raises ConfigError naming the flag."""
  config_lib.validate(config)
  if config.model.kind not in REGISTRY:
    raise ConfigError(f"--config.model.kind: unknown method {config.model.kind!r}; known: "
                      f"{', '.join(REGISTRY)}")
  return config


def get(config: Config, vocab_size: int, steps_per_epoch: int = 1) -> Method:
  """The method of config.model.kind, for a vocabulary of vocab_size words.

  steps_per_epoch matters only to schedules over decoder steps (the VAE's KL annealing), i.e.
  when training. Raises ConfigError for an unknown kind.
  """
  validate(config)
  return REGISTRY[config.model.kind](config, vocab_size, steps_per_epoch)
