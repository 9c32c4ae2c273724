"""Musketeer aggregator package."""
