"""Key commands: a member registers (or rotates) the Ed25519 key that signs what they send, or
revokes one. Each is an event on the user's stream, so the log says which key spoke for whom."""

from __future__ import annotations

from api.domain import user_stream
from api.errors import Conflict, NotAuthenticated, NotFound
from api.handlers import Commands, Context, Result
from api.store import Session
from schema.commands import RegisterKey
from schema.events import MemberKeyRegistered, MemberKeyRevoked
from schema.keys import decode_public_key, fingerprint


def key_view(username: str, fingerprint: str, public_key: str, status: str,
             replaces: str | None = None) -> dict[str, str | None]:
    """A key as the API shows it."""
    return {"username": username, "fingerprint": fingerprint, "public_key": public_key,
            "status": status, "replaces": replaces}


class KeyCommands(Commands):
    """Registering, rotating and revoking members' signing keys."""

    def register_key(self, command: RegisterKey, ctx: Context) -> Result:
        """Make a key the user's current one (the previous one, if any, is rotated out)."""
        digest = fingerprint(decode_public_key(command.public_key))

        def decide(session: Session) -> Result:
            stream = user_stream(ctx.actor)
            version = session.stream_version(stream)
            if version == 0:
                raise NotAuthenticated(f"user '{ctx.actor}' does not exist")
            owner = session.key_owner(digest)
            if owner == (ctx.actor, "active"):
                return Result(200, key_view(ctx.actor, digest, command.public_key, "active"))
            if owner is not None:
                # A key speaks for one member only, once: a copied or retired key is refused.
                raise Conflict(f"this key ({digest[:16]}…) is already registered"
                               + (" and was retired; make a new one" if owner[0] == ctx.actor else ""))
            current = session.active_key(ctx.actor)
            event = MemberKeyRegistered(username=ctx.actor, fingerprint=digest,
                                        public_key=command.public_key, replaces=current)
            session.append(stream, version, [self._event(ctx, event)])
            return Result(201, key_view(ctx.actor, digest, command.public_key, "active", current))

        return self._run(ctx, "register_key", command.model_dump(), decide)

    def revoke_key(self, digest: str, ctx: Context) -> Result:
        """Withdraw one of the user's keys: nothing signed with it is believed from now on."""

        def decide(session: Session) -> Result:
            owner = session.key_owner(digest)
            if owner is None or owner[0] != ctx.actor:
                raise NotFound(f"you have no key with fingerprint {digest}")
            if owner[1] == "revoked":
                raise Conflict(f"key {digest[:16]}… is already revoked")
            stream = user_stream(ctx.actor)
            event = MemberKeyRevoked(username=ctx.actor, fingerprint=digest)
            session.append(stream, session.stream_version(stream), [self._event(ctx, event)])
            return Result(200, {"username": ctx.actor, "fingerprint": digest, "status": "revoked"})

        return self._run(ctx, f"revoke_key:{digest}", {}, decide)


def keys_in_force(session: Session, usernames: list[str]) -> dict[str, str]:
    """Each user's current key fingerprint; Conflict naming those who have none."""
    keys = {name: session.active_key(name) for name in usernames}
    missing = sorted(name for name, key in keys.items() if key is None)
    if missing:
        raise Conflict(f"no signing key registered for: {', '.join(missing)} (the daemons register "
                       "one when they start; or run `musketeer keys register`)", {"missing_keys": missing})
    return {name: key for name, key in keys.items() if key is not None}
