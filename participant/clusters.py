"""`musketeer clusters TASK`: a K-means task's final centroids applied to your own data.

Each sample of the local data is assigned to its nearest final centroid; the command prints
the clusters' sizes and spreads and draws the seed's chart: the samples projected on their
first two principal components, coloured by cluster, with the centroids marked. The data
never leaves this machine; only the final model is downloaded.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer

from client import ClientError, MusketeerClient
from client.cli import output as show
from ml.data import load_dataset
from ml.data.dataset import DataError
from ml.kmeans import assign, read_centroids
from ml.prepare import flat_features
from ml.standardise import apply
from schema.algorithms import KMEANS
from streams.codec import CodecError

Array = np.ndarray[Any, Any]


@dataclass
class Assignment:
    """Local samples and centroids on the first two principal components, with the clusters."""

    points: Array      # (n, 2)
    centres: Array     # (K, 2)
    labels: Array      # (n,)
    distances: Array   # (n,) squared distance to the nearest centroid


def assign_local(x: Array, centroids: Array) -> Assignment:
    """Assign `x` to the centroids and project both on x's first two principal components."""
    labels, distances = assign(x, centroids)
    centre = x.mean(axis=0)
    # The right singular vectors of the centred data are its principal directions.
    _, _, directions = np.linalg.svd(x - centre, full_matrices=False)
    basis = directions[:2].T
    if basis.shape[1] < 2:  # one feature: plot it against zero
        basis = np.hstack([basis, np.zeros((basis.shape[0], 2 - basis.shape[1]))])
    return Assignment((x - centre) @ basis, (centroids - centre) @ basis, labels, distances)


def draw(found: Assignment, title: str, path: Path) -> None:
    """The scatter plot, coloured by cluster, centroids as black crosses, saved as PNG."""
    import matplotlib

    matplotlib.use("Agg")  # no screen needed
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6, 5), dpi=100)
    # Fixed colour per cluster number (not stretched over the clusters this data happens to hit).
    palette = "tab10" if len(found.centres) <= 10 else "tab20"
    top = 9 if palette == "tab10" else 19
    axes.scatter(found.points[:, 0], found.points[:, 1], c=found.labels % (top + 1), cmap=palette,
                 vmin=0, vmax=top, s=8, alpha=0.7)
    axes.scatter(found.centres[:, 0], found.centres[:, 1], c="black", marker="x", s=80, label="centroids")
    axes.set_xlabel("first principal component")
    axes.set_ylabel("second principal component")
    axes.set_title(title)
    axes.legend(loc="best")
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def register(app: typer.Typer) -> None:
    """Add the `clusters` command to the console script."""
    app.command("clusters")(clusters)


def clusters(
    task: Annotated[str, typer.Argument(help="A completed K-means task you created or joined.")],
    dataset: Annotated[str, typer.Option(
        help="Local data to cluster: digits, mnist[:PATH], welding, npz:FILE, csv:FILE.")],
    data_dir: Annotated[str | None, typer.Option(help="Folder the local data lives in.")] = None,
    shard: Annotated[str | None, typer.Option(help="Use only part i/n of the data, e.g. 1/3.")] = None,
    label_column: Annotated[str | None, typer.Option(help="Label column of a CSV file.")] = None,
    robot: Annotated[str | None, typer.Option(help="Welding data: the site, FPS2 or FPD2.")] = None,
    output: Annotated[Path, typer.Option(help="Where to write the scatter plot (PNG).")] = Path("clusters.png"),
    api_url: Annotated[str | None, typer.Option(help="The API (default: from the profile).")] = None,
) -> None:
    """Assign your data to a K-means task's final centroids; print the clusters, draw the scatter."""
    try:
        client = MusketeerClient.from_profile(api_url=api_url)
        info = client.get_task(task)
        if info.definition.get("algorithm") != KMEANS:
            raise typer.BadParameter(f"task '{task}' is not a K-means task", param_hint="TASK")
        if not info.model_sha256:
            raise typer.BadParameter(f"task '{task}' has no final model yet ({info.status})",
                                     param_hint="TASK")
        meta, centroids = read_centroids(client.download_model(task)[1])
        options: dict[str, Any] = {"label_column": label_column, "robot": robot}
        data = load_dataset(dataset, data_dir=data_dir, shard=shard, **options)
        x = flat_features(data).astype(np.float64)
        if meta.feature_mean is not None and meta.feature_std is not None:
            x = apply(x, np.asarray(meta.feature_mean), np.asarray(meta.feature_std)).astype(np.float64)
        if x.shape[1] != meta.features:
            raise DataError(f"{data.name} has {x.shape[1]} features per sample; the task clustered "
                            f"{meta.features}")
        found = assign_local(x, centroids)
    except ClientError as exc:
        show.print_client_error(exc)
        raise typer.Exit(1) from None
    except (DataError, CodecError, ValueError, OSError) as exc:
        show.print_failure(str(exc))
        raise typer.Exit(1) from None
    draw(found, f"{task}: {len(x)} local samples, {meta.clusters} clusters", output)
    _report(found, output)


def _report(found: Assignment, output: Path) -> None:
    from rich.table import Table

    table = Table(title="clusters of the local data", title_justify="left", show_edge=False,
                  header_style="bold")
    for column in ("cluster", "samples", "share", "mean squared distance"):
        table.add_column(column, justify="right")
    total = len(found.labels)
    for k in range(len(found.centres)):
        members = found.labels == k
        spread = f"{found.distances[members].mean():.4f}" if members.any() else "-"
        table.add_row(str(k), str(int(members.sum())), f"{members.sum() / total:.1%}", spread)
    show.out().print(table)
    show.out().print(f"{total} local samples; inertia {found.distances.sum():.4f} "
                     f"({found.distances.mean():.4f} per sample); scatter plot written to {output}")
