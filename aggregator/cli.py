"""`musketeer aggregate TASK`: run a task's aggregator (the task's creator only)."""

from __future__ import annotations

import ctypes
from typing import TYPE_CHECKING, Annotated

import typer

from client import ClientError, MusketeerClient, RetryPolicy
from client.cli import output as show
from client.daemonlog import DaemonLog
from client.profile import Profile

if TYPE_CHECKING:  # the daemon loads TensorFlow: only `aggregate` itself imports it
    from aggregator.run import AggregatorOptions

# The exit status when the quorum did not join in time (1 is any other failure).
QUORUM_NOT_REACHED = 3


def register(app: typer.Typer) -> None:
    """Add the `aggregate` command to the console script."""
    app.command("aggregate")(aggregate)


def aggregate(
    task: Annotated[str, typer.Argument(help="The task to aggregate (you must be its creator).")],
    eval_data: Annotated[str | None, typer.Option(
        help="Held-out data to evaluate each round's model on: digits, mnist[:PATH], "
             "welding, npz:FILE, csv:FILE.")] = None,
    eval_data_dir: Annotated[str | None, typer.Option(help="Folder the eval data lives in.")] = None,
    eval_label_column: Annotated[str | None, typer.Option(
        help="Label column of --eval-data csv:FILE.")] = None,
    eval_shard: Annotated[str | None, typer.Option(
        help="Use only part i/n of the eval data (e.g. 4/4 when participants use 1/4..3/4).")] = None,
    eval_seed: Annotated[int, typer.Option(
        help="Seed of generated eval data (welding): use one the participants do not.")] = 0,
    model: Annotated[str | None, typer.Option(
        help="Your own Keras model file (.keras), for a task whose definition says \"model\": "
             "\"user\"; checked before the task starts.")] = None,
    round_timeout: Annotated[float, typer.Option(
        help="Seconds to wait for every update of a round before failing the task.")] = 900.0,
    quorum_timeout: Annotated[float | None, typer.Option(
        help="Seconds to wait for the quorum (default: forever); then stop waiting and exit with "
             "status 3, leaving the task open for joins.")] = None,
    fail_on_quorum_timeout: Annotated[bool, typer.Option(
        "--fail-on-quorum-timeout",
        help="At the quorum timeout, fail the task for good (TaskFailed) instead.")] = False,
    api_url: Annotated[str | None, typer.Option(help="The API (default: from the profile).")] = None,
    log_format: Annotated[str, typer.Option(
        help="text: readable lines; json: one JSON object per line (one per round, with its "
             "numbers), for log shippers.")] = "text",
) -> None:
    """Wait for the quorum, then run every round of TASK: broadcast, aggregate, evaluate, record.

    The definition names the algorithm (fedavg, fedadam, fedprox, kmeans, logistic_regression, ...).
    With "contribution" in the definition, --eval-data is required: every update is valued on it.
    """
    fewer_malloc_arenas()  # before TensorFlow and the daemon start their threads
    from aggregator.daemon import AggregatorOptions
    from ml.data.dataset import plain_data_warnings

    plain_data_warnings()
    options = AggregatorOptions(eval_data=eval_data, eval_data_dir=eval_data_dir,
                                eval_shard=eval_shard, eval_label_column=eval_label_column,
                                model_file=model, seed=eval_seed,
                                round_timeout_s=round_timeout, quorum_timeout_s=quorum_timeout,
                                fail_on_quorum_timeout=fail_on_quorum_timeout)
    progress = show.daemon_log("aggregator", log_format)
    _run(task, options, progress, api_url)


def fewer_malloc_arenas(arenas: int = 1) -> bool:
    """Cap glibc's malloc arenas for this process; whether it took (False on other C libraries).

    glibc gives threads that allocate at once arenas of their own (up to 8 per core), and what
    is freed in one arena is not reused by another. The round model uploaded from a background
    thread (aggregator.run.Backlog) left its buffers in such an arena: 10M parameters, 8
    participants, the rounds added 115-116 MiB to the aggregator; 104-107 MiB with 2 arenas and
    95-100 MiB with 1, at the same round times (3x the 38 MiB model is 114 MiB). With 32
    participants: 114 MiB with 2 arenas, 103 MiB with 1.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    m_arena_max = -8  # M_ARENA_MAX, from glibc's malloc.h
    return bool(mallopt(m_arena_max, arenas))  # 1 when glibc took it


def _run(task: str, options: AggregatorOptions, progress: DaemonLog, api_url: str | None) -> None:
    """Run the aggregator; every failure becomes a message and an exit status, never a traceback."""
    from aggregator.daemon import AggregationFailed, Aggregator, QuorumNotReached
    from ml.keras_model import ModelError

    try:
        # A daemon outlives API restarts: wait up to five minutes, saying what for.
        client = MusketeerClient.from_profile(api_url=api_url, retry=RetryPolicy(total_wait=300.0),
                                              on_wait=progress)
        Aggregator(client, Profile.load(), task, options, progress=progress).run()
    except ClientError as exc:
        show.print_client_error(exc)
        raise typer.Exit(1) from None
    except QuorumNotReached as exc:
        kept = "the task FAILED" if options.fail_on_quorum_timeout else (
            f"the task stays open for joins; run `musketeer aggregate {task}` again to wait anew")
        show.print_failure(f"{exc}; {kept}")
        raise typer.Exit(QUORUM_NOT_REACHED) from None
    except (AggregationFailed, ModelError, ValueError, OSError) as exc:
        show.print_failure(str(exc))
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        show.print_failure("interrupted")
        raise typer.Exit(130) from None
