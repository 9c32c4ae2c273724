"""Musketeer schema package."""
