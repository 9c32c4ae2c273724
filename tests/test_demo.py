"""`musketeer demo` (what `make demo` runs) on the embedded platform, end to end."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from infra.procs import find_free_port

pytestmark = pytest.mark.integration


def test_demo_walks_through_the_seed_steps_and_exits_zero() -> None:
    """The demo starts its platform, records the seed's steps, verifies the log and stops."""
    # Not tmp_path: as root, the embedded PostgreSQL runs as another user who
    # must be able to enter the folder.
    data_dir = Path(tempfile.mkdtemp(prefix="musketeer-demo-"))
    env = {k: v for k, v in os.environ.items()
           if k not in ("DATABASE_URL", "KAFKA_BOOTSTRAP_SERVERS", "MUSKETEER_API_URL")}
    try:
        result = subprocess.run(
            [sys.executable, "-c", "from infra.cli import main; main()", "demo",
             "--data-dir", str(data_dir), "--api-port", str(find_free_port())],
            capture_output=True, text=True, timeout=300, env={**env, "COLUMNS": "200"},
        )
        output = result.stdout + result.stderr
        assert result.returncode == 0, output
        for step in ("alice", "john joined: 1/2", "jack joined: 2/2", "TaskCreated",
                     "ParticipantJoined", "intact", "demo finished", "stopping PostgreSQL"):
            assert step in output, f"missing {step!r} in:\n{output}"
        assert output.count("ParticipantJoined") == 2
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)
