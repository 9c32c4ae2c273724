"""The benchmark scripts still import and parse their arguments (they are not run by the suite)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


@pytest.mark.parametrize("script", ["api_bench.py", "round_bench.py", "faults.py", "algorithms.py",
                                    "sklearn_reference.py"])
def test_bench_script_shows_its_help(script: str) -> None:
    """`--help` imports everything the script uses and describes it; a broken import fails here."""
    result = subprocess.run([sys.executable, str(BENCH / script), "--help"], capture_output=True,
                            text=True, timeout=120, check=False)

    assert result.returncode == 0, result.stderr
    assert "usage:" in result.stdout and "--" in result.stdout
