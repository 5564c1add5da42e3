"""The scorer worker: consumes the event stream, counts, scores and publishes."""

from worker.settings import WorkerSettings
from worker.worker import Worker

__all__ = ["Worker", "WorkerSettings"]
