"""``python -m binormal.web``: the same as ``binormal web``."""

import sys

from binormal.cli import main

sys.exit(main(["web"]))
