"""`python -m srlm.main`: the command line of srlm.cli (flags, modes, exit codes)."""

from srlm.cli import run

if __name__ == "__main__":
  run()
