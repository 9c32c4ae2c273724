"""The `musketeer` console script: `platform` and `demo` here, each package's own commands added."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from aggregator import cli as aggregator_cli
from api.settings import SettingsError
from client import ClientError
from client import cli as client_cli
from client.profile import chosen_data_dir, default_data_dir, default_demo_dir
from infra import platform
from infra.audit import audit_replay
from infra.errors import PlatformError
from participant import cli as participant_cli

app = typer.Typer(
    help="Musketeer: train one model together without moving the data.",
    no_args_is_help=True, rich_markup_mode=client_cli.HELP_MARKUP,
)
platform_app = typer.Typer(
    help="Run the local platform: embedded PostgreSQL, embedded broker and the API.",
    no_args_is_help=True, rich_markup_mode=client_cli.HELP_MARKUP,
)
app.add_typer(platform_app, name="platform")

# soft_wrap: long paths and URLs stay on one line, so they can be copied.
_out = Console(highlight=False, soft_wrap=True)
_err = Console(stderr=True, highlight=False, soft_wrap=True)

DataDir = Annotated[
    Path,
    typer.Option("--data-dir", help="Folder for the profile, logs and database files.",
                 default_factory=chosen_data_dir,
                 show_default="the folder of --profile or MUSKETEER_PROFILE, else ./.musketeer"),
]


@platform_app.command("up")
def up_command(
    data_dir: DataDir,
    api_port: Annotated[int, typer.Option(help="Port of the API on 127.0.0.1.")] = platform.DEFAULT_API_PORT,
    api_workers: Annotated[int, typer.Option(
        min=1, help="API worker processes: more serve more requests at once where there are cores "
                    "for them. Each holds its own MUSKETEER_DB_POOL_SIZE database connections.")] = 1,
    foreground: Annotated[
        bool, typer.Option(help="Stay attached; Ctrl-C stops the whole platform.")
    ] = False,
) -> None:
    """Start PostgreSQL, the broker and the API (DATABASE_URL / KAFKA_BOOTSTRAP_SERVERS use yours)."""
    running = platform.running_profile(data_dir)
    if running is not None:
        _out.print(f"the platform is already up: API at {running.api_url} (profile {data_dir}/profile.json)")
        return
    steps = platform.Steps(_out)
    try:
        profile, api = platform.up(data_dir, api_port, steps, foreground=foreground, api_workers=api_workers)
    except (PlatformError, SettingsError) as exc:
        _fail(str(exc))
    profile_file = platform.paths_for(data_dir).profile
    _out.print(f"platform up: API at [bold]{profile.api_url}[/bold], profile {profile_file}")
    if data_dir.resolve() != default_data_dir().resolve():
        # Commands look for ./.musketeer/profile.json: say how they find this one instead.
        _out.print(f"other commands find it with `musketeer --profile {data_dir} ...` "
                   f"or `export MUSKETEER_PROFILE={profile_file}`")
    if foreground:
        _out.print("running in the foreground; press Ctrl-C to stop")
        raise typer.Exit(platform.serve_foreground(data_dir, api, steps))


@platform_app.command("down")
def down_command(data_dir: DataDir) -> None:
    """Stop the API, broker and PostgreSQL that `platform up` started (safe to repeat)."""
    try:
        stopped = platform.down(data_dir, platform.Steps(_out))
    except PlatformError as exc:
        _fail(str(exc))
    _out.print("platform down" if stopped else "nothing was running")


@platform_app.command("status")
def status_command(data_dir: DataDir) -> None:
    """Check each service for real (healthz, broker ping, SELECT 1); exit 1 if one is down."""
    rows = platform.status(data_dir)
    profile = platform.paths_for(data_dir).profile
    if not profile.exists():
        _out.print(f"no platform here: {profile} does not exist (run `musketeer platform up`)")
    table = Table("service", "pid", "state")
    table.add_column("address", overflow="fold")
    for row in rows:
        state = "[green]up[/green]" if row.up else "[red]down[/red]"
        table.add_row(row.name, str(row.pid or "-"), state, row.address)
    _out.print(table)
    if not all(row.up for row in rows):
        raise typer.Exit(1)


@app.command("demo")
def demo_command(
    platform_dir: Annotated[Path, typer.Option(
        "--platform-dir", help="Folder for the demo platform's profile, logs and database files "
                               "(its own, so the demo's users never meet yours in ./.musketeer).",
        default_factory=default_demo_dir, show_default="./.musketeer-demo")],
    api_port: Annotated[int, typer.Option(help="Port of the API on 127.0.0.1.")] = platform.DEFAULT_API_PORT,
    dataset: Annotated[str, typer.Option(help="digits (offline, about a minute), mnist or welding.")] = "digits",
    mnist_dir: Annotated[Path | None, typer.Option(
        "--mnist-dir", help="Folder with the MNIST IDX gz files, e.g. ../shared/data/mnist "
                            "(for --dataset mnist; --platform-dir is where the platform lives).")] = None,
    report_dir: Annotated[Path, typer.Option(
        help="Where demo-report.json and demo-accuracy.png are written.")] = Path("."),
) -> None:
    """The seed's §3.3.1 in one command: users, a task, two participants, federated training."""
    from infra.demo import run_demo

    try:
        code = run_demo(platform_dir, api_port, dataset, mnist_dir, report_dir, _out)
    except (PlatformError, SettingsError) as exc:
        _fail(str(exc))
    except ClientError as exc:
        _fail(f"{exc.code}: {exc.message}")
    raise typer.Exit(code)


def _fail(message: str) -> NoReturn:
    # Escaped: log tails in the message contain [brackets] rich would eat.
    _err.print(f"[red]error:[/red] {escape(message)}")
    raise typer.Exit(1)


# Each package owns its commands; the console script assembles them here, in plain sight.
groups = client_cli.register(app)
groups["audit"].command("replay")(audit_replay)
aggregator_cli.register(app)
participant_cli.register(app)


def main() -> None:
    """Entry point of the `musketeer` console script."""
    app()
