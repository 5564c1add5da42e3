"""``binormal web`` (and ``python -m binormal.web``): the web tier alone."""

from __future__ import annotations

import argparse

from binormal.commands import Subparsers


def register(sub: Subparsers) -> None:
    """Add ``web`` (settings from the environment: binormal/web/settings.py)."""
    sub.add_parser("web", help="run the web tier (/discrete, /api/*, /, /websocket) on HOST:PORT against REDIS_URL")


def run(args: argparse.Namespace) -> int:
    """Serve the web tier on HOST:PORT until SIGINT/SIGTERM."""
    from binormal.common.http import serve
    from binormal.web.app import create_app
    from binormal.web.settings import WebSettings

    settings = WebSettings.from_env()
    serve(create_app(settings), settings.host, settings.port, "web")
    return 0
