"""The local platform (embedded PostgreSQL, the tansu broker, the API process), the demo and the
`musketeer` console script that assembles every package's commands.

Imports: everything; nothing imports it but the tests and benches.
"""
