"""The config: every launcher flagfile parses and validates, and no config field is dead."""

import dataclasses
import re

import pytest

from srlm import cli
from srlm import config as config_lib
from srlm import methods

from helpers import REPO

FLAGFILES = sorted(p.relative_to(REPO) for p in (REPO / "launch").glob("*.flags"))


@pytest.mark.parametrize("flagfile", FLAGFILES, ids=str)
def test_every_launch_flagfile_parses_and_validates(flagfile):
  config = cli.config_from_flags([f"--flagfile={REPO / flagfile}"])
  methods.validate(config)


def _fields():
  for section in dataclasses.fields(config_lib.Config):
    section_type = config_lib.section_type(section)
    for field in dataclasses.fields(section_type):
      yield section.name, field.name


def test_every_config_field_is_read_somewhere():
  """A field nothing reads is a flag that silently does nothing. Reads are attribute accesses
  (`config.train.seed`, `a.feature_steps`) in srlm/, outside the dataclass definitions."""
  sources = []
  for path in (REPO / "srlm").rglob("*.py"):
    text = path.read_text()
    if path.name == "config.py":
      # Only its functions read fields; the dataclass bodies declare them.
      text = text[text.index("def _check("):]
    sources.append(text)
  code = "\n".join(sources)
  unread = [f"{section}.{name}" for section, name in _fields()
            if not re.search(rf"\.{name}\b(?!\s*\()", code)]
  assert not unread, f"config fields that no code reads: {unread}"


def test_the_field_list_is_not_empty():
  """Guards the test above against reading nothing."""
  assert len(list(_fields())) > 40
