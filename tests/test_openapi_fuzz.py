"""schemathesis against /openapi.json of a real API process: no input makes it answer 5xx."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.conftest import ApiProcess, unique

pytestmark = pytest.mark.integration


def test_no_generated_request_gets_a_server_error(api: ApiProcess, tmp_path: Path) -> None:
    """Fuzz every operation (coverage, fuzzing and stateful phases), authenticated: no 5xx."""
    name = unique("fuzz")
    httpx.post(f"{api.url}/v1/users", json={"username": name, "password": "fuzz-pass-1",
                                            "organization": "Fuzz"}).raise_for_status()
    token = httpx.post(f"{api.url}/v1/auth/token",
                       data={"username": name, "password": "fuzz-pass-1"}).json()["access_token"]
    cli = Path(sys.executable).parent / "schemathesis"
    result = subprocess.run(
        [str(cli), "run", f"{api.url}/openapi.json",
         "--checks", "not_a_server_error",
         "--header", f"Authorization: Bearer {token}",
         "--max-examples", "30", "--seed", "824988",
         "--request-timeout", "30"],
        capture_output=True, text=True, timeout=540, cwd=tmp_path,  # under pytest's 600 s
    )
    report = result.stdout[-6000:] + result.stderr[-2000:]
    assert result.returncode == 0, report
    assert "passed" in result.stdout.lower() or "0 failures" in result.stdout.lower(), report
