"""launch/bundle.sh: srlm installed with no network from an offline bundle, and a run from it.

Host-JAX mode: the "image" is this test environment's packages (less srlm), so the bundle holds
srlm's wheel and the prepared PTB; a fresh virtual environment that sees the image's packages
installs srlm from the bundle with --no-index and trains two steps of the tiny config."""

import os
import pathlib
import subprocess
import sys
import sysconfig

from helpers import REPO


def _image_site_packages(tmp_path) -> pathlib.Path:
  """This environment's packages as an image would hold them: everything but srlm."""
  image = tmp_path / "image"
  image.mkdir()
  for entry in pathlib.Path(sysconfig.get_paths()["purelib"]).iterdir():
    if not entry.name.lower().startswith(("srlm", "__editable__")):
      (image / entry.name).symlink_to(entry)
  return image


def test_a_bundle_installs_srlm_without_an_index_and_a_tiny_run_works_from_it(tmp_path):
  freeze = tmp_path / "image-pip.txt"
  freeze.write_text(subprocess.run([sys.executable, "-m", "pip", "list", "--format=freeze"],
                                   capture_output=True, text=True, check=True).stdout)
  bundle = tmp_path / "bundle"
  built = subprocess.run(["bash", str(REPO / "launch" / "bundle.sh"), str(bundle), str(freeze)],
                         capture_output=True, text=True, timeout=600, check=False,
                         env={**os.environ, "PYTHON": sys.executable})
  assert built.returncode == 0, built.stderr[-3000:]
  assert [p.name for p in (bundle / "wheels").iterdir()] == ["srlm-0.1.0-py3-none-any.whl"]

  venv = tmp_path / "node"
  subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
  python = str(venv / "bin" / "python")
  node_site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()"
                              "['purelib'])"], capture_output=True, text=True,
                             check=True).stdout.strip()
  (pathlib.Path(node_site) / "image.pth").write_text(str(_image_site_packages(tmp_path)) + "\n")
  # No index, and the checkout out of sight: srlm can only come from the bundle.
  env = {**os.environ, "PIP_NO_INDEX": "1", "PYTHONPATH": ""}
  installed = subprocess.run(["bash", str(bundle / "install.sh"), python], capture_output=True,
                             text=True, timeout=300, check=False, env=env, cwd=tmp_path)
  assert installed.returncode == 0, installed.stderr[-3000:]
  assert f"TFDS_DATA_DIR={bundle}/tensorflow_datasets" in installed.stdout
  where = subprocess.run([python, "-c", "import srlm; print(srlm.__file__)"],
                         capture_output=True, text=True, check=True, env=env,
                         cwd=tmp_path).stdout
  assert where.startswith(node_site), where

  run = subprocess.run(
      [python, "-m", "srlm.main", "--flagfile=launch/ptb_tiny.flags",
       f"--workdir={tmp_path / 'run'}", "--config.train.max_steps=2",
       "--config.data.max_train_sentences=64", "--config.data.max_eval_sentences=8",
       "--config.data.buckets=(24,)"],
      cwd=bundle, capture_output=True, text=True, timeout=600, check=False,
      env={**env, "TFDS_DATA_DIR": str(bundle / "tensorflow_datasets")})
  assert run.returncode == 0, run.stderr[-3000:]
  assert "Prepared" not in run.stderr  # the bundle's prepared PTB was used
  assert (tmp_path / "run" / "metrics.jsonl").exists()
