"""Run the aggregator and participant daemons as processes of their own (demo, tests, benches)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from infra.procs import log_tail


def daemon_environment(api_url: str, token: str, bootstrap: str, topic_prefix: str,
                       keys_dir: Path) -> dict[str, str]:
    """The environment of a daemon acting as the token's user on this API, broker and topics,
    signing with the keys in `keys_dir`."""
    env = dict(os.environ)
    env.update({
        "MUSKETEER_API_URL": api_url, "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "MUSKETEER_TOPIC_PREFIX": topic_prefix, "MUSKETEER_TOKEN": token,
        "MUSKETEER_KEYS_DIR": str(keys_dir),
        # No profile: everything the daemon needs is in its environment.
        "MUSKETEER_PROFILE": "/nonexistent/profile.json", "COLUMNS": "200",
        # Several TensorFlow processes share the machine's cores: one thread pool each.
        "TF_NUM_INTEROP_THREADS": "1", "TF_NUM_INTRAOP_THREADS": "1",
    })
    return env


def spawn_musketeer(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """Run `musketeer ARGS` in a new process, its output appended to `log`."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        return subprocess.Popen(
            [sys.executable, "-c", "from infra.cli import main; main()", *args],
            env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )


def describe_logs(logs: dict[str, Path]) -> str:
    """The tail of each log, labelled, for an error message."""
    return "\n".join(f"--- {name} ({path})\n{log_tail(path, 25)}" for name, path in logs.items())
