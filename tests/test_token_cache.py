"""The API processes' token cache: a token stops working everywhere once it leaves the table.

The logic (expiry, the race with a sign-out, the bound) is tested on its own; the rest against
the real PostgreSQL, with two Accounts that each keep their own cache, as two API processes do.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any

import psycopg
import pytest

from api.security import Accounts, TokenCache, _token_digest, hash_password
from tests.conftest import drop_database, eventually, fresh_database, unique


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def listening_cache(**kwargs: Any) -> TokenCache:
    """A cache that believes it listens (what its thread does once LISTEN succeeded)."""
    cache = TokenCache(None, **kwargs)
    cache._started_listening()
    return cache


class TestTheCacheOnItsOwn:
    def test_a_kept_token_is_answered_until_the_time_the_database_gave_it(self) -> None:
        clock = Clock()
        cache = listening_cache(clock=clock)
        cache.keep(b"d1", "alice", 30.0, cache.mark())
        assert cache.owner(b"d1") == "alice"
        clock.now += 29.9
        assert cache.owner(b"d1") == "alice"
        clock.now += 0.2
        assert cache.owner(b"d1") is None

    def test_a_notification_forgets_that_token_and_a_star_forgets_all(self) -> None:
        cache = listening_cache()
        for name in (b"d1", b"d2", b"d3"):
            cache.keep(name, "alice", 60.0, cache.mark())
        cache.forget(b"d1".hex())
        assert [cache.owner(d) for d in (b"d1", b"d2", b"d3")] == [None, "alice", "alice"]
        cache.forget("*")
        assert [cache.owner(d) for d in (b"d2", b"d3")] == [None, None]

    def test_a_payload_that_is_no_digest_forgets_everything(self) -> None:
        cache = listening_cache()
        cache.keep(b"d1", "alice", 60.0, cache.mark())
        cache.forget("not hex")
        assert cache.owner(b"d1") is None

    def test_a_token_read_before_a_revocation_was_handled_is_not_kept(self) -> None:
        # A check reads the row just before a sign-out commits; the sign-out's NOTIFY is handled
        # before the check stores what it read. Stored, the signed-out token would stay valid.
        cache = listening_cache()
        mark = cache.mark()
        cache.forget(b"d1".hex())
        cache.keep(b"d1", "alice", 60.0, mark)
        assert cache.owner(b"d1") is None
        cache.keep(b"d1", "alice", 60.0, cache.mark())  # read again after it: kept
        assert cache.owner(b"d1") == "alice"

    def test_it_keeps_nothing_while_it_does_not_listen(self) -> None:
        cache = TokenCache(None)  # never listened
        assert cache.mark() is None
        cache.keep(b"d1", "alice", 60.0, cache.mark())
        assert cache.owner(b"d1") is None
        cache._started_listening()
        cache.keep(b"d1", "alice", 60.0, cache.mark())
        mark = cache.mark()
        cache._stopped_listening()  # the connection was lost: NOTIFYs may be missed from here
        assert cache.owner(b"d1") is None
        cache._started_listening()
        cache.keep(b"d2", "alice", 60.0, mark)  # read while it was not listening
        assert cache.owner(b"d2") is None

    def test_it_holds_at_most_max_entries_and_drops_the_oldest(self) -> None:
        cache = listening_cache(max_entries=3)
        for i in range(5):
            cache.keep(bytes([i]), f"u{i}", 60.0, cache.mark())
        assert [cache.owner(bytes([i])) for i in range(5)] == [None, None, "u2", "u3", "u4"]


# --- against PostgreSQL ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def own_database() -> Iterator[str]:
    """A database of this module's own: one test empties access_tokens."""
    url = fresh_database()
    yield url
    drop_database(url)


def _connections(url: str) -> Callable[[], AbstractContextManager[psycopg.Connection[Any]]]:
    @contextmanager
    def connection() -> Iterator[psycopg.Connection[Any]]:
        with psycopg.connect(url, autocommit=True) as conn:
            yield conn
    return connection


@pytest.fixture()
def two_processes(own_database: str) -> Iterator[tuple[Accounts, Accounts, TokenCache]]:
    """Accounts `a` and `b`, each with its own listening cache (b's is returned too)."""
    caches = [TokenCache(own_database, retry_s=0.2) for _ in range(2)]
    for cache in caches:
        cache.start()
    assert eventually(lambda: all(c.listening for c in caches))
    a, b = (Accounts(_connections(own_database), 3600, cache) for cache in caches)
    yield a, b, caches[1]
    for cache in caches:
        cache.stop()


def login(database_url: str, accounts: Accounts) -> str:
    """A new user's bearer token."""
    name = unique("tok")
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("INSERT INTO credentials (username, password_hash) VALUES (%s, %s)",
                     (name, hash_password("pw-12345678")))
    token: str = accounts.login(name, "pw-12345678")["access_token"]
    return token


def test_a_sign_out_in_one_process_reaches_the_cache_of_another(
        own_database: str, two_processes: tuple[Accounts, Accounts, TokenCache]) -> None:
    a, b, b_cache = two_processes
    token = login(own_database, a)
    owner = b.owner(token)
    assert owner is not None and owner.startswith("tok-")
    assert b_cache.owner(_token_digest(token)) == owner  # b answers it from memory now
    a.revoke(token)
    assert eventually(lambda: b_cache.owner(_token_digest(token)) is None), "b never heard of it"
    assert b.owner(token) is None
    assert a.owner(token) is None


@pytest.mark.parametrize("statement", ["DELETE FROM access_tokens WHERE username = %s",
                                       "UPDATE access_tokens SET expires_at = now() WHERE username = %s",
                                       "TRUNCATE access_tokens"])
def test_an_operator_removing_a_token_by_hand_reaches_the_cache(
        own_database: str, two_processes: tuple[Accounts, Accounts, TokenCache], statement: str) -> None:
    _, b, b_cache = two_processes
    token = login(own_database, b)
    owner = b.owner(token)
    assert owner is not None and b_cache.owner(_token_digest(token)) == owner
    with psycopg.connect(own_database, autocommit=True) as conn:
        conn.execute(statement, (owner,) if "%s" in statement else None)
    assert eventually(lambda: b_cache.owner(_token_digest(token)) is None)
    assert b.owner(token) is None


def test_a_lost_listening_connection_empties_the_cache_until_it_listens_again(
        own_database: str, two_processes: tuple[Accounts, Accounts, TokenCache]) -> None:
    _, b, b_cache = two_processes
    token = login(own_database, b)
    assert b.owner(token) is not None and b_cache.owner(_token_digest(token)) is not None
    with psycopg.connect(own_database, autocommit=True) as conn:
        conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                     " WHERE datname = current_database() AND query LIKE 'LISTEN musketeer_tokens%%'")
    assert eventually(lambda: b_cache.owner(_token_digest(token)) is None)
    assert eventually(lambda: b_cache.listening)  # and it listens again, on a new connection
    assert b.owner(token) is not None  # asked the database, which still has it


def _revoke_while_checking(a: Accounts, b: Accounts, b_cache: TokenCache, token: str) -> None:
    """Revoke `token` through `a` while four threads keep checking it through `b`."""
    digest = _token_digest(token)
    stop = threading.Event()

    def check() -> None:
        while not stop.is_set():
            b.owner(token)

    checkers = [threading.Thread(target=check) for _ in range(4)]
    for thread in checkers:
        thread.start()
    try:
        a.revoke(token)
        assert eventually(lambda: b_cache.owner(digest) is None)
    finally:
        stop.set()
        for thread in checkers:
            thread.join()


def test_many_checks_racing_a_sign_out_leave_no_cache_answering_for_it(
        own_database: str, two_processes: tuple[Accounts, Accounts, TokenCache]) -> None:
    a, b, b_cache = two_processes
    for _ in range(5):
        token = login(own_database, a)
        _revoke_while_checking(a, b, b_cache, token)
        assert b.owner(token) is None
        assert b_cache.owner(_token_digest(token)) is None
