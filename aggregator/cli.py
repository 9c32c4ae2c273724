"""`musketeer aggregate TASK`: run a task's aggregator (the task's creator only)."""

from __future__ import annotations

from typing import Annotated

import typer

from client import ClientError, MusketeerClient, RetryPolicy
from client.cli import output as show
from client.profile import Profile


def register(app: typer.Typer) -> None:
    """Add the `aggregate` command to the console script."""
    app.command("aggregate")(aggregate)


def aggregate(
    task: Annotated[str, typer.Argument(help="The task to aggregate (you must be its creator).")],
    eval_data: Annotated[str | None, typer.Option(
        help="Held-out data to evaluate each round's model on: digits, mnist[:PATH], "
             "welding, npz:FILE, csv:FILE.")] = None,
    eval_data_dir: Annotated[str | None, typer.Option(help="Folder the eval data lives in.")] = None,
    eval_shard: Annotated[str | None, typer.Option(
        help="Use only part i/n of the eval data (e.g. 4/4 when participants use 1/4..3/4).")] = None,
    eval_seed: Annotated[int, typer.Option(
        help="Seed of generated eval data (welding): use one the participants do not.")] = 0,
    model: Annotated[str | None, typer.Option(
        help="A Keras model file (.keras) to train instead of the definition's registry model.")] = None,
    round_timeout: Annotated[float, typer.Option(
        help="Seconds to wait for every update of a round before failing the task.")] = 900.0,
    quorum_timeout: Annotated[float | None, typer.Option(
        help="Seconds to wait for the quorum (default: forever).")] = None,
    api_url: Annotated[str | None, typer.Option(help="The API (default: from the profile).")] = None,
) -> None:
    """Wait for the quorum, then run every round of TASK: broadcast, aggregate, evaluate, record.

    The definition names the algorithm (fedavg, fedadam, fedprox, kmeans, logistic_regression, ...).

    With "contribution" in the definition, --eval-data is required: every update is valued on it.
    """
    from aggregator.daemon import AggregationFailed, Aggregator, AggregatorOptions

    options = AggregatorOptions(eval_data=eval_data, eval_data_dir=eval_data_dir,
                                eval_shard=eval_shard, model_file=model, seed=eval_seed,
                                round_timeout_s=round_timeout, quorum_timeout_s=quorum_timeout)
    try:
        # A daemon outlives API restarts: wait up to five minutes, saying what for.
        client = MusketeerClient.from_profile(api_url=api_url, retry=RetryPolicy(total_wait=300.0),
                                              on_wait=show.out().print)
        Aggregator(client, Profile.load(), task, options, progress=show.out().print).run()
    except ClientError as exc:
        show.print_client_error(exc)
        raise typer.Exit(1) from None
    except (AggregationFailed, ValueError, OSError) as exc:
        show.print_failure(str(exc))
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        show.print_failure("interrupted")
        raise typer.Exit(130) from None
