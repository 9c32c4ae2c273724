"""Seeded synthetic welding data following the seed's smart-manufacturing schema (§3.4).

Two spot-welding robots, FPS2 and FPD2, record per weld:

- WELCNT     cumulative weld counter (about 1e5, uninformative)
- WDRSCNT    welds since the electrode was last dressed (about 1e2; wear lowers quality)
- WELR       weld resistance in ohms (about 1e-4; high resistance lowers quality)
- WELCUR1_S  welding current in amperes (about 1e4; more current raises quality)

The target WCLSRES is a quality score binned into 4 classes. The scales differ by nine orders
of magnitude on purpose: without (federated) standardisation an MLP barely sees WELR.

One shared rule links features to quality at both sites (the physics is the same), while the
robots' feature distributions differ. The ranges are bounded so that, by construction,
class 0 never occurs, class 1 occurs only at FPD2, class 2 dominates and class 3 comes second.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ml.data.dataset import DataError, Dataset

FEATURES = ["WELCNT", "WDRSCNT", "WELR", "WELCUR1_S"]
ROBOTS = ("FPS2", "FPD2")
NUM_CLASSES = 4
# WCLSRES = 50 + 10 * quality; classes are the bins below 20, 20-40, 40-60 and from 60.
CLASS_EDGES = np.array([20.0, 40.0, 60.0])
NOISE_SD, NOISE_BOUND = 0.2, 0.5  # bounded noise keeps the per-site class guarantees exact


@dataclass(frozen=True)
class _Site:
    """One robot's uniform ranges: latent current c, latent resistance r, counters."""

    current: tuple[float, float]
    resistance: tuple[float, float]
    max_dress_count: int
    counter: tuple[int, int]


# FPS2's worst case is quality -0.5 (never class 1, even with noise); FPD2's is -2.4
# (never class 0). FPD2 runs with less current, more resistance and longer dress intervals.
_SITES = {
    "FPS2": _Site(current=(0.3, 1.3), resistance=(-0.7, 0.3), max_dress_count=200,
                  counter=(0, 150_000)),
    "FPD2": _Site(current=(-0.8, 1.2), resistance=(-0.6, 0.6), max_dress_count=400,
                  counter=(100_000, 900_000)),
}


def generate_welding(robot: str, samples: int, seed: int, regression: bool = False) -> Dataset:
    """`samples` welds from one robot; the same (robot, seed) always gives the same data.

    `regression`: the target is the quality score WCLSRES itself (float32), not its class.
    """
    if robot not in _SITES:
        raise DataError(f"welding option robot={robot!r}: use one of {', '.join(ROBOTS)}")
    if samples < 1:
        raise DataError(f"welding option samples={samples}: must be at least 1")
    # The robot's index joins the seed so that the two sites never share a random stream.
    rng = np.random.default_rng([seed, ROBOTS.index(robot)])
    site = _SITES[robot]
    current = rng.uniform(*site.current, samples)
    resistance = rng.uniform(*site.resistance, samples)
    dress_count = rng.integers(0, site.max_dress_count + 1, samples)
    counter = rng.integers(*site.counter, samples)
    noise = np.clip(rng.normal(0.0, NOISE_SD, samples), -NOISE_BOUND, NOISE_BOUND)
    quality = current - resistance - 0.5 * dress_count / 200 + noise
    x = np.column_stack([counter, dress_count, 1e-4 + 1e-5 * resistance, 1e4 + 1e3 * current])
    score = 50.0 + 10.0 * quality
    if regression:
        return Dataset(x.astype(np.float32), score.astype(np.float32), list(FEATURES), 0,
                       f"welding:{robot}")
    y = np.digitize(score, CLASS_EDGES)
    return Dataset(x.astype(np.float32), y.astype(np.int64), list(FEATURES), NUM_CLASSES,
                   f"welding:{robot}")


def load_welding(robot: str | None, samples: int, seed: int, regression: bool = False) -> Dataset:
    """One robot's welds, or both robots' (FPS2 first) when `robot` is None."""
    robots = [robot] if robot is not None else list(ROBOTS)
    parts = [generate_welding(r, samples, seed, regression) for r in robots]
    if len(parts) == 1:
        return parts[0]
    x = np.concatenate([p.x for p in parts])
    y = np.concatenate([p.y for p in parts])
    return Dataset(x, y, list(FEATURES), parts[0].num_classes, "welding")
