"""``python -m binormal.web``: the web tier alone (same as ``binormal web``)."""

import os
import sys

from binormal.common import log
from binormal.web.app import main

log.configure(os.environ.get("BINORMAL_LOG_LEVEL", "INFO"))
sys.exit(main())
