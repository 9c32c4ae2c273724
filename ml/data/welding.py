"""Seeded synthetic welding data following the seed's smart-manufacturing use case (§3.4).

Two spot-welding robots, FPS2 and FPD2, record per weld:

- WELCNT     cumulative weld counter (about 1e5; says nothing about quality)
- WDRSCNT    welds since the electrode was last dressed (0 to a few hundred; wear lowers quality)
- WELR       weld resistance in ohms (about 1e-4; high resistance lowers quality)
- WELCUR1_S  welding current in amperes (about 1e4; more current raises quality)

The target WCLSRES is a quality score binned into 4 classes (0 worst, 3 best). The scales
differ by nine orders of magnitude on purpose: without (federated) standardisation an MLP
barely sees WELR.

One rule links the features to quality at both sites (the physics is the same); the robots'
operating ranges differ (FPD2 runs with less current, more resistance and longer dressing
intervals), so their class mixes differ, but every class occurs at both, and in any split of
a few hundred welds. A little measurement noise keeps the classes learnable but not trivially:
a model reaches about 90 % where always answering the commonest class gets about 40 %.

Real row counts of the seed's two robots are not published with the deliverable we follow;
DEFAULT_ROWS (FPS2 2,400 welds, FPD2 1,600) gives the sites unequal sizes as a real
federation has, and `samples` changes them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ml.data.dataset import DataError, Dataset

FEATURES = ["WELCNT", "WDRSCNT", "WELR", "WELCUR1_S"]
ROBOTS = ("FPS2", "FPD2")
DEFAULT_ROWS = {"FPS2": 2400, "FPD2": 1600}
NUM_CLASSES = 4
# WCLSRES = 50 + 10 * quality; classes are the bins below 48, 48-54, 54-60 and from 60.
CLASS_EDGES = np.array([48.0, 54.0, 60.0])
NOISE_SD = 0.08  # measurement noise on the quality score: what keeps accuracy below 100 %
MAX_DRESS_COUNT = 400  # wear is counted against the longest dressing interval of either site


@dataclass(frozen=True)
class _Site:
    """One robot's uniform ranges: latent current c, latent resistance r, counters."""

    current: tuple[float, float]
    resistance: tuple[float, float]
    max_dress_count: int
    counter: tuple[int, int]


_SITES = {
    "FPS2": _Site(current=(0.0, 1.4), resistance=(-0.6, 0.6), max_dress_count=250,
                  counter=(0, 150_000)),
    "FPD2": _Site(current=(-0.3, 1.1), resistance=(-0.4, 0.8), max_dress_count=400,
                  counter=(100_000, 900_000)),
}


def generate_welding(robot: str, samples: int | None, seed: int, regression: bool = False) -> Dataset:
    """`samples` welds (default: the robot's DEFAULT_ROWS); the same (robot, seed), the same data.

    `regression`: the target is the quality score WCLSRES itself (float32), not its class.
    """
    if robot not in _SITES:
        raise DataError(f"--robot {robot!r}: use one of {', '.join(ROBOTS)}")
    count = DEFAULT_ROWS[robot] if samples is None else samples
    if count < 1:
        raise DataError(f"welding option samples={count}: must be at least 1")
    # The robot's index joins the seed so that the two sites never share a random stream.
    rng = np.random.default_rng([seed, ROBOTS.index(robot)])
    site = _SITES[robot]
    current = rng.uniform(*site.current, count)
    resistance = rng.uniform(*site.resistance, count)
    dress_count = rng.integers(0, site.max_dress_count + 1, count)
    counter = rng.integers(*site.counter, count)
    quality = (1.2 * current - resistance - 0.8 * dress_count / MAX_DRESS_COUNT
               + rng.normal(0.0, NOISE_SD, count))
    x = np.column_stack([counter, dress_count, 1e-4 + 1e-5 * resistance, 1e4 + 1e3 * current])
    score = 50.0 + 10.0 * quality
    if regression:
        return Dataset(x.astype(np.float32), score.astype(np.float32), list(FEATURES), 0,
                       f"welding:{robot}")
    y = np.digitize(score, CLASS_EDGES)
    return Dataset(x.astype(np.float32), y.astype(np.int64), list(FEATURES), NUM_CLASSES,
                   f"welding:{robot}")


def load_welding(robot: str | None, samples: int | None, seed: int,
                 regression: bool = False) -> Dataset:
    """One robot's welds, or both robots' (FPS2 first) when `robot` is None."""
    robots = [robot] if robot is not None else list(ROBOTS)
    parts = [generate_welding(r, samples, seed, regression) for r in robots]
    if len(parts) == 1:
        return parts[0]
    x = np.concatenate([p.x for p in parts])
    y = np.concatenate([p.y for p in parts])
    return Dataset(x, y, list(FEATURES), parts[0].num_classes, "welding")
