"""The demo's results: progress lines, the tables, the final evaluation and the accuracy chart."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from rich.table import Table

from client import MusketeerClient, Round
from schema.dataplane import ModelMeta


def round_line(entry: Round, total: int) -> str:
    """A live progress line for one round."""
    local = entry.metrics
    parts = [f"  round {entry.round}/{total}"]
    if "loss" in local:
        parts.append(f"loss {local['loss']:.4f}")
    if "accuracy" in local:
        parts.append(f"local accuracy {local['accuracy']:.4f}")
    if "accuracy" in entry.eval_metrics:
        parts.append(f"test accuracy {entry.eval_metrics['accuracy']:.4f}")
    parts.append(f"{entry.duration_s or 0:.1f} s")
    return ", ".join(parts)


def final_model(client: MusketeerClient, name: str) -> tuple[str, Any, ModelMeta]:
    """The task's final model as the data plane carries it: (digest, Keras network, meta)."""
    # Lazy: TensorFlow loads only once the results are due, not for `musketeer --help`.
    from ml.keras_model import compile_model, model_from_json
    from ml.payload import read_model_payload

    digest, content = client.download_model(name)
    meta, weights = read_model_payload(content)
    model = compile_model(model_from_json(meta.architecture), meta.learning_rate)
    model.set_weights(weights)
    return digest, model, meta


def final_evaluation(client: MusketeerClient, name: str, eval_args: list[str]) -> dict[str, Any]:
    """Download the final model as a user would (a .keras file) and score it on raw held-out data."""
    from ml.data import load_dataset
    from ml.export import load_keras_bytes, raw_inputs
    from ml.keras_model import confusion_matrix, evaluate

    digest, content = client.download_model(name, format="keras")
    model = load_keras_bytes(content)
    args = eval_options(eval_args)
    dataset = load_dataset(args["--eval-data"], shard=args.get("--eval-shard"),
                           seed=int(args.get("--eval-seed", 0)))
    # Raw features: the exported model standardises them itself when the task did.
    held_out = raw_inputs(dataset, model.input_shape[1:])
    metrics = evaluate(model, held_out)
    matrix = confusion_matrix(model, held_out)
    return {"model_sha256": digest, "accuracy": metrics["accuracy"], "loss": metrics["loss"],
            "samples": len(held_out), "confusion_matrix": matrix.tolist(), "keras_file": content}


def eval_options(eval_args: list[str]) -> dict[str, str]:
    """The aggregator's eval flags as a dict (`--eval-data` -> `welding`, ...)."""
    return dict(zip(eval_args[::2], eval_args[1::2]))


def results_table(rounds: list[Round]) -> Table:
    """Accuracy and time per round."""
    table = Table("round", "local loss", "local accuracy", "test accuracy", "seconds",
                  title="accuracy per round")
    for entry in rounds:
        table.add_row(str(entry.round), _fmt(entry.metrics.get("loss")),
                      _fmt(entry.metrics.get("accuracy")),
                      _fmt(entry.eval_metrics.get("accuracy")), f"{entry.duration_s or 0:.1f}")
    return table


def matrix_table(matrix: list[list[int]]) -> Table:
    """The confusion matrix, true classes down, predicted across."""
    table = Table("true \\ predicted", *[str(i) for i in range(len(matrix))],
                  title="confusion matrix (held-out data)")
    for index, row in enumerate(matrix):
        table.add_row(str(index), *[str(v) for v in row])
    return table


def write_chart(rounds: list[Round], path: Path, title: str) -> None:
    """A PNG line chart of accuracy per round."""
    import matplotlib

    matplotlib.use("Agg")  # no screen needed
    import matplotlib.pyplot as plt

    numbers = [r.round for r in rounds]
    figure, axes = plt.subplots(figsize=(6, 4), dpi=100)
    axes.plot(numbers, [r.metrics.get("accuracy", math.nan) for r in rounds], marker="o",
              label="participants' local test (weighted)")
    if all("accuracy" in r.eval_metrics for r in rounds):
        axes.plot(numbers, [r.eval_metrics["accuracy"] for r in rounds], marker="s",
                  label="aggregator's held-out test")
    axes.set(xlabel="round", ylabel="accuracy", title=title, xticks=numbers)
    axes.grid(alpha=0.3)
    axes.legend(loc="lower right")
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"
