"""The local platform's error type: a service that could not be started or reached."""

from __future__ import annotations


class PlatformError(RuntimeError):
    """A local service failed; the message names the service, its address and its log."""
