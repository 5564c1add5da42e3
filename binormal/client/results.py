"""The client's errors and typed results (frozen dataclasses with the fields of docs/openapi.yaml's schemas)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar


class BinormalError(Exception):
    """Base of the client's errors."""


class ApiError(BinormalError):
    """The service refused the request for a reason retrying cannot fix (a 4xx, or an unexpected answer)."""

    def __init__(self, status: int, error: str, field: str | None = None, body: Any = None) -> None:
        super().__init__(f"HTTP {status}: {f'{field}: ' if field else ''}{error}")
        self.status, self.error, self.field, self.body = status, error, field, body


class TooLarge(ApiError):
    """A 413: the body is over the service's limit (``send_many`` splits the batch and goes on)."""


class Transient(BinormalError):
    """One try got no verdict (no answer, a 5xx, 429, 503): the request may be sent again."""

    def __init__(self, reason: str, after: float | None = None) -> None:
        super().__init__(reason)
        self.reason, self.after = reason, after


class GaveUp(BinormalError):
    """Every try failed. ``result`` holds what was settled; ``pending`` the event ids in doubt or never sent."""

    def __init__(self, reason: str, result: SendResult | None = None, pending: Sequence[str] = ()) -> None:
        super().__init__(reason)
        self.reason, self.result, self.pending = reason, result, list(pending)


class Queued(BinormalError):
    """``/discrete`` had no result in time (504) on every try; the event is queued and will be counted."""

    def __init__(self, event_id: str) -> None:
        super().__init__(f"no result in time; queued as {event_id}")
        self.event_id = event_id


# --- typed results (the schemas of docs/openapi.yaml; tests/test_client.py checks the fields) ---

T = TypeVar("T")


def build(cls: type[T], doc: Any) -> T:
    """An instance of ``cls`` (a dataclass below) from its JSON object, nested lists and objects included."""
    if not isinstance(doc, dict):
        raise ApiError(200, f"expected a JSON object for {cls.__name__}, got {type(doc).__name__}")
    wire: Mapping[str, str] = getattr(cls, "WIRE", {})
    nested: Mapping[str, type[Any]] = getattr(cls, "NESTED", {})
    kwargs: dict[str, Any] = {}
    for name in cls.__dataclass_fields__:  # type: ignore[attr-defined]
        key = wire.get(name, name)
        if key not in doc:
            continue  # optional in the schema: the dataclass default
        value = doc[key]
        sub = nested.get(name)
        if sub is not None and value is not None:
            value = [build(sub, v) for v in value] if isinstance(value, list) else build(sub, value)
        kwargs[name] = value
    try:
        return cls(**kwargs)
    except TypeError as exc:  # a required property missing from the answer
        raise ApiError(200, f"unreadable {cls.__name__}: {exc}", body=doc) from None


@dataclass(frozen=True, slots=True)
class Reason:
    """One action's part of a score (schema Reason)."""

    action: str
    count: int
    observed: int
    expected: float
    bits: float
    kind: str


@dataclass(frozen=True, slots=True)
class DiscreteResult:
    """The answer of ``POST /discrete`` (schema DiscreteResult); ``duplicate`` is True for a retried event id."""

    WIRE: ClassVar[Mapping[str, str]] = {"this_action_count": "thisActionCount"}
    NESTED: ClassVar[Mapping[str, type[Any]]] = {"explain": Reason}

    runtime: int
    score: float
    count: int
    zscore: float
    source: str
    pop: str
    id: str
    action: str
    timestamp: int
    this_action_count: int
    actionzscore: float
    org: str
    event_id: str
    explain: list[Reason]
    muted: bool
    pscore: float
    rzscore: float
    bits_per_event: float
    learning: bool
    novel: bool
    new_action: bool
    duplicate: bool = False
    recent: float | None = None  # only with BINORMAL_RECENT_WINDOW > 0


@dataclass(frozen=True, slots=True)
class Dominated:
    """The individual holding most of a scope's events (schema Dominated)."""

    id: str
    share: float


@dataclass(frozen=True, slots=True)
class Outlier:
    """One entry of ``Outliers.outliers``."""

    NESTED: ClassVar[Mapping[str, type[Any]]] = {"reasons": Reason}

    id: str
    score: float
    count: int
    zscore: float
    pscore: float
    rzscore: float
    bits_per_event: float
    learning: bool
    reasons: list[Reason]
    muted: bool
    recent: float | None = None  # only with BINORMAL_RECENT_WINDOW > 0


@dataclass(frozen=True, slots=True)
class Outliers:
    """The answer of ``GET /api/outliers`` (schema Outliers)."""

    NESTED: ClassVar[Mapping[str, type[Any]]] = {"outliers": Outlier, "dominated": Dominated}

    org: str
    source: str
    pop: str
    individuals: int
    mean: float
    std: float
    dominated: Dominated | None
    outliers: list[Outlier]


@dataclass(frozen=True, slots=True)
class Feedback:
    """The analysts' mark on an individual (schema Feedback)."""

    label: str
    by: str
    at: int
    note: str


@dataclass(frozen=True, slots=True)
class ActionCount:
    """One entry of ``Individual.actions``."""

    action: str
    count: int
    observed: int
    expected: float
    p: float
    bits: float
    kind: str


@dataclass(frozen=True, slots=True)
class Individual:
    """The answer of ``GET /api/individual`` (schema Individual)."""

    NESTED: ClassVar[Mapping[str, type[Any]]] = {"actions": ActionCount, "feedback": Feedback}

    org: str
    source: str
    pop: str
    id: str
    muted: bool
    excluded: bool
    feedback: Feedback | None
    count: int
    normalised_count: int
    score: float
    zscore: float
    pscore: float
    rzscore: float
    bits_per_event: float
    learning: bool
    actions: list[ActionCount]
    actions_total: int
    truncated: bool
    recent: float | None = None  # only with BINORMAL_RECENT_WINDOW > 0


@dataclass(frozen=True, slots=True)
class LineError:
    """A rejected event (schema LineError); ``line`` is its 1-based position in the ``send_many`` input."""

    line: int
    error: str
    field: str | None


@dataclass(frozen=True, slots=True)
class SendResult:
    """What ``send_many`` settled: accepted and rejected counts, the rejections, the event ids sent, tries made."""

    accepted: int
    rejected: int
    errors: list[LineError]
    event_ids: list[str]
    tries: int


@dataclass(frozen=True, slots=True)
class EventsReply:
    """One ``POST /events`` answer with a verdict: counts, rejections, and the lines (0-based) to send again."""

    accepted: int
    rejected: int
    errors: list[LineError]  # lines of the request body (1-based)
    resend: list[int] = field(default_factory=list)
    reason: str = ""
    after: float | None = None
