"""A minimal reading of PromQL and of the Prometheus text format, for tests/test_prometheus.py.

Not a PromQL parser (``promtool check rules`` parses, when a promtool is at hand): it finds
the metric selectors of an expression (names with their label matchers) and its grouping
labels (``by``/``without``/``on``/``ignoring``), which is what checking an expression against
a scrape needs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

# Words of PromQL that look like metric names: operators, modifiers, grouping keywords.
KEYWORDS = frozenset(
    {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset", "atan2"}
)
# Labels Prometheus adds at scrape (target labels), absent from the exposition itself.
TARGET_LABELS = frozenset({"job", "instance"})

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_RANGE = re.compile(r"\[[^\]]*\]")
_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
_MATCHERS = re.compile(r"\{([^}]*)\}")
_MATCHER_LABEL = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)\s*\"")
_IDENT = re.compile(r"(?<![\w.:$])([A-Za-z_:][A-Za-z0-9_:]*)(\s*\{[0-9]+\})?(\s*\()?")
_NUMBER = re.compile(r"^(?:[0-9].*|Inf|NaN|inf|nan)$")


@dataclass(frozen=True)
class Selector:
    """One metric selector of an expression: its metric name and the labels it matches on."""

    metric: str
    labels: frozenset[str]


def selectors(expr: str) -> list[Selector]:
    """The metric selectors of ``expr`` (function names, keywords and numbers left out)."""
    # Label matchers hold strings: read their label names first and put a numbered placeholder
    # in their place, then blank every other string, so a quoted value ("/discrete", "$job")
    # is never taken for a name.
    matchers: list[frozenset[str]] = []

    def hold(m: re.Match[str]) -> str:
        matchers.append(frozenset(_MATCHER_LABEL.findall(m.group(1))))
        return "{" + str(len(matchers) - 1) + "}"

    text = _MATCHERS.sub(hold, expr)
    text = _STRING.sub('""', text)
    text = _RANGE.sub("", text)
    text = _GROUPING.sub(" ", text)
    found: list[Selector] = []
    for m in _IDENT.finditer(text):
        name, matcher, call = m.group(1), m.group(2), m.group(3)
        if call and not matcher:
            continue  # a function: rate(, sum(, histogram_quantile(
        if name in KEYWORDS or _NUMBER.match(name):
            continue
        labels = matchers[int(matcher.strip()[1:-1])] if matcher else frozenset()
        found.append(Selector(name, labels))
    return found


def grouping_labels(expr: str) -> set[str]:
    """Labels named by ``by (...)``, ``without (...)``, ``on (...)``, ``ignoring (...)``, ``group_*``."""
    out: set[str] = set()
    for _, inside in _GROUPING.findall(_STRING.sub('""', expr)):
        out.update(part.strip() for part in inside.split(",") if part.strip())
    return out


def exported(text: str) -> dict[str, set[str] | None]:
    """Series names of a ``/metrics`` text -> the label names seen on them.

    A family declared without samples (a labelled metric no label set of which was used yet)
    still counts as exported: its ``# TYPE`` line is there, its labels are unknown (``None``).
    """
    names: dict[str, set[str] | None] = {}
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "summary": ("_sum", "_count")}
    for family in text_string_to_metric_families(text):
        if not family.samples:
            for suffix in ("", *suffixes.get(family.type, ())):
                names.setdefault(family.name + suffix, None)
        for sample in family.samples:
            labels = names.get(sample.name) or set()
            names[sample.name] = labels | set(sample.labels)
    return names
