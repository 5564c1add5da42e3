"""``binormal dead``: list or replay dead letters (see :mod:`binormal.deadletters`)."""

from __future__ import annotations

import argparse

from binormal.commands import Subparsers


def register(sub: Subparsers) -> None:
    """Add ``dead [list|replay]`` and its filters."""
    from binormal.deadletters import add_dead_parser

    add_dead_parser(sub)


def run(args: argparse.Namespace) -> int:
    """List or replay, settings from the environment."""
    from binormal.deadletters import main_dead

    return main_dead(args)
