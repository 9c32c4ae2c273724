"""Benchmark the federated optimisers on non-IID data: MNIST split by a Dirichlet label skew.

The MNIST test set (10,000 images, `--data-dir`) is split, seeded: `--held-out` images are kept
for evaluation, the rest is divided among `--participants` sites with a Dirichlet(`--alpha`)
label skew (for every digit, the sites' shares are drawn from Dirichlet(alpha, ..., alpha):
alpha 0.3 leaves most sites with a few dominant digits). Every algorithm trains the same
initial model for `--rounds` rounds, and the same model is trained centrally on the union of
the sites' data for rounds × epochs epochs, as the reference a federation aims for.

The federation runs in one process (tests/federation.py): the participants' own training
code, the codec and the aggregator's fold, server optimisers and FedProx, without the broker
(whose cost bench/round_bench.py measures). Prints markdown tables: the sites' label counts,
then accuracy on the held-out images per algorithm.

    .venv/bin/python bench/algorithms.py [--rounds 10] [--participants 5] [--alpha 0.3]
        [--model mnist-cnn|mlp] [--algorithms fedavg,fedavgm,fedadam,fedyogi,fedprox]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ml.data import Dataset, load_dataset
from ml.keras_model import compile_model, evaluate, keras
from ml.prepare import prepare
from ml.registry import build_model
from tests.federation import Site, keras_federation

DEFAULT_ALGORITHMS = "fedavg,fedavgm,fedadam,fedyogi,fedadagrad,fedprox"
DATA_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"


def dirichlet_split(labels: np.ndarray, sites: int, alpha: float, rng: np.random.Generator
                    ) -> list[np.ndarray]:
    """Indices for each site: every class shared out by proportions drawn from Dirichlet(alpha)."""
    parts: list[list[int]] = [[] for _ in range(sites)]
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        shares = rng.dirichlet(np.full(sites, alpha))
        cuts = (np.cumsum(shares)[:-1] * len(members)).astype(int)
        for site, chunk in enumerate(np.split(members, cuts)):
            parts[site].extend(int(i) for i in chunk)
    return [np.sort(np.array(p, dtype=np.int64)) for p in parts]


def _mlp_file(folder: Path) -> str:
    """A small MLP on the 28x28 images, saved as a .keras file (passed like `--model`)."""
    model = keras.Sequential([keras.Input((28, 28, 1)), keras.layers.Flatten(),
                              keras.layers.Dense(128, activation="relu"),
                              keras.layers.Dense(10, activation="softmax")], name="mnist_mlp")
    path = folder / "mnist-mlp.keras"
    model.save(path)
    return str(path)


def _sites(args: argparse.Namespace) -> tuple[list[Site], Dataset, Dataset]:
    data = load_dataset(f"mnist:{args.data_dir}")
    rng = np.random.default_rng(args.seed)
    order = rng.permutation(len(data))
    held_out = data.subset(np.sort(order[:args.held_out]), "MNIST held-out")
    pool = data.subset(np.sort(order[args.held_out:]), "MNIST sites")
    empty = pool.subset(np.arange(0), "no local test")
    sites = [Site(f"site{i + 1}", pool.subset(index, f"site{i + 1}"), empty)
             for i, index in enumerate(dirichlet_split(pool.y, args.participants, args.alpha, rng))]
    return sites, pool, held_out


def _label_table(sites: list[Site]) -> str:
    lines = ["| site | samples | " + " | ".join(str(d) for d in range(10)) + " |",
             "|---|---:|" + "---:|" * 10]
    for site in sites:
        counts = np.bincount(site.train.y, minlength=10)
        lines.append(f"| {site.name} | {len(site.train)} | " + " | ".join(str(c) for c in counts) + " |")
    return "\n".join(lines)


def _central(args: argparse.Namespace, pool: Dataset, held_out: Dataset, model_file: str | None
             ) -> dict[str, float]:
    """The same model trained on the union of the sites' data, as one organisation would."""
    keras.utils.set_random_seed(args.seed)
    if model_file:
        model = compile_model(keras.models.load_model(model_file, compile=False), args.learning_rate)
    else:
        model = build_model("mnist-cnn", (28, 28, 1), 10, args.learning_rate)
    train = prepare(pool, (28, 28, 1))
    model.fit(train.x, train.y, epochs=args.rounds * args.epochs, batch_size=args.batch_size,
              verbose=0, shuffle=True)
    return evaluate(model, prepare(held_out, (28, 28, 1)))


def _definition(args: argparse.Namespace, algorithm: str) -> dict[str, Any]:
    definition: dict[str, Any] = {
        "quorum": args.participants, "rounds": args.rounds, "epochs": args.epochs,
        "batch_size": args.batch_size, "learning_rate": args.learning_rate,
        "algorithm": algorithm, "seed": args.seed}
    if args.model == "mnist-cnn":
        definition["model"] = "mnist-cnn"
    if algorithm == "fedprox" and args.mu is not None:
        definition["mu"] = args.mu
    return definition


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=DATA_DIR, help="the MNIST IDX files")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--participants", type=int, default=5)
    parser.add_argument("--alpha", type=float, default=0.3, help="Dirichlet concentration (lower: more skew)")
    parser.add_argument("--held-out", type=int, default=2000, help="images kept for evaluation")
    parser.add_argument("--epochs", type=int, default=1, help="local epochs per round")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--learning-rate", type=float, default=0.001, help="local (Adam) learning rate")
    parser.add_argument("--model", choices=["mnist-cnn", "mlp"], default="mnist-cnn")
    parser.add_argument("--mu", type=float, default=None, help="FedProx mu (default: the platform's)")
    parser.add_argument("--algorithms", default=DEFAULT_ALGORITHMS, help="comma-separated")
    parser.add_argument("--seed", type=int, default=824988)
    args = parser.parse_args()

    sites, pool, held_out = _sites(args)
    print(f"MNIST test set: {len(pool)} images over {args.participants} sites, Dirichlet({args.alpha}) "
          f"label skew; {len(held_out)} held out. Model {args.model}, {args.rounds} rounds x "
          f"{args.epochs} local epoch(s), batch {args.batch_size}, Adam {args.learning_rate}.\n")
    print(_label_table(sites) + "\n", flush=True)
    with tempfile.TemporaryDirectory() as folder:
        model_file = _mlp_file(Path(folder)) if args.model == "mlp" else None
        rows = []
        for algorithm in args.algorithms.split(","):
            started = time.monotonic()
            outcome = keras_federation(_definition(args, algorithm), sites, held_out, model_file=model_file)
            curve = " ".join(f"{h['accuracy']:.3f}" for h in outcome.history)
            rows.append(f"| {algorithm} | {outcome.history[-1]['accuracy']:.4f} | "
                        f"{outcome.history[-1]['loss']:.4f} | {time.monotonic() - started:.0f} | {curve} |")
            print(f"  {algorithm}: {outcome.history[-1]['accuracy']:.4f}", file=sys.stderr, flush=True)
        started = time.monotonic()
        central = _central(args, pool, held_out, model_file)
        rows.append(f"| central (union) | {central['accuracy']:.4f} | {central['loss']:.4f} | "
                    f"{time.monotonic() - started:.0f} | {args.rounds * args.epochs} epochs |")
    print(f"| algorithm | accuracy after {args.rounds} rounds | loss | seconds | accuracy per round |")
    print("|---|---:|---:|---:|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
