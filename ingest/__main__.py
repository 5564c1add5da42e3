"""``python -m binormal.ingest``: the ingest service alone (same as ``binormal ingest``)."""

import sys

from binormal.common import log
from binormal.common.config import ServiceSettings, read
from binormal.ingest.app import main

log.configure(read(ServiceSettings, "log_level"))
sys.exit(main())
