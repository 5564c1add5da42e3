"""``python -m binormal.web``: the web tier alone (same as ``binormal web``)."""

import sys

from binormal.common import log
from binormal.common.config import ServiceSettings, read
from binormal.web.app import main

log.configure(read(ServiceSettings, "log_level"))
sys.exit(main())
