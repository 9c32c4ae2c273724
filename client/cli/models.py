"""Model commands: list the models you may take away, download one as a `.keras` file."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Annotated

import typer

from client.cli import output as show
from client.cli.session import ApiUrl, AsJson, CliFailure, TaskName, reports_errors, session

FORMATS = ("keras", "bundle")


@reports_errors
def models_list(ctx: typer.Context, api_url: ApiUrl = None, as_json: AsJson = False) -> None:
    """The final models of the tasks you created or joined, with their digests and lineage."""
    with session(ctx).client(api_url) as client:
        models = client.models()
    if as_json:
        return show.print_json({"items": [m.model_dump(mode="json") for m in models]})
    if not models:
        return show.out().print("No trained models yet.")
    for model in models:
        rounds = len(model.rounds)
        show.out().print(f"[bold]{model.task}[/bold] by {model.creator}: {rounds} rounds with "
                         f"{', '.join(model.participants)}; .keras sha256 {model.keras_sha256 or '-'}")


@reports_errors
def models_download(
    ctx: typer.Context,
    name: TaskName,
    output: Annotated[Path, typer.Option(
        "--output", "-o", help="File to write (default: TASK.keras in the current folder).",
        show_default=False)] = Path(),
    format: Annotated[str, typer.Option(
        help="keras: a standard .keras file, preprocessing inside (load it with "
             "keras.models.load_model); bundle: the platform's own data-plane format.")] = "keras",
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing file.")] = False,
    api_url: ApiUrl = None,
) -> None:
    """Download a task's final model; its sha256 is checked against the server's before saving."""
    if format not in FORMATS:
        raise typer.BadParameter(f"{format!r} is not one of {', '.join(FORMATS)}", param_hint="--format")
    target = output if output != Path() else Path(f"{name}.{format}")
    if target.is_dir():
        target = target / f"{name}.{format}"
    if target.exists() and not force:
        raise CliFailure(f"{target} exists; pass --force to overwrite it")
    with session(ctx).client(api_url) as client:
        # download_model refuses bytes whose sha256 differs from the X-Model-SHA256 header.
        digest, content = client.download_model(name, format=format)
    _write_atomically(target, content)
    show.out().print(f"Saved {target} ({len(content):,} bytes, sha256 {digest}).")


def _write_atomically(target: Path, content: bytes) -> None:
    # A half-written model file must never be left where the user expects a whole one.
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(content)
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
