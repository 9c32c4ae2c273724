"""The benchmark scripts still import and parse their arguments (they are not run by the suite)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


@pytest.mark.parametrize("script", sorted(p.name for p in BENCH.glob("*.py") if p.name != "aggregator_rss.py"))
def test_bench_script_shows_its_help(script: str) -> None:
    """`--help` imports everything the script uses and describes it; a broken import fails here."""
    result = subprocess.run([sys.executable, str(BENCH / script), "--help"], capture_output=True,
                            text=True, timeout=120, check=False)

    assert result.returncode == 0, result.stderr
    assert "usage:" in result.stdout and "--" in result.stdout


def test_the_side_by_side_table_puts_each_peer_beside_us_with_its_ratio() -> None:
    """Flower is compared with our median over all rounds, FLARE (whose harness skips round 1) with
    ours from round 2 on; our cycle stands beside; a peer not run has no columns, a point it
    lacks shows n/a."""
    sys.path.insert(0, str(BENCH))
    try:
        import vs_flower
    finally:
        sys.path.remove(str(BENCH))
    ours = [{"params": 999_999, "participants": 2, "durations": [0.9, 0.3, 0.2], "s_per_round": 0.47,
             "cycle_s": 0.21},
            {"params": 9_999_990, "participants": 8, "durations": [3.0, 2.5, 2.4], "s_per_round": 2.63,
             "cycle_s": None}]

    both = vs_flower.table({(1_000_000, 2): 6.0}, {(1_000_000, 2): 2.5, (10_000_000, 8): 4.9}, ours)
    flower_only = vs_flower.table({(1_000_000, 2): 6.0}, None, ours)

    rows = [line.split(" | ") for line in both.splitlines()[2:]]
    assert rows[0] == ["| 999,999", "2", "6.00", "2.50", "0.30", "0.25", "0.47", "0.21", "20.0x", "10.0x |"]
    assert rows[1] == ["| 9,999,990", "8", "n/a", "4.90", "2.50", "2.45", "2.63", "n/a", "n/a", "2.0x |"]
    assert "FLARE" not in flower_only and flower_only.splitlines()[2].endswith("| 20.0x |")


@pytest.mark.parametrize("value", ["abc", "0", "inf", "nan"])
def test_the_round_bench_refuses_a_scale_it_cannot_use(value: str) -> None:
    """--scale garbage stops the bench before it starts anything, and the message names the option."""
    result = subprocess.run([sys.executable, str(BENCH / "round_bench.py"), "--scale", value],
                            capture_output=True, text=True, timeout=120, check=False)

    assert result.returncode == 2, result.stderr
    assert "--scale must be" in result.stderr and repr(value) in result.stderr
    assert "API http" not in result.stdout  # no platform was started
