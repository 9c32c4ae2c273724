"""`musketeer participate [TASK]`: train joined tasks on local data that never leaves."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from client import ClientError, MusketeerClient, RetryPolicy
from client.cli import output as show
from client.cli.stopping import orderly_stop
from client.profile import Profile


def register(app: typer.Typer) -> None:
    """Add the `participate` and `clusters` commands to the console script."""
    app.command("participate")(participate)
    from participant import clusters  # its imports (NumPy, the data connectors) load on use

    clusters.register(app)


def participate(
    task: Annotated[str | None, typer.Argument(
        help="Run this one task and exit; without it, serve every joined task as it starts.")] = None,
    dataset: Annotated[str, typer.Option(
        help="Local data: digits, mnist[:PATH], welding, npz:FILE, csv:FILE.")] = "digits",
    data_dir: Annotated[str | None, typer.Option(help="Folder the local data lives in.")] = None,
    shard: Annotated[str | None, typer.Option(
        help="Use only part i/n of the data (1-based), e.g. 1/3; for demos on one dataset.")] = None,
    label_column: Annotated[str | None, typer.Option(
        help="The label column of a csv:FILE dataset (required for CSV).")] = None,
    robot: Annotated[str | None, typer.Option(help="Welding data: the site, FPS2 or FPD2.")] = None,
    seed: Annotated[int, typer.Option(help="Seed for sampling the local train/test split.")] = 0,
    output: Annotated[Path, typer.Option(help="Where final models are saved.")] = Path("models"),
    api_url: Annotated[str | None, typer.Option(help="The API (default: from the profile).")] = None,
    log_format: Annotated[str, typer.Option(
        help="text: readable lines; json: one JSON object per line (one per round, with its "
             "numbers), for log shippers.")] = "text",
) -> None:
    """Train every round of the tasks you joined and save each final model under --output.

    The local data is loaded and checked first (exit 1 naming the problem); then the daemon
    says which tasks it waits for, and trains each as it starts.
    """
    from ml.data.dataset import DataError, plain_data_warnings
    from participant.data import DataOptions

    plain_data_warnings()
    options = {"label_column": label_column, "robot": robot}
    data = DataOptions(dataset=dataset, data_dir=data_dir, shard=shard, seed=seed,
                       options={k: v for k, v in options.items() if v is not None})
    progress = show.daemon_log("participant", log_format)
    try:
        # First, before TensorFlow loads: bad data stops the daemon at once, before it
        # contacts anyone.
        data.load()
    except DataError as exc:
        show.print_failure(str(exc))
        raise typer.Exit(1) from None
    from participant.daemon import ParticipantDaemon, TaskStopped
    from participant.training import TrainingError

    try:
        # A daemon outlives API restarts: wait up to five minutes, saying what for.
        client = MusketeerClient.from_profile(api_url=api_url, retry=RetryPolicy(total_wait=300.0),
                                              on_wait=progress)
        daemon = ParticipantDaemon(client, Profile.load(), data, output, only=task, progress=progress)
        # From here Ctrl-C (or SIGTERM) stops the workers in order; before, it just quits.
        with orderly_stop(daemon.stop, progress) as stop:
            code = daemon.run()
    except ClientError as exc:
        show.print_client_error(exc)
        raise typer.Exit(1) from None
    except (TaskStopped, TrainingError, DataError, ValueError, OSError) as exc:
        show.print_failure(str(exc))
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
    raise typer.Exit(stop.exit_code or code)
