"""`musketeer demo` (what `make demo` runs): the seed's walk-through with federated training."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from infra.procs import find_free_port

pytestmark = pytest.mark.integration


def test_demo_trains_digits_to_ninety_percent_and_reports(tmp_path: Path) -> None:
    """The demo trains on digits, records the seed's history in order, writes its report."""
    # Not tmp_path for the platform: as root, the embedded PostgreSQL runs as another
    # user, who must be able to enter the folder.
    platform_dir = Path(tempfile.mkdtemp(prefix="musketeer-demo-"))
    env = {k: v for k, v in os.environ.items()
           if k not in ("DATABASE_URL", "KAFKA_BOOTSTRAP_SERVERS", "MUSKETEER_API_URL")}
    try:
        result = subprocess.run(
            [sys.executable, "-c", "from infra.cli import main; main()", "demo",
             "--platform-dir", str(platform_dir), "--api-port", str(find_free_port()),
             "--report-dir", str(tmp_path)],
            capture_output=True, text=True, timeout=600, env={**env, "COLUMNS": "200"},
        )
        output = result.stdout + result.stderr
        assert result.returncode == 0, output
        assert "demo finished" in output and "stopping PostgreSQL" in output
        report = json.loads((tmp_path / "demo-report.json").read_text())
        rounds = report["definition"]["rounds"]
        assert report["history"] == (["TaskCreated", "ParticipantJoined", "ParticipantJoined",
                                      "TaskStarted"] + ["RoundCompleted"] * rounds
                                     + ["TaskCompleted"])
        assert report["final"]["accuracy"] >= 0.90
        assert len(report["final"]["confusion_matrix"]) == 10
        assert report["hash_chain_ok"] is True
        assert (tmp_path / "demo-accuracy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    finally:
        shutil.rmtree(platform_dir, ignore_errors=True)
