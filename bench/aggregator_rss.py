"""Run `musketeer ARGS` (the real CLI) and write the process's memory use to a JSON file.

Used by bench/round_bench.py as the aggregator process:

    ROUND_BENCH_RSS_FILE=out.json python bench/aggregator_rss.py aggregate TASK --model F.keras

It only observes: `Aggregator._round` is wrapped so that, when round 1 begins,
the current RSS (the baseline: TensorFlow imported, the model built and the
round's weights broadcast) and the peak so far are noted, and the kernel's
peak-RSS counter is reset (`/proc/self/clear_refs` = 5). After each round the
peak is read again, so `rounds_peak_kib` is the peak while the rounds ran.
At exit `ru_maxrss` (the peak since the reset, final broadcast included) is
added. All values are KiB.
"""

from __future__ import annotations

import json
import os
import re
import resource
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

OUTPUT_ENV = "ROUND_BENCH_RSS_FILE"


def status_kib(field: str) -> int:
    """A `VmXXX` line of /proc/self/status, in KiB (0 if absent)."""
    text = Path("/proc/self/status").read_text()
    match = re.search(rf"^{field}:\s+(\d+) kB", text, re.MULTILINE)
    return int(match.group(1)) if match else 0


def reset_peak() -> bool:
    """Reset the kernel's peak-RSS counter (VmHWM) to the current RSS; False if refused."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def watch_rounds(record: dict[str, Any]) -> None:
    """Wrap the daemon's run_round to note memory around the rounds (behaviour unchanged)."""
    import aggregator.daemon

    original = aggregator.daemon.run_round

    def run_round(run: Any, round_no: int, *args: Any, **kwargs: Any) -> Any:
        if round_no == 1:
            record["baseline_rss_kib"] = status_kib("VmRSS")
            record["setup_peak_kib"] = status_kib("VmHWM")
            record["peak_reset"] = reset_peak()
        result = original(run, round_no, *args, **kwargs)
        record["rounds_peak_kib"] = status_kib("VmHWM")
        return result

    aggregator.daemon.run_round = run_round


def watch_folds(record: dict[str, Any]) -> None:
    """Wrap round.py's fold_update to note when each update was folded (epoch s; behaviour unchanged)."""
    import time

    import aggregator.round

    original = aggregator.round.fold_update
    folds: list[dict[str, Any]] = record.setdefault("folds", [])

    def fold_update(average: Any, accepted: Any, *args: Any, **kwargs: Any) -> Any:
        began = time.time()
        outcome = original(average, accepted, *args, **kwargs)
        folds.append({"sender": accepted.sender, "began": began, "done": time.time()})
        return outcome

    aggregator.round.fold_update = fold_update


def main() -> None:
    """Run the CLI with sys.argv; write the record even when it fails."""
    record: dict[str, Any] = {}
    watch_rounds(record)
    watch_folds(record)
    try:
        from infra.cli import main as cli_main

        cli_main()
    finally:
        record["ru_maxrss_kib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        record["exit_hwm_kib"] = status_kib("VmHWM")
        target = os.environ.get(OUTPUT_ENV)
        if target:
            Path(target).write_text(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()
