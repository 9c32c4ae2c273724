"""Key commands: the Ed25519 key that signs what you send on the data plane.

The daemons make and register a key on first need; these commands show, register, rotate and
revoke keys by hand. Private keys stay in the keys folder beside your saved login (mode 0600).
"""

from __future__ import annotations

from typing import Annotated

import typer

from client.cli import output as show
from client.cli.session import ApiUrl, AsJson, CliFailure, profile, reports_errors, session
from client.keys import KeyFileError, KeyRing, fingerprint_of, public_text
from client.keys_api import ensure_registered
from client.models import MemberKeyInfo


def _ring(username: str) -> KeyRing:
    return KeyRing(profile().keys_dir(), username)


def _print_keys(keys: list[MemberKeyInfo], local: str | None) -> None:
    if not keys:
        show.out().print("No signing key registered yet: `musketeer keys register` makes one.")
    for key in keys:
        here = " (on this machine)" if key.fingerprint == local else ""
        show.out().print(f"{key.status:8} {key.fingerprint}{here}")


@reports_errors
def keys_show(ctx: typer.Context, api_url: ApiUrl = None, as_json: AsJson = False) -> None:
    """Your signing keys as the API knows them, newest first, and which one this machine holds."""
    with session(ctx).client(api_url) as client:
        ring = _ring(client.me().username)
        keys = client.my_keys()
    try:
        local = ring.current()
    except KeyFileError as exc:
        raise CliFailure(str(exc)) from exc
    if as_json:
        return show.print_json({"items": [k.model_dump(mode="json") for k in keys],
                                "local": fingerprint_of(local) if local else None})
    _print_keys(keys, fingerprint_of(local) if local else None)


@reports_errors
def keys_register(ctx: typer.Context, api_url: ApiUrl = None) -> None:
    """Make a key if this machine has none and register it (nothing to do if it is registered)."""
    with session(ctx).client(api_url) as client:
        ring = _ring(client.me().username)
        key = ensure_registered(client, ring)
    show.out().print(f"Signing key {fingerprint_of(key)} is registered (private key in {ring.folder}).")


@reports_errors
def keys_rotate(ctx: typer.Context, api_url: ApiUrl = None) -> None:
    """Make a new key and register it; tasks started before keep the key they recorded."""
    with session(ctx).client(api_url) as client:
        ring = _ring(client.me().username)
        key = ring.create()
        client.register_key(public_text(key))
    show.out().print(f"Rotated: new signing key {fingerprint_of(key)}; the previous one still signs "
                     "the tasks that started with it.")


@reports_errors
def keys_revoke(
    ctx: typer.Context,
    fingerprint: Annotated[str, typer.Argument(help="The key's fingerprint (see `musketeer keys show`).")],
    api_url: ApiUrl = None,
) -> None:
    """Revoke a key (lost or compromised): nothing signed with it is believed from now on."""
    with session(ctx).client(api_url) as client:
        client.revoke_key(fingerprint)
    show.out().print(f"Revoked {fingerprint}. The daemons make and register a new key when they next start.")
