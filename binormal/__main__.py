"""``python -m binormal``: the ``binormal`` console script."""

from binormal.cli import entry

entry()
