"""Musketeer's rounds against Flower's on one grid, one after the other, in one table.

It runs the Flower 1.42 harness (/work/shared/bench/flower/run_all.sh: a SuperLink and N
SuperNodes on loopback, no-op clients; it makes its own venv with pip on first use), then
bench/round_bench.py on the same (params, N) grid, and prints params, N, Flower's median
s/round, Musketeer's median s/round, and their ratio. Neither runs while the other does: run
the whole script under `flock /tmp/bench.lock` on a shared machine.

    .venv/bin/python bench/vs_flower.py [--params 1000000,10000000] [--participants 2,8]
                                        [--rounds 3] [--reps 1] [--json FILE]

Both sides answer every round with no training: Flower's clients add 0.001 to the weights,
Musketeer's bench/noop_participant.py sends them back unchanged (verified, decoded, re-encoded
and signed). Flower's s/round is the ServerApp's round time (its report.py); Musketeer's is the
aggregator's recorded duration_s. Each side's median over all its rounds is compared.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
FLOWER = Path("/work/shared/bench/flower/run_all.sh")


def run_flower(script: Path, params: list[int], nodes: list[int], rounds: int, reps: int,
               label: str) -> dict[tuple[int, int], float]:
    """Run Flower's harness; {(params, N): median s/round} from its summary CSV."""
    work = Path(os.environ.get("FLOWER_BENCH_DIR") or Path(tempfile.gettempdir()) / "musketeer-flower-bench")
    env = {**os.environ, "PARAMS": ",".join(map(str, params)), "NODES": ",".join(map(str, nodes)),
           "REPS": str(reps), "ROUNDS": str(rounds), "LABEL": label, "FLOWER_BENCH_DIR": str(work)}
    print(f"== Flower: {script} (PARAMS={env['PARAMS']} NODES={env['NODES']} REPS={reps} "
          f"ROUNDS={rounds})", flush=True)
    subprocess.run(["bash", str(script)], env=env, check=True)
    found: dict[tuple[int, int], float] = {}
    with open(work / "results" / f"summary_{label}.csv", newline="") as summary:
        for row in csv.DictReader(summary):
            found[(int(row["P"]), int(row["N"]))] = float(row["median_s_per_round"])
    return found


def run_musketeer(params: list[int], nodes: list[int], rounds: int) -> list[dict[str, Any]]:
    """Run bench/round_bench.py on the grid; its JSON rows."""
    with tempfile.TemporaryDirectory(prefix="vs-flower-") as folder:
        out = Path(folder) / "rounds.json"
        command = [sys.executable, str(BENCH / "round_bench.py"), "--params", ",".join(map(str, params)),
                   "--participants", ",".join(map(str, nodes)), "--rounds", str(rounds), "--json", str(out)]
        print(f"== Musketeer: {' '.join(command)}", flush=True)
        subprocess.run(command, check=True)
        rows: list[dict[str, Any]] = json.loads(out.read_text())
    return rows


def nearest(flower: dict[tuple[int, int], float], params: int, n: int) -> float | None:
    """Flower's figure for N and the closest model size (our Dense model rounds P to 1001 * units)."""
    sizes = [p for p, nodes in flower if nodes == n]
    if not sizes:
        return None
    best = min(sizes, key=lambda p: abs(p - params))
    return flower[(best, n)] if abs(best - params) <= 0.01 * params else None


def table(flower: dict[tuple[int, int], float], ours: list[dict[str, Any]]) -> str:
    """The comparison as a markdown table."""
    lines = ["| params | N | Flower s/round (median) | Musketeer s/round (median) | Musketeer mean | "
             "Flower / Musketeer |", "|---|---|---|---|---|---|"]
    for row in ours:
        mine = statistics.median(row["durations"])
        theirs = nearest(flower, row["params"], row["participants"])
        ratio = f"{theirs / mine:.1f}x" if theirs and mine > 0 else "n/a"
        shown = f"{theirs:.2f}" if theirs is not None else "n/a"
        lines.append(f"| {row['params']:,} | {row['participants']} | {shown} | {mine:.2f} | "
                     f"{row['s_per_round']:.2f} | {ratio} |")
    return "\n".join(lines)


def int_list(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", type=int_list, default=[1_000_000, 10_000_000])
    parser.add_argument("--participants", type=int_list, default=[2, 8])
    parser.add_argument("--rounds", type=int, default=3, help="rounds per run on both sides (default 3)")
    parser.add_argument("--reps", type=int, default=1, help="Flower's repetitions per combination (default 1)")
    parser.add_argument("--flower", type=Path, default=FLOWER, help=f"Flower's run_all.sh (default {FLOWER})")
    parser.add_argument("--label", default="vsmusketeer", help="Flower's result label")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write both sides' rows to FILE")
    args = parser.parse_args()
    flower = run_flower(args.flower, args.params, args.participants, args.rounds, args.reps, args.label)
    ours = run_musketeer(args.params, args.participants, args.rounds)
    text = table(flower, ours)
    print("\n" + text)
    print("\nMedian s/round over every round of each side (round 1 included); Flower / Musketeer > 1 means "
          "Musketeer's round is that many times shorter.")
    if args.json:
        flat = [{"params": p, "participants": n, "s_per_round": s} for (p, n), s in sorted(flower.items())]
        args.json.write_text(json.dumps({"flower": flat, "musketeer": ours}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
