"""``binormal ingest`` (and ``python -m binormal.ingest``): the ingest service alone."""

from __future__ import annotations

import argparse

from binormal.commands import Subparsers


def register(sub: Subparsers) -> None:
    """Add ``ingest`` (settings from the environment: binormal/ingest/settings.py)."""
    sub.add_parser("ingest", help="run the ingest service (/events) on HOST:INGEST_PORT against REDIS_URL")


def run(args: argparse.Namespace) -> int:
    """Serve ``/events`` on HOST:INGEST_PORT until SIGINT/SIGTERM."""
    from binormal.common.http import serve
    from binormal.ingest.app import create_app
    from binormal.ingest.settings import IngestSettings

    settings = IngestSettings.from_env()
    serve(create_app(settings), settings.host, settings.port, "ingest")
    return 0
