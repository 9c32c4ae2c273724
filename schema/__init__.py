"""Every format that crosses a process boundary: events, commands, task definition, lifecycle,
the data-plane envelope and message kinds, SQL migrations.

Imports: pydantic and the standard library only; every other room may import this one.
"""
