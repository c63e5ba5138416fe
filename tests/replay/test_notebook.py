"""notebooks/tier_tradeoffs.ipynb runs top to bottom, offline, in this interpreter's environment."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "tier_tradeoffs.ipynb"


@pytest.mark.slow
def test_notebook_executes_and_draws_every_figure(monkeypatch: pytest.MonkeyPatch) -> None:
    nb = nbformat.read(NOTEBOOK, as_version=4)
    stored = [c for c in nb.cells if c.cell_type == "code"]
    assert stored and all(c.outputs for c in stored), "the notebook is stored executed"
    # The kernel spec runs `python`: make that this interpreter, and check it below.
    here = os.path.dirname(sys.executable)
    monkeypatch.setenv("PATH", here + os.pathsep + os.environ.get("PATH", ""))
    monkeypatch.setenv("TIERSEL_NOTEBOOK_CALLS", "300")  # an eighth of the trace it shows
    nb.cells.append(nbformat.v4.new_code_cell("import sys; print(sys.prefix)"))
    client = NotebookClient(
        nb,
        timeout=120,
        kernel_name="python3",
        resources={"metadata": {"path": str(NOTEBOOK.parent)}},
    )
    client.execute()
    code = [c for c in nb.cells if c.cell_type == "code"]
    errors = [o for c in code for o in c.outputs if o.output_type == "error"]
    assert not errors
    assert code[-1].outputs[0]["text"].strip() == sys.prefix
    figures = [
        o
        for c in code
        for o in c.outputs
        if o.output_type == "display_data" and "image/png" in o.data
    ]
    assert len(figures) == 5
    text = "".join(o.get("text", "") for c in code for o in c.outputs if o.output_type == "stream")
    for policy in (
        "tiersel",
        "always-standard",
        "always-priority",
        "cooldown",
        "retry-up",
        "oracle",
    ):
        assert policy in text
    assert "notebook ran in" in text
    assert "tiersel          ECE 0." in text and "oracle           ECE - (predicts nothing)" in text
