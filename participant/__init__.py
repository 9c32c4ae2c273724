"""Musketeer participant package."""
