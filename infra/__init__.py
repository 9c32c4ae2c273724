"""Musketeer infra package."""
