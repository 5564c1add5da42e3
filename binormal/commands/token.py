"""``binormal token``: manage API tokens (see :mod:`binormal.tokens`)."""

from __future__ import annotations

import argparse

from binormal.commands import Subparsers


def register(sub: Subparsers) -> None:
    """Add ``token add|list|revoke``."""
    from binormal.tokens import add_token_parser

    add_token_parser(sub)


def run(args: argparse.Namespace) -> int:
    """Edit or list the tokens file."""
    from binormal.tokens import main_token

    return main_token(args)
