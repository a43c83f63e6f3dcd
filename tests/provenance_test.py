"""Results name what produced them: srlm's version, its own commit (never an enclosing
repository's), the matmul precision."""

import json
import shutil
import subprocess
import sys

import pytest

from srlm import reporting

from helpers import REPO


def _git(cwd, *args) -> str:
  return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True,
                        check=True).stdout.strip()


def test_a_checkout_records_its_own_commit():
  try:
    head = _git(REPO, "rev-parse", "HEAD")
  except (OSError, subprocess.CalledProcessError):
    pytest.skip("the suite runs outside a git checkout")
  record = reporting.provenance()
  assert record["srlm_commit"] in (head, f"{head}+changes")
  assert record["srlm_version"] and record["matmul_precision"] in ("default", "highest",
                                                                   "high", "tensorfloat32")


def test_an_archive_inside_another_repository_records_no_commit(tmp_path):
  """srlm unpacked from an archive into some other project's repository: that project's commit
  is not srlm's."""
  outer = tmp_path / "project"
  shutil.copytree(REPO / "srlm", outer / "vendor" / "srlm",
                  ignore=shutil.ignore_patterns("__pycache__"))
  _git(outer, "init", "-q")
  _git(outer, "-c", "user.name=x", "-c", "user.email=x@x", "commit", "-q", "--allow-empty",
       "-m", "another project")
  out = subprocess.run(
      [sys.executable, "-c", "import json, srlm, srlm.reporting as r; "
       "print(json.dumps({'file': srlm.__file__, **r.provenance()}))"],
      cwd=outer / "vendor", capture_output=True, text=True, check=True, timeout=120).stdout
  record = json.loads(out.splitlines()[-1])
  assert record["file"].startswith(str(outer))  # the copy, not the installed checkout
  assert record["srlm_commit"] is None and record["srlm_version"]
