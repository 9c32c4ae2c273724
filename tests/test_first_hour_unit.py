"""A newcomer's first hour (issue 13), the logic behind the fixes, without a platform: the
definition the CLI sends, saved logins, the model checks, data checks, and output polish."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import warnings
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console
from typer.testing import CliRunner

from client.cli.tasks import build_definition
from client.credentials import (
    Credentials,
    delete_credentials,
    load_credentials,
    read_logins,
    save_credentials,
    use_login,
)
from client.models import Task
from ml.data import DataError, DataWarning
from schema.definition import REGISTRY_MODELS

ROOT = Path(__file__).resolve().parent.parent
API = "http://api.test"


# --- item 1: flags over the seed's spelling ------------------------------------------------


@pytest.mark.parametrize(("file", "flags", "expected"), [
    ({"round": 3, "epoch": 2}, {"rounds": 7, "epochs": 4}, {"rounds": 7, "epochs": 4}),
    ({"rounds": 3, "epochs": 2}, {"rounds": 7}, {"rounds": 7, "epochs": 2}),
    ({"round": 3}, {"quorum": 2}, {"round": 3, "quorum": 2}),
])
def test_a_flag_replaces_the_field_in_either_spelling(tmp_path: Path, file: dict[str, Any],
                                                       flags: dict[str, Any], expected: dict[str, Any]) -> None:
    """`--rounds` drops the file's `round` as well as its `rounds`; untouched fields stay as written."""
    path = tmp_path / "seed.json"
    path.write_text(json.dumps(file))

    assert build_definition(path, flags, []) == expected


def test_set_replaces_the_other_spelling_too() -> None:
    """`--set round=9` after `--rounds 7` leaves only the last word."""
    assert build_definition(None, {"rounds": 7}, ["round=9"]) == {"round": 9}


# --- item 2: models --------------------------------------------------------------------------


def test_the_schema_knows_exactly_the_registrys_models() -> None:
    """schema/ cannot import ml/, so it keeps its own list of model names: the two agree."""
    from ml.registry import known_models

    assert set(known_models()) == REGISTRY_MODELS


@pytest.mark.parametrize(("model", "model_file", "words"), [
    ("user", None, "give the Keras file with --model FILE.keras"),
    ("digits-mlp", "mine.keras", "trains the registry model 'digits-mlp', so --model FILE is not used"),
    ("user", "missing.keras", "missing.keras: not a readable .keras file"),
])
def test_the_aggregator_checks_its_model_before_the_task_starts(model: str, model_file: str | None,
                                                                words: str, tmp_path: Path) -> None:
    """A user-model task without --model, a file for a registry task, an unreadable file: refused."""
    from aggregator.model import check_before_start
    from aggregator.run import AggregationFailed, AggregatorOptions

    task = Task(task_id="t-1", name="t", creator="alice", status="CREATED",
                definition={"quorum": 1, "rounds": 1, "model": model})
    options = AggregatorOptions(model_file=str(tmp_path / model_file) if model_file else None)

    with pytest.raises((AggregationFailed, ValueError), match=re.escape(words)):
        check_before_start(task, options)


def test_a_registry_task_without_a_file_passes_the_check() -> None:
    """The usual case: the definition names a registry model and no --model is given."""
    from aggregator.model import check_before_start
    from aggregator.run import AggregatorOptions

    task = Task(task_id="t-1", name="t", creator="alice", status="CREATED",
                definition={"quorum": 1, "rounds": 1, "model": "digits-mlp"})

    assert check_before_start(task, AggregatorOptions(eval_data="digits")) is None


# --- item 3: the participant's data ----------------------------------------------------------


@pytest.mark.parametrize(("dataset", "model", "words"), [
    ("welding", "digits-mlp", "takes 64 values per sample (64,), but welding has 4"),
    ("digits", "welding-mlp", "takes 4 values per sample (4,), but digits has 64"),
])
def test_data_is_checked_against_the_tasks_model(dataset: str, model: str, words: str) -> None:
    """Data the task's registry model cannot take is refused before training, naming both."""
    from participant.data import DataOptions

    with pytest.raises(DataError, match=re.escape(words)):
        DataOptions(dataset=dataset).check_for("t", {"model": model})
    DataOptions(dataset=dataset).check_for("t", {"model": "user"})  # known only later: passes


def test_data_warnings_print_plainly(capsys: pytest.CaptureFixture[str]) -> None:
    """A DataWarning prints as `warning: …`, without a source path and a line of our code."""
    from ml.data.dataset import plain_data_warnings

    original = warnings.showwarning
    try:
        plain_data_warnings()
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.warn("only 40 local samples", DataWarning, stacklevel=1)
    finally:
        warnings.showwarning = original

    assert capsys.readouterr().err == "warning: only 40 local samples\n"


# --- item 6: saved logins ----------------------------------------------------------------------


def test_logins_are_kept_per_user_and_the_last_is_current(tmp_path: Path) -> None:
    """Logging in as john after alice keeps alice's token; `use` switches; logout removes one."""
    path = tmp_path / "credentials.json"
    save_credentials(Credentials.issued(API, "alice", "tok-a", 60), path)
    save_credentials(Credentials.issued(API, "john", "tok-j", 60), path)

    assert read_logins(path).current == "john"
    assert load_credentials(path).access_token == "tok-j"  # type: ignore[union-attr]
    assert load_credentials(path, "alice").access_token == "tok-a"  # type: ignore[union-attr]
    assert use_login(path, "alice") is not None and read_logins(path).current == "alice"
    assert use_login(path, "mallory") is None and read_logins(path).current == "alice"
    assert delete_credentials(path) == "alice"
    assert sorted(read_logins(path).logins) == ["john"] and read_logins(path).current is None
    assert delete_credentials(path, "john") == "john" and not path.exists()


def test_a_credentials_file_of_the_first_format_still_reads(tmp_path: Path) -> None:
    """A file written before named logins (one login) reads as that user, current."""
    path = tmp_path / "credentials.json"
    path.write_text(json.dumps({"api_url": API, "username": "alice", "access_token": "tok",
                                "expires_at": datetime(2030, 1, 1, tzinfo=UTC).isoformat()}))

    saved = read_logins(path)

    assert saved.current == "alice" and saved.logins["alice"].access_token == "tok"


# --- item 10: output polish ---------------------------------------------------------------------


def test_no_help_labels_a_flag_with_a_type() -> None:
    """Flags take no value, so no command's --help shows `<bool>` (rich help did, for every one)."""
    from infra.cli import app

    runner = CliRunner()
    commands = [[], ["tasks", "delete"], ["tasks", "list"], ["platform", "up"], ["demo"],
                ["aggregate"], ["participate"], ["tasks", "create"]]
    for command in commands:
        result = runner.invoke(app, [*command, "--help"], env={"COLUMNS": "100"})
        assert result.exit_code == 0, command
        assert "<bool>" not in result.output, command


def test_platform_up_refuses_fewer_than_one_api_worker_by_name(tmp_path: Path) -> None:
    """`--api-workers 0` exits 2 naming the option, before anything is started."""
    from infra.cli import app

    result = CliRunner().invoke(app, ["platform", "up", "--data-dir", str(tmp_path), "--api-workers", "0"],
                                env={"COLUMNS": "200"})
    assert result.exit_code == 2
    assert "--api-workers" in result.output
    assert list(tmp_path.iterdir()) == []


def test_dates_in_the_task_list_are_never_folded() -> None:
    """At 80 columns each task's date stays on one line (it used to fold over three)."""
    from client.cli.output import tasks_table

    task = Task(task_id="t-1", name="a-rather-long-task-name-2026", creator="alice-from-ibm",
                status="CREATED", definition={"quorum": 2, "rounds": 5}, participant_count=1,
                created_at=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC))
    console = Console(width=80, record=True)
    console.print(tasks_table([task]))

    assert any(task.created_at is not None and line.rstrip().endswith(
        task.created_at.astimezone().strftime("%Y-%m-%d %H:%M:%S")) for line in console.export_text().splitlines())


def test_one_participant_is_singular() -> None:
    """`1 participant`, `2 participants`."""
    from client.cli.output import plural

    assert (plural(1, "participant"), plural(2, "participant")) == ("1 participant", "2 participants")


def test_validation_messages_lose_pydantics_prefix() -> None:
    """"Value error, unknown model …" reaches the user as "unknown model …"."""
    from api.app import plain_message

    assert plain_message("Value error, unknown model 'x'") == "unknown model 'x'"
    assert plain_message("Input should be greater than 0") == "Input should be greater than 0"


def test_tensorflow_starts_without_a_word_on_stderr() -> None:
    """Importing our Keras module prints nothing (TensorFlow's absl/oneDNN lines are silenced)."""
    done = subprocess.run([sys.executable, "-c", "import ml.keras_model"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)

    assert done.returncode == 0 and done.stderr == "", done.stderr


# --- item 8: the welding comparison ----------------------------------------------------------------


def test_the_welding_comparison_scores_both_models_per_robot_and_together() -> None:
    """Rows for FPS2, FPD2 and both, with the held-out counts; on a small budget (1 round of
    2 epochs) both models still beat the majority class by far: the classes are learnable."""
    from infra.demo_compare import compare, comparison_table, train_centralised
    from schema.dataplane import ModelMeta

    definition = {"quorum": 2, "rounds": 1, "epochs": 2, "batch_size": 128, "test_size": 200,
                  "model": "welding-mlp"}
    meta = ModelMeta(architecture="{}", model="welding-mlp", input_shape=[4], num_classes=4,
                     learning_rate=0.001, epochs=2, batch_size=128, rounds=1,
                     feature_mean=None, feature_std=None)
    stand_in, mean, std = train_centralised("t-fed", definition, meta)  # the "federated" model
    meta = meta.model_copy(update={"feature_mean": mean.tolist(), "feature_std": std.tolist()})

    rows = compare(stand_in, meta, "t-1", definition, eval_seed=7)

    assert [(r["test data"], r["samples"]) for r in rows] == [("FPS2", 2400), ("FPD2", 1600), ("both", 4000)]
    assert all(r["federated"] > 0.6 and r["centralised"] > 0.6 for r in rows), rows
    console = Console(width=120, record=True)
    console.print(comparison_table(rows, "test budget"))
    text = console.export_text()
    assert "FPD2" in text and "88.94%" in text and "89.83%" in text


def test_the_rounds_table_is_readable_in_an_80_column_terminal() -> None:
    """`tasks rounds` in a plain 80-column terminal: the round numbers and the participants stay
    whole (they collapsed to nothing once, squeezed out by the long metric headers)."""
    from client.cli.output import rounds_table
    from client.models import Round

    rounds = [Round(round=number, participants=["john", "jack"], samples={"john": 899, "jack": 899},
                    metrics={"loss": 0.3497, "accuracy": 0.9220},
                    eval_metrics={"loss": 0.2712, "accuracy": 0.9265},
                    model_sha256="008284e48008d0ea2a0e6eec557b8210", duration_s=1.0)
             for number in (1, 2, 10)]
    console = Console(width=80, record=True)
    console.print(rounds_table(rounds))
    lines = console.export_text().splitlines()
    rows = [line for line in lines if "0.9265" in line]
    assert [line.split()[0] for line in rows] == ["1", "2", "10"]
    assert all("john" in line and "1798" in line for line in rows)
    assert all(len(line.rstrip()) <= 80 for line in lines)


def test_platform_commands_work_where_the_profile_points(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`platform up --data-dir DIR` tells users to name it with `musketeer --profile DIR ...`:
    `platform status` and `down` then look in DIR, not in ./.musketeer (where `down` said
    "nothing was running" while DIR's platform ran on)."""
    from client import profile
    from infra.cli import app

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MUSKETEER_PROFILE", raising=False)
    elsewhere = tmp_path / "elsewhere"
    try:
        status = CliRunner().invoke(app, ["--profile", str(elsewhere), "platform", "status"])
    finally:
        profile.choose()  # the CLI's choice is process-wide: leave none behind
    assert f"{elsewhere}/profile.json does not exist" in status.output.replace("\n", "")
    monkeypatch.setenv("MUSKETEER_PROFILE", str(elsewhere / "profile.json"))
    assert profile.chosen_data_dir() == elsewhere
    monkeypatch.delenv("MUSKETEER_PROFILE")
    assert profile.chosen_data_dir() == tmp_path / ".musketeer"
