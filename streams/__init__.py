"""Musketeer streams package."""
