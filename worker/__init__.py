"""The scorer worker: consumes the event stream, counts, scores and publishes."""

from binormal.worker.settings import WorkerSettings
from binormal.worker.worker import Worker

__all__ = ["Worker", "WorkerSettings"]
