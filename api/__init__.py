"""Musketeer api package."""
