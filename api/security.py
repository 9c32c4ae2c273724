"""Passwords (argon2) and bearer tokens (random, stored only as sha256, expiring)."""

from __future__ import annotations

import hashlib
import logging
import secrets
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from api.errors import NotAuthenticated

log = logging.getLogger("musketeer.api")
_HASHER = PasswordHasher()
# Verifying against this when the user does not exist keeps the time of a
# failed login the same whether or not the name is known.
_DUMMY_HASH = _HASHER.hash("not-a-real-password")


def hash_password(password: str) -> str:
    """An argon2id hash of the password."""
    return _HASHER.hash(password)


def check_password(password_hash: str | None, password: str) -> bool:
    """Whether the password matches the stored hash (False when there is none)."""
    try:
        return _HASHER.verify(password_hash or _DUMMY_HASH, password) and bool(password_hash)
    except (VerificationError, InvalidHashError):
        return False


def _token_digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def issue_token(conn: psycopg.Connection[Any], username: str, ttl_s: int) -> tuple[str, int]:
    """A new bearer token for the user, stored as its digest; returns (token, ttl)."""
    token = secrets.token_urlsafe(32)
    expires_at = datetime.now(UTC) + timedelta(seconds=ttl_s)
    conn.execute(
        "INSERT INTO access_tokens (token_sha256, username, expires_at) VALUES (%s, %s, %s)",
        (_token_digest(token), username, expires_at),
    )
    conn.execute("DELETE FROM access_tokens WHERE expires_at < now() - interval '1 day'")
    return token, ttl_s


def token_owner(conn: psycopg.Connection[Any], token: str) -> str | None:
    """The user a live token belongs to, or None if unknown or expired."""
    found = _live_token(conn, _token_digest(token))
    return found[0] if found else None


def _live_token(conn: psycopg.Connection[Any], digest: bytes) -> tuple[str, float] | None:
    """(user, seconds the token has left) for a live token's digest, by the database's clock."""
    row = conn.execute(
        "SELECT username, extract(epoch FROM expires_at - now())::float8 AS left_s"
        " FROM access_tokens WHERE token_sha256 = %s AND expires_at > now()",
        (digest,),
    ).fetchone()
    if row is None:
        return None
    if isinstance(row, dict):
        return str(row["username"]), float(row["left_s"])
    return str(row[0]), float(row[1])


TOKEN_CHANNEL = "musketeer_tokens"  # schema/migrations/0011_token_notify.sql sends on it


class TokenCache:
    """The live tokens this process has checked, so a request need not ask PostgreSQL again.

    A token is kept until it expires (by the time the database gave it, counted on this
    process's monotonic clock, so clock skew between hosts does not stretch it) or until
    PostgreSQL says it is gone: a trigger on `access_tokens` sends the digest of every row
    deleted or changed on TOKEN_CHANNEL, whoever deleted it (a sign-out in any API process, an
    operator's DELETE or TRUNCATE, the sweep of expired tokens). A thread listens on its own
    connection. While it is not listening (not started yet, or the connection was lost) the
    cache holds nothing and every check goes to the database, as without a cache; it starts
    empty again whenever it starts listening, since a NOTIFY sent meanwhile was missed.

    A check that read the table just before a sign-out committed could store the token after
    the NOTIFY was handled, and keep it. So the listener counts what it handles, a check notes
    the count before it reads, and the token is stored only if nothing was handled meanwhile.

    What remains: another process accepts a signed-out token for as long as the NOTIFY takes
    to reach it (milliseconds on one host); the process that signs out forgets at once.
    """

    def __init__(self, database_url: str | None, max_entries: int = 100_000,
                 clock: Callable[[], float] = time.monotonic, retry_s: float = 1.0) -> None:
        self._database_url = database_url
        self._max_entries = max_entries
        self._clock = clock
        self._retry_s = retry_s
        self._entries: dict[bytes, tuple[str, float]] = {}  # digest -> (user, deadline)
        self._lock = threading.Lock()
        self._handled = 0  # notifications handled; -1 while not listening
        self._listening = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def listening(self) -> bool:
        """Whether revocations reach this cache now (else it holds nothing)."""
        return self._listening

    def start(self) -> None:
        """Listen for revocations on a thread of its own (no-op without a database URL)."""
        if self._database_url is None or self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="token-cache", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop listening; the cache holds nothing after this."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
        self._stopped_listening()

    def owner(self, digest: bytes) -> str | None:
        """The user of a cached live token, or None (not cached, expired, or not listening)."""
        with self._lock:
            entry = self._entries.get(digest)
            if entry is None:
                return None
            if self._clock() >= entry[1]:
                del self._entries[digest]
                return None
            return entry[0]

    def mark(self) -> int | None:
        """Note taken before reading a token from the database; None while not listening."""
        with self._lock:
            return self._handled if self._listening else None

    def keep(self, digest: bytes, username: str, left_s: float, mark: int | None) -> None:
        """Store a token read after `mark`, unless a revocation was handled since (or none can be)."""
        with self._lock:
            if mark is None or not self._listening or mark != self._handled:
                return
            if len(self._entries) >= self._max_entries:
                del self._entries[next(iter(self._entries))]  # the oldest
            self._entries[digest] = (username, self._clock() + left_s)

    def forget(self, payload: str) -> None:
        """Handle one notification: a token's hex digest, or '*' for all of them."""
        with self._lock:
            self._handled += 1
            if payload == "*":
                self._entries.clear()
                return
            try:
                self._entries.pop(bytes.fromhex(payload), None)
            except ValueError:  # not ours: forget everything rather than guess
                self._entries.clear()

    def _started_listening(self) -> None:
        with self._lock:
            self._entries.clear()
            self._handled += 1
            self._listening = True

    def _stopped_listening(self) -> None:
        with self._lock:
            self._listening = False
            self._entries.clear()
            self._handled += 1

    def _run(self) -> None:
        assert self._database_url is not None
        warned = False
        while not self._stop.is_set():
            try:
                with psycopg.connect(self._database_url, autocommit=True) as conn:
                    conn.execute(f"LISTEN {TOKEN_CHANNEL}")
                    self._started_listening()
                    if warned:
                        log.info("token cache listening again")
                        warned = False
                    while not self._stop.is_set():
                        for note in conn.notifies(timeout=1.0):
                            self.forget(note.payload)
            except Exception as exc:  # whatever it was, revocations no longer reach the cache
                self._stopped_listening()
                if not warned:
                    log.warning("token cache off (every request asks the database) until it can "
                                "listen again: %s", exc)
                    warned = True
                self._stop.wait(self._retry_s)
        self._stopped_listening()


class Accounts:
    """Logins and tokens: secrets kept beside the log, in tables of their own."""

    def __init__(self, connection: Callable[[], AbstractContextManager[psycopg.Connection[Any]]],
                 token_ttl_s: int, cache: TokenCache | None = None) -> None:
        self._connection = connection
        self.token_ttl_s = token_ttl_s
        self._cache = cache or TokenCache(None)

    def login(self, username: str, password: str) -> dict[str, Any]:
        """A bearer token for a correct username and password; NotAuthenticated otherwise."""
        with self._connection() as conn, conn.transaction():
            row = conn.execute(
                "SELECT password_hash FROM credentials WHERE username = %s", (username,)
            ).fetchone()
            stored = (row["password_hash"] if isinstance(row, dict) else row[0]) if row else None
            if not check_password(stored, password):
                raise NotAuthenticated("wrong username or password")
            token, ttl = issue_token(conn, username, self.token_ttl_s)
        return {"access_token": token, "token_type": "bearer", "expires_in": ttl}

    def revoke(self, token: str) -> None:
        """Forget a token at once (the dashboard's sign-out)."""
        digest = _token_digest(token)
        with self._connection() as conn:
            conn.execute("DELETE FROM access_tokens WHERE token_sha256 = %s", (digest,))
        self._cache.forget(digest.hex())  # here at once; other processes by the trigger's NOTIFY

    def cached_owner(self, token: str) -> str | None:
        """The user of a live token this process has checked already, without I/O; else None."""
        return self._cache.owner(_token_digest(token))

    def owner(self, token: str) -> str | None:
        """The user a live token belongs to, or None."""
        digest = _token_digest(token)
        cached = self._cache.owner(digest)
        if cached is not None:
            return cached
        mark = self._cache.mark()
        with self._connection() as conn:
            found = _live_token(conn, digest)
        if found is None:
            return None
        self._cache.keep(digest, found[0], found[1], mark)
        return found[0]
