"""A newcomer's first hour (issue 13), end to end: the real `musketeer` console script against
the real API, PostgreSQL and broker. Each test pins one friction that is now fixed."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import ApiProcess, unique

pytestmark = pytest.mark.integration

MUSKETEER = str(Path(sys.executable).parent / "musketeer")
ROOT = Path(__file__).resolve().parent.parent
PASSWORD = "first-hour-pass"


@dataclass
class Shell:
    """A terminal of one machine: its own home, working folder and profile, no ambient settings."""

    home: Path
    env: dict[str, str] = field(default_factory=dict)

    def run(self, *args: str, code: int | None = 0, extra: dict[str, str] | None = None,
            stdin: str | None = None, timeout: float = 120) -> str:
        """Run `musketeer ARGS`; check the exit code; return stdout and stderr together."""
        done = subprocess.run([MUSKETEER, *args], env={**self.env, **(extra or {})}, cwd=self.home,
                              input=stdin, capture_output=True, text=True, timeout=timeout)
        output = done.stdout + done.stderr
        if code is not None:
            assert done.returncode == code, f"musketeer {' '.join(args)} exited {done.returncode}:\n{output}"
        return output

    def start(self, *args: str, extra: dict[str, str] | None = None) -> subprocess.Popen[str]:
        """Run `musketeer ARGS` in the background, output in a pipe."""
        return subprocess.Popen([MUSKETEER, *args], env={**self.env, **(extra or {})}, cwd=self.home,
                                text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)

    def together(self, *commands: tuple[list[str], int], extra: dict[str, str] | None = None) -> list[str]:
        """Run several `musketeer` commands at once (each pays TensorFlow's start-up): their
        outputs, in order, each exit code checked."""
        started = [(self.start(*args, extra=extra), args, code) for args, code in commands]
        outputs = []
        for process, args, code in started:
            output, _ = process.communicate(timeout=180)
            assert process.returncode == code, f"musketeer {' '.join(args)} exited {process.returncode}:\n{output}"
            outputs.append(output)
        return outputs

    def as_(self, user: str) -> dict[str, str]:
        """The environment of `user`'s own terminal: their credentials file (see `people`)."""
        return {"MUSKETEER_CREDENTIALS": str(self.home / f"{user}.credentials.json")}


def machine(tmp_path: Path, api: ApiProcess, broker: Any, topic_prefix: str, name: str = "pc") -> Shell:
    """A fresh machine whose platform profile (as `platform up --data-dir X` writes it) is in X."""
    home = tmp_path / name
    platform_dir = home / "platform"
    platform_dir.mkdir(parents=True)
    (platform_dir / "profile.json").write_text(json.dumps(
        {"api_url": api.url, "kafka_bootstrap_servers": broker.bootstrap, "topic_prefix": topic_prefix}))
    env = {"PATH": str(Path(sys.executable).parent) + ":/usr/bin:/bin", "HOME": str(home),
           "PYTHONPATH": str(ROOT),  # this checkout's code, wherever the venv was installed from
           "COLUMNS": "200", "MUSKETEER_PROFILE": str(platform_dir / "profile.json"),
           "MUSKETEER_PASSWORD": PASSWORD, "TF_NUM_INTRAOP_THREADS": "1", "TF_NUM_INTEROP_THREADS": "1"}
    return Shell(home, env)


def people(shell: Shell, *prefixes: str) -> list[str]:
    """Register one user per prefix (unique names) and log each in, in the shared credentials
    (the last one current) and in a file of their own (`shell.as_(name)`, for the tests of
    other items, which must not lean on named logins)."""
    names = [unique(prefix) for prefix in prefixes]
    for name in names:
        shell.run("register", name, "--organization", "Org")
        shell.run("login", name)
        shell.run("login", name, extra=shell.as_(name))
    return names


@pytest.fixture
def shell(tmp_path: Path, api: ApiProcess, broker: Any, topic_prefix: str) -> Shell:
    return machine(tmp_path, api, broker, topic_prefix)


# --- item 1 --------------------------------------------------------------------------


def test_flags_win_over_a_definition_in_the_seeds_spelling(shell: Shell) -> None:
    """`--rounds 7 --epochs 4` over a file saying `"round": 3, "epoch": 2` creates 7 rounds of 4
    epochs (it used to fail with "both 'round' and 'rounds' given")."""
    people(shell, "alice")
    seed = shell.home / "seed.json"
    seed.write_text(json.dumps({"quorum": 1, "round": 3, "epoch": 2, "model": "digits-mlp",
                                "aggregator": "neural_network.Aggregator"}))
    name = unique("flags")

    shell.run("tasks", "create", name, "--definition", str(seed), "--rounds", "7", "--epochs", "4")

    definition = json.loads(shell.run("tasks", "show", name, "--json"))["definition"]
    assert (definition["rounds"], definition["epochs"]) == (7, 4)
    assert "round" not in definition and "epoch" not in definition


# --- item 2 --------------------------------------------------------------------------


def test_unknown_or_missing_models_are_refused_at_creation(shell: Shell) -> None:
    """`--model nosuch`, `"model": "resnet-9000"` and no model at all: exit 1 naming the known
    models, and no task exists; `--model` help lists them too."""
    people(shell, "alice")
    no_model = shell.home / "no-model.json"
    no_model.write_text(json.dumps({"quorum": 1, "rounds": 1}))
    bad_model = shell.home / "bad-model.json"
    bad_model.write_text(json.dumps({"quorum": 1, "rounds": 1, "model": "resnet-9000"}))
    cases = [(["--quorum", "1", "--rounds", "1", "--model", "nosuch"], "unknown model 'nosuch'"),
             (["--definition", str(bad_model)], "unknown model 'resnet-9000'"),
             (["--definition", str(no_model)], "no model")]

    for args, words in cases:
        name = unique("model")
        output = shell.run("tasks", "create", name, *args, code=1)
        assert words in output and "digits-mlp, mnist-cnn, welding-mlp, user" in output, output
        assert "Value error" not in output
        assert "does not exist" in shell.run("tasks", "show", name, code=1)
    help_text = " ".join(shell.run("tasks", "create", "--help").split())  # unwrapped
    assert "--model <str> The model: digits-mlp, mnist-cnn, welding-mlp, user" in help_text


def test_a_user_model_task_checks_the_file_at_aggregate_before_it_starts(shell: Shell) -> None:
    """`"model": "user"` needs `aggregate --model FILE`; a missing flag or an unreadable file
    exits 1 naming it, before the quorum wait, and the task stays CREATED."""
    alice, john = people(shell, "alice", "john")
    name = unique("usermodel")
    shell.run("tasks", "create", name, "--quorum", "1", "--rounds", "1", "--model", "user",
              extra=shell.as_(alice))
    shell.run("tasks", "join", name, extra=shell.as_(john))
    not_keras = shell.home / "model.keras"
    not_keras.write_bytes(b"not a zip file")

    without, broken = shell.together((["aggregate", name], 1),
                                     (["aggregate", name, "--model", str(not_keras)], 1),
                                     extra=shell.as_(alice))

    assert "give the Keras file with --model FILE.keras" in without
    assert f"{not_keras}: not a readable .keras file" in broken
    assert json.loads(shell.run("tasks", "show", name, "--json"))["status"] == "CREATED"


# --- item 3 --------------------------------------------------------------------------


def test_participate_checks_its_data_at_start_up_and_says_what_it_waits_for(shell: Shell) -> None:
    """Bad data (missing file, missing --label-column, --shard 4/3, data the task's model cannot
    take) exits 1 at once naming the problem; good data prints what the daemon waits for."""
    alice, john = people(shell, "alice", "john")
    name = unique("waiting")
    shell.run("tasks", "create", name, "--quorum", "2", "--rounds", "1", "--model", "digits-mlp",
                  extra=shell.as_(alice))
    shell.run("tasks", "join", name, extra=shell.as_(john))
    csv = shell.home / "site.csv"
    csv.write_text("a,b,y\n1,2,0\n3,4,1\n")
    cases = {
        "missing file": (["--dataset", f"csv:{shell.home}/nosuch.csv", "--label-column", "y"], "nosuch.csv"),
        "no label column": (["--dataset", f"csv:{csv}"], "--label-column"),
        "bad shard": (["--dataset", "digits", "--shard", "4/3"], "part 4 is outside 1..3"),
        "wrong shape": (["--dataset", "welding"], "takes 64 values per sample"),
    }
    started = time.monotonic()
    bad = {label: shell.start("participate", name, *args, extra=shell.as_(john))
           for label, (args, _) in cases.items()}
    good = shell.start("participate", name, "--dataset", "digits", "--shard", "1/2",
                       extra=shell.as_(john))
    try:
        for label, process in bad.items():
            output, _ = process.communicate(timeout=120)
            assert process.returncode == 1, f"{label}: {output}"
            assert cases[label][1] in output, f"{label}: {output}"
            assert "option label_column" not in output
        waiting = _read_until(good, "waiting for", timeout_s=120)
    finally:
        good.kill()
        good.wait(10)
    assert f"waiting for {name} (1 of 2 joined" in waiting, waiting
    assert time.monotonic() - started < 120
    assert json.loads(shell.run("tasks", "show", name, "--json"))["status"] == "CREATED"


def _read_until(process: subprocess.Popen[str], words: str, timeout_s: float) -> str:
    """The process's output up to the first line holding `words`."""
    assert process.stdout is not None
    seen: list[str] = []
    deadline = time.monotonic() + timeout_s
    for line in process.stdout:
        seen.append(line)
        if words in line or time.monotonic() > deadline:
            break
    return "".join(seen)


# --- item 4 --------------------------------------------------------------------------


def test_quorum_timeout_leaves_the_task_open_unless_asked_to_fail_it(shell: Shell) -> None:
    """`aggregate --quorum-timeout` stops waiting and exits 3, the task still open for joins;
    `--fail-on-quorum-timeout` fails it for good."""
    alice, john = people(shell, "alice", "john")
    open_task, failed_task = unique("open"), unique("fail")
    for name in (open_task, failed_task):
        shell.run("tasks", "create", name, "--quorum", "2", "--rounds", "1", "--model", "digits-mlp",
                  extra=shell.as_(alice))

    kept, failed = shell.together(
        (["aggregate", open_task, "--quorum-timeout", "2"], 3),
        (["aggregate", failed_task, "--quorum-timeout", "2", "--fail-on-quorum-timeout"], 3),
        extra=shell.as_(alice))

    assert "quorum not reached in 2 s: 0 of 2 participants joined" in kept
    assert "the task stays open for joins" in kept
    shell.run("tasks", "join", open_task, extra=shell.as_(john))
    assert json.loads(shell.run("tasks", "show", open_task, "--json"))["status"] == "CREATED"
    shown = json.loads(shell.run("tasks", "show", failed_task, "--json"))
    assert shown["status"] == "FAILED" and "quorum not reached" in shown["failure_reason"]
    assert "the task FAILED" in failed


# --- item 5 --------------------------------------------------------------------------


def test_show_history_and_rounds_say_what_the_readme_promises(shell: Shell, api: ApiProcess) -> None:
    """After a round and the end: `tasks show` has last contact, rounds completed, the final
    sha256 (or the failure reason); `history` has a hash column; `rounds` the per-round metrics."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from client import MusketeerClient
    from client.keys import public_text

    alice, john = people(shell, "alice", "john")
    done, failed = unique("done"), unique("failed")
    for name in (done, failed):
        shell.run("tasks", "create", name, "--quorum", "1", "--rounds", "1", "--model", "digits-mlp",
                  extra=shell.as_(alice))
        shell.run("tasks", "join", name, extra=shell.as_(john))
    owner, member = MusketeerClient(api.url), MusketeerClient(api.url)
    owner.login(alice, PASSWORD)
    member.login(john, PASSWORD)
    for client in (owner, member):  # a task starts once every member has a signing key
        client.register_key(public_text(Ed25519PrivateKey.generate()))
    for name in (done, failed):
        owner.start_task(name)
    model = owner.upload_model(done, b"final-weights", round=1)
    owner.record_round(done, 1, participants=[john], model_sha256=model.sha256, samples={john: 40},
                       metrics={"loss": 0.5, "accuracy": 0.8125}, eval_metrics={"accuracy": 0.75},
                       duration_s=1.5)
    owner.upload_model(done, b"final-weights", final=True)
    owner.complete_task(done, model.sha256)
    owner.fail_task(failed, "the aggregator was interrupted")

    show = shell.run("tasks", "show", done)
    history = shell.run("tasks", "history", done)
    rounds = shell.run("tasks", "rounds", done)

    assert "1 of 1 completed" in show and f"sha256 {model.sha256}" in show
    assert "last contact" in show and re.search(rf"{john}\s.*\d{{4}}-\d\d-\d\d.*\d{{4}}-\d\d-\d\d", show), show
    assert "the aggregator was interrupted" in shell.run("tasks", "show", failed)
    events = json.loads(shell.run("tasks", "history", done, "--json"))["items"]
    assert "hash" in history.splitlines()[0] and events[-1]["hash"][:12] in history
    assert "0.8125" in rounds and "0.7500" in rounds and model.sha256[:12] in rounds and john in rounds


# --- item 6 --------------------------------------------------------------------------


def test_named_logins_switch_users_and_errors_name_the_profile(shell: Shell) -> None:
    """`login john` after `login alice` keeps alice (and says so); `--as`, `use` and `--profile`
    pick who and where; a missing profile and a bad MUSKETEER_TOKEN each get a precise hint."""
    alice, john = people(shell, "alice", "john")

    assert f"Also saved: {alice}" in shell.run("login", john)
    assert john in shell.run("whoami")
    assert alice in shell.run("--as", alice, "whoami")
    assert f"Now acting as {alice}" in shell.run("use", alice)
    assert alice in shell.run("whoami")

    profile_dir = shell.home / "platform"
    elsewhere = {"MUSKETEER_PROFILE": ""}
    assert alice in shell.run("--profile", str(profile_dir), "whoami", extra=elsewhere)
    lost = shell.run("tasks", "list", code=1, extra=elsewhere)
    assert "no profile found" in lost and "--profile" in lost and ".musketeer/profile.json" in lost
    refused = shell.run("whoami", code=1, extra={"MUSKETEER_TOKEN": "not-a-token"})
    assert "unset MUSKETEER_TOKEN" in refused


# --- item 7 --------------------------------------------------------------------------


def test_the_api_docs_need_nothing_but_this_server(api: ApiProcess) -> None:
    """/docs and /redoc reference only assets this server serves (an air-gapped site sees them)."""
    for page in ("/docs", "/redoc"):
        html = httpx.get(f"{api.url}{page}").text
        urls = re.findall(r"""(?:src|href|url)\s*[=:(]\s*["']([^"']+)["']""", html)
        assert urls, html
        assert not [u for u in urls if "://" in u or u.startswith("//")], urls
        for url in urls:
            response = httpx.get(f"{api.url}{url}")
            assert response.status_code == 200 and response.content, url
    assert "fonts.googleapis" not in httpx.get(f"{api.url}/redoc").text
