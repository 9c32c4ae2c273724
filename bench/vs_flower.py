"""Musketeer's rounds against Flower's and NVIDIA FLARE's on one grid, one after the other, in one table.

It runs the Flower 1.42 harness (/work/shared/bench/flower/run_all.sh: a SuperLink and N
SuperNodes on loopback, no-op clients), the FLARE 2.9 harness (/work/shared/bench/flare/run_all.sh:
POC mode, server and N clients as processes, FedAvg), each making its own venv with pip on first
use, then bench/round_bench.py on the same (params, N) grid, and prints each peer's median
s/round beside Musketeer's with the ratios. None runs while another does: run the whole script
under `flock /tmp/bench.lock` on a shared machine.

    .venv/bin/python bench/vs_flower.py [--params 1000000,10000000] [--participants 2,8]
                                        [--rounds 3] [--reps 1] [--peers flower,flare] [--json FILE]

Every side answers every round with no training: Flower's and FLARE's clients add 0.001 to the
weights, Musketeer's bench/noop_participant.py sends them back unchanged (verified, decoded,
re-encoded and signed). Flower's s/round is the ServerApp's round time (its report.py), median
over all rounds; FLARE's is from its server job log, median of rounds 2-3 (its harness's
figure), so it is compared with Musketeer's median of rounds 2 on; Musketeer's is the
aggregator's recorded duration_s.
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
FLARE = Path("/work/shared/bench/flare/run_all.sh")
# The FLARE harness works in this fixed folder (its scripts' base).
FLARE_RESULTS = Path("/tmp/flare-bench/results")
Grid = dict[tuple[int, int], float]
_SIGPIPE_EXIT = 128 + 13


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


def run_flare(script: Path, params: list[int], nodes: list[int]) -> Grid:
    """Run FLARE's harness; {(params, N): median s/round of rounds 2-3} from its result files."""
    results = {(p, n): FLARE_RESULTS / f"P{p}_N{n}" / "result.json" for p in params for n in nodes}
    for path in results.values():
        path.unlink(missing_ok=True)  # a run that fails must not leave an older run's figure
    env = {**os.environ, "PARAMS": ",".join(map(str, params)), "NODES": ",".join(map(str, nodes))}
    print(f"== FLARE: {script} (PARAMS={env['PARAMS']} NODES={env['NODES']})", flush=True)
    if subprocess.run(["bash", str(script)], env=env, check=False).returncode == _SIGPIPE_EXIT:
        # On its first run the harness prepares its POC workspace with `yes | nvflare poc
        # prepare` under `set -o pipefail`: `yes` dies of SIGPIPE and the script stops (141)
        # after preparing it. A second run finds the workspace and goes on.
        print("   FLARE's harness stopped after preparing its workspace (exit 141); once more", flush=True)
        subprocess.run(["bash", str(script)], env=env, check=True)
    found: Grid = {}
    for key, path in results.items():
        try:
            value = json.loads(path.read_text())["median_r2_r3_s"]
        except (OSError, ValueError, KeyError):
            print(f"   FLARE P={key[0]} N={key[1]}: no result ({path})", flush=True)
            continue
        if value is not None:
            found[key] = float(value)
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


def nearest(peer: Grid, params: int, n: int) -> float | None:
    """A peer's figure for N and the closest model size (our Dense model rounds P to 1001 * units)."""
    sizes = [p for p, nodes in peer if nodes == n]
    if not sizes:
        return None
    best = min(sizes, key=lambda p: abs(p - params))
    return peer[(best, n)] if abs(best - params) <= 0.01 * params else None


def table(flower: Grid | None, flare: Grid | None, ours: list[dict[str, Any]]) -> str:
    """The comparison as a markdown table (a peer not run has no columns)."""
    head = ["params", "N"]
    if flower is not None:
        head += ["Flower s/round (median)"]
    if flare is not None:
        head += ["FLARE s/round (median r2-3)"]
    head += ["Musketeer s/round (median)", "Musketeer median r2 on", "Musketeer mean", "Musketeer cycle (mean)"]
    if flower is not None:
        head += ["Flower / Musketeer"]
    if flare is not None:
        head += ["FLARE / Musketeer (r2 on)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in ours:
        durations = row["durations"]
        mine, later = statistics.median(durations), statistics.median(durations[1:] or durations)
        key = (row["params"], row["participants"])
        theirs = {name: nearest(grid, *key) for name, grid in (("flower", flower), ("flare", flare))
                  if grid is not None}
        cells = [f"{row['params']:,}", str(row["participants"])]
        cells += [_shown(value) for value in theirs.values()]
        cells += [f"{mine:.2f}", f"{later:.2f}", f"{row['s_per_round']:.2f}", _shown(row.get("cycle_s"))]
        if "flower" in theirs:
            cells.append(_ratio(theirs["flower"], mine))
        if "flare" in theirs:
            cells.append(_ratio(theirs["flare"], later))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _shown(value: float | None) -> str:
    return f"{value:.2f}" if value is not None else "n/a"


def _ratio(theirs: float | None, mine: float) -> str:
    return f"{theirs / mine:.1f}x" if theirs and mine > 0 else "n/a"


def int_list(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", type=int_list, default=[1_000_000, 10_000_000])
    parser.add_argument("--participants", type=int_list, default=[2, 8])
    parser.add_argument("--rounds", type=int, default=3, help="rounds per run on both sides (default 3)")
    parser.add_argument("--reps", type=int, default=1, help="Flower's repetitions per combination (default 1)")
    parser.add_argument("--peers", default="flower,flare",
                        help="which peers to run before us: flower, flare or both (default flower,flare)")
    parser.add_argument("--flower", type=Path, default=FLOWER, help=f"Flower's run_all.sh (default {FLOWER})")
    parser.add_argument("--flare", type=Path, default=FLARE, help=f"FLARE's run_all.sh (default {FLARE})")
    parser.add_argument("--label", default="vsmusketeer", help="Flower's result label")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write both sides' rows to FILE")
    args = parser.parse_args()
    peers = {part.strip() for part in args.peers.split(",") if part.strip()}
    if not peers <= {"flower", "flare"}:
        parser.error(f"--peers: {', '.join(sorted(peers - {'flower', 'flare'}))} is not flower or flare")
    flower = (run_flower(args.flower, args.params, args.participants, args.rounds, args.reps, args.label)
              if "flower" in peers else None)
    flare = run_flare(args.flare, args.params, args.participants) if "flare" in peers else None
    ours = run_musketeer(args.params, args.participants, args.rounds)
    text = table(flower, flare, ours)
    print("\n" + text)
    print("\nFlower: median over every round (round 1 included); FLARE: median of rounds 2-3, against "
          "Musketeer's median from round 2 on. A ratio > 1 means Musketeer's round is that many times "
          "shorter. Musketeer's s/round (its recorded duration_s) runs to the round's model being "
          "stored, which overlaps the next round; its cycle, the time between consecutive rounds' "
          "records, is what a round costs end to end.")
    if args.json:
        flat = {name: [{"params": p, "participants": n, "s_per_round": s} for (p, n), s in sorted(grid.items())]
                for name, grid in (("flower", flower), ("flare", flare)) if grid is not None}
        args.json.write_text(json.dumps({**flat, "musketeer": ours}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
