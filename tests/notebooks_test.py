"""notebooks/*.ipynb run top to bottom (in their quick size) and are stored without outputs."""

import json
import pathlib
import sys

import nbformat
import pytest
from nbclient import NotebookClient

from helpers import REPO

NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))


def test_the_notebooks_are_there():
  assert [p.name for p in NOTEBOOKS] == ["01_quickstart.ipynb", "02_latent_space.ipynb"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_stored_without_outputs(path):
  notebook = nbformat.read(path, as_version=4)
  for cell in notebook.cells:
    if cell.cell_type == "code":
      assert not cell.outputs and cell.execution_count is None, (
          f"{path.name} holds outputs: clear them before committing (Jupyter: Edit > Clear "
          "all outputs; or jupyter nbconvert --clear-output --inplace).")


def _kernel_spec(directory: pathlib.Path) -> str:
  """A kernel spec running this interpreter, so the notebooks import the srlm under test
  even where another Jupyter installation defines "python3"."""
  spec = directory / "kernels" / "srlm-test"
  spec.mkdir(parents=True)
  (spec / "kernel.json").write_text(json.dumps({
      "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
      "display_name": "srlm tests", "language": "python"}))
  return "srlm-test"


def _execute(path: pathlib.Path, monkeypatch, tmp_path, tfds_dir, **env) -> None:
  # The kernel inherits this environment: the quick size, a scratch workdir, the test cache.
  for name, value in {"SRLM_NOTEBOOK_QUICK": "1", "SRLM_NOTEBOOK_WORKDIR": str(tmp_path / "wd"),
                      "TFDS_DATA_DIR": tfds_dir, "JUPYTER_PATH": str(tmp_path / "jupyter"),
                      **env}.items():
    monkeypatch.setenv(name, value)
  kernel_name = _kernel_spec(tmp_path / "jupyter")
  notebook = nbformat.read(path, as_version=4)
  # Raises CellExecutionError, with the cell and its traceback, if any cell fails.
  NotebookClient(notebook, timeout=600, kernel_name=kernel_name,
                 resources={"metadata": {"path": str(path.parent)}}).execute()


def test_quickstart_notebook_runs(monkeypatch, tmp_path, tfds_dir):
  _execute(REPO / "notebooks" / "01_quickstart.ipynb", monkeypatch, tmp_path, tfds_dir)
  assert (tmp_path / "wd" / "training_curves.png").exists()


def test_latent_space_notebook_runs(monkeypatch, tmp_path, tfds_dir, shared_data):
  _execute(REPO / "notebooks" / "02_latent_space.ipynb", monkeypatch, tmp_path, tfds_dir,
           SRLM_SHORT_YELP_DIR=str(shared_data / "short_yelp"))
  assert (tmp_path / "wd" / "classification.json").exists()
  assert (tmp_path / "wd" / "features_test.png").exists()
