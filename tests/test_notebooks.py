"""The notebooks in notebooks/ run, top to bottom, against a platform the test starts (the
session's API process, PostgreSQL and broker), so they cannot rot. Each notebook asserts its own
results (e.g. the downloaded model scores what the aggregator reported)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ApiProcess

pytestmark = pytest.mark.integration
NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"


# What each notebook's last cells print when everything they assert held.
CONCLUSIONS = {"walkthrough": "hash chain intact: True", "smart_manufacturing": "downloaded model on raw readings"}


@pytest.mark.parametrize("name", sorted(CONCLUSIONS))
def test_the_notebook_runs_against_a_live_platform(
    name: str, api: ApiProcess, broker: Any, topic_prefix: str, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every cell executes without error on a real platform; the outputs are kept for reading."""
    import nbformat
    from nbclient import NotebookClient

    # The kernel inherits this environment: it points the notebook's Profile at this platform.
    monkeypatch.setenv("MUSKETEER_API_URL", api.url)
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", broker.bootstrap)
    monkeypatch.setenv("MUSKETEER_TOPIC_PREFIX", topic_prefix)
    monkeypatch.setenv("MUSKETEER_PROFILE", str(tmp_path / "no-profile.json"))
    monkeypatch.setenv("PYTHONPATH", str(NOTEBOOKS.parent))
    monkeypatch.setenv("TF_NUM_INTEROP_THREADS", "1")
    monkeypatch.setenv("TF_NUM_INTRAOP_THREADS", "1")
    notebook = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    client = NotebookClient(notebook, timeout=900, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
    nbformat.write(notebook, tmp_path / f"{name}.executed.ipynb")
    outputs = "".join(str(o.get("text", "")) for c in notebook.cells for o in c.get("outputs", []))
    print(f"\n--- {name}.ipynb printed:\n{outputs}")
    assert CONCLUSIONS[name] in outputs
