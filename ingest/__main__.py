"""``python -m binormal.ingest``: the same as ``binormal ingest``."""

import sys

from binormal.cli import main

sys.exit(main(["ingest"]))
