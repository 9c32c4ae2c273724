"""Member signing keys on this machine: made on first need, kept beside the saved login.

Each user's keys live in `<keys dir>/<username>/<fingerprint>.pem` (PKCS#8, mode 0600, in a
folder of mode 0700), with `current` naming the key in use. Older keys are kept: a task started
before a rotation is still signed with the key it recorded. The private key is never sent,
printed or logged; the API only ever sees the public half.
"""

from __future__ import annotations

import fcntl
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
    load_pem_private_key,
)

from schema.keys import encode_public_key, fingerprint


class KeyFileError(ValueError):
    """A key file is missing, unreadable or not an Ed25519 key (the message says which)."""


def public_bytes(key: Ed25519PrivateKey) -> bytes:
    """The raw 32-byte public half."""
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def public_text(key: Ed25519PrivateKey) -> str:
    """The public half as the API takes it (base64)."""
    return encode_public_key(public_bytes(key))


def fingerprint_of(key: Ed25519PrivateKey) -> str:
    """The fingerprint the log records for this key."""
    return fingerprint(public_bytes(key))


class KeyRing:
    """One user's signing keys in a folder of their own."""

    def __init__(self, keys_dir: Path, username: str) -> None:
        self.folder = keys_dir / username
        self.username = username

    def __repr__(self) -> str:
        return f"KeyRing({self.folder})"

    def current(self) -> Ed25519PrivateKey | None:
        """The key in use, or None before the first one is made."""
        try:
            name = (self.folder / "current").read_text().strip()
        except FileNotFoundError:
            return None
        return self.get(name)

    def get(self, key_fingerprint: str) -> Ed25519PrivateKey:
        """The key with this fingerprint (KeyFileError if this machine does not hold it)."""
        path = self.folder / f"{key_fingerprint}.pem"
        try:
            key = load_pem_private_key(path.read_bytes(), password=None)
        except FileNotFoundError:
            raise KeyFileError(f"no signing key {key_fingerprint[:16]}… for {self.username} in "
                            f"{self.folder} (was it made on another machine?)") from None
        except (OSError, ValueError, TypeError) as exc:
            raise KeyFileError(f"{path} is not a readable private key: {exc}") from exc
        if not isinstance(key, Ed25519PrivateKey):
            raise KeyFileError(f"{path} is not an Ed25519 key")
        return key

    def recorded(self, task_keys: dict[str, str], task_name: str) -> Ed25519PrivateKey:
        """The key a task recorded for this user at its start (it may since have been rotated)."""
        key_fingerprint = task_keys.get(self.username)
        if key_fingerprint is None:
            raise KeyFileError(f"task '{task_name}' recorded no signing key for {self.username}")
        return self.get(key_fingerprint)

    @contextmanager
    def held(self) -> Iterator[None]:
        """This ring to ourselves for the block: other processes and threads wait at `held`."""
        # Several daemons of one user start together (ten `musketeer aggregate` from a script, or
        # ten aggregators in one process): without this, each saw no key, made one and registered
        # it, retiring the others' keys under them. flock, on an open file of its own, excludes
        # other processes and other threads alike.
        self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        with open(self.folder / ".lock", "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def create(self) -> Ed25519PrivateKey:
        """A new key, written 0600 and made current (the previous one stays on disk)."""
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
        self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.folder, 0o700)
        _write_private(self.folder / f"{fingerprint_of(key)}.pem", pem)
        _write_private(self.folder / "current", fingerprint_of(key).encode())
        return key


def _write_private(path: Path, content: bytes) -> None:
    # Created 0600 from the start and renamed into place: never readable by others, never half.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(content)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
