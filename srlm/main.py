"""Command line: `python -m srlm.main --flagfile=launch/ptb.flags --workdir=DIR`.

The only reader of absl flags. Builds the typed Config from `--config.<section>.<field>`
flags (flagfiles may include flagfiles) and calls the library. Re-running the same command
resumes from the workdir's latest checkpoint. User errors (bad flags, files, checkpoints) end
with a one-paragraph message and exit code 2; a run stopped by SIGTERM/SIGINT saves a
checkpoint and exits with 128 + the signal number.
"""

import logging as logging_std
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from srlm import config as config_lib
from srlm.errors import UserError

_CONFIG = config_flags.DEFINE_config_dataclass(
    "config", config_lib.Config(), "The run's config; set fields as --config.train.seed=1.")
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Directory for config.json, metrics.jsonl and checkpoints; an existing "
    "run there is resumed.")
_MODE = flags.DEFINE_enum("mode", "train", ["train"], "What to do with the workdir.")

EXIT_USER_ERROR = 2


def _fail(message: str) -> None:
  print(f"srlm: error: {message}", file=sys.stderr)
  sys.exit(EXIT_USER_ERROR)


def parse_flags(argv: list[str]) -> list[str]:
  """absl's parser, with flag and flagfile errors as one message instead of a traceback."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    _fail(f"{e}. Run `python -m srlm.main --helpfull` to list the flags.")
  except (KeyError, AttributeError, TypeError, ValueError) as e:
    # ml_collections raises these for an unknown --config.<field> or a value of the wrong type.
    text = e.args[0] if e.args else str(e)
    _fail(f"bad --config flag: {text}. Run `python -m srlm.main --helpfull` to list the "
          "config fields and their types.")
  except OSError as e:  # a --flagfile that cannot be read
    _fail(f"cannot read flagfile {e.filename}: {e.strerror}.")


class _QuietLibraries(logging_std.Filter):
  """Keeps Orbax's and TFDS's INFO chatter out of the log; their warnings still show."""

  def filter(self, record: logging_std.LogRecord) -> bool:
    return record.levelno >= logging_std.WARNING or not any(
        part in record.pathname for part in ("/orbax/", "/tensorflow_datasets/"))


def main(argv: list[str]) -> None:
  logging.get_absl_handler().addFilter(_QuietLibraries())
  if len(argv) > 1:
    _fail(f"unexpected arguments {argv[1:]}; flags are written --name=value.")
  if not _WORKDIR.value:
    _fail("--workdir is required: the directory where the run's checkpoints and metrics go.")
  from srlm import train  # pylint: disable=import-outside-toplevel  (keeps --help fast)
  try:
    result = train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  except UserError as e:
    _fail(str(e))
  logging.info("Run %s at step %d; workdir %s", result["status"], result["step"],
               _WORKDIR.value)
  if result["status"] == "preempted":
    sys.exit(128 + result["signal"])


def run() -> None:
  app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
  run()
