"""Errors that are the user's to fix: `srlm.main` prints them as one paragraph, no traceback."""


class UserError(Exception):
  """Bad input (a file, a flag, a workdir): the message says what is wrong and what to do."""

  def __init__(self, message: str):
    super().__init__(message)
    # Kept apart from args, which some libraries (TFDS) rewrite with their own prefix.
    self.message = message


class CorpusError(UserError):
  """A corpus file is missing, unreadable, not UTF-8, or empty."""


class ConfigError(UserError):
  """A config value is out of range or inconsistent; the message names the flag."""


class CheckpointError(UserError):
  """The workdir's checkpoint cannot be restored (corrupt, or from another config)."""


class DivergenceError(UserError):
  """Training produced a non-finite loss, gradient, chain state or parameter."""


class StorageError(UserError):
  """The workdir's disk is full (or over quota): a checkpoint or result cannot be written."""
