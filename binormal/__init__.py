"""Binormal's command line: the composition root that starts each service."""
