"""Every notebook in colab/ runs top to bottom on CPU."""
import pathlib

import nbclient
import nbformat
import pytest

NOTEBOOKS = sorted((pathlib.Path(__file__).resolve().parent.parent / "colab").glob("*.ipynb"))


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs_top_to_bottom(path):
  notebook = nbformat.read(path, as_version=4)
  # Run where a user opens it: in colab/ of the checkout (notebooks write only to temp dirs).
  client = nbclient.NotebookClient(notebook, timeout=900, kernel_name="python3",
                                   resources={"metadata": {"path": str(path.parent)}})
  client.execute()
  errors = [o for c in notebook.cells if c.cell_type == "code"
            for o in c.get("outputs", []) if o.get("output_type") == "error"]
  assert not errors
