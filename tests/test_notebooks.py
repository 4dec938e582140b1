"""Each notebook runs top to bottom on a small subset."""

import json

import nbformat
import pytest
from nbclient import NotebookClient

from conftest import ROOT

pytestmark = pytest.mark.long


@pytest.mark.parametrize("name", ["01_explore_data.ipynb", "02_baseline_vs_dropout.ipynb"])
def test_notebook_executes(name, monkeypatch, tmp_path):
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # the notebook's runs go to a temporary dir
    monkeypatch.setenv("FASHION_KERAS_NB_LIMIT", "500")
    monkeypatch.setenv("FASHION_KERAS_NB_EPOCHS", "2")
    path = ROOT / "notebooks" / name
    notebook = nbformat.read(path, as_version=4)
    assert all(not cell.get("outputs") for cell in notebook.cells if cell.cell_type == "code"), (
        "commit notebooks with outputs stripped"
    )
    NotebookClient(
        notebook,
        timeout=600,
        kernel_name="python3",
        resources={"metadata": {"path": str(path.parent)}},
    ).execute()  # raises at the first cell that fails
    assert any(
        o.output_type == "display_data" for c in notebook.cells for o in c.get("outputs", [])
    )
    # What the cells printed and the runs wrote: the subset and the 2 epochs above took effect.
    printed = "".join(o.get("text", "") for c in notebook.cells for o in c.get("outputs", []))
    if name.startswith("01"):
        assert "train: images (500, 28, 28, 1) float32" in printed, printed[-2000:]
    else:
        for variant in ("baseline", "dropout"):
            [run] = tmp_path.glob(f"fashion-keras-nb-*/{variant}")
            assert json.loads((run / "metrics.json").read_text())["epochs"] == 2
            assert f"{variant} {{'test_accuracy'" in printed, printed[-2000:]
