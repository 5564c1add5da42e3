"""common.runtime: the services' GC tuning."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from binormal.common.runtime import GC_THRESHOLDS, tune_gc


@pytest.fixture
def restore_gc() -> Iterator[None]:
    before = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*before)


@pytest.mark.timeout(30)
def test_tune_gc_freezes_startup_objects_and_raises_thresholds(restore_gc: None) -> None:
    gc.unfreeze()
    assert gc.get_freeze_count() == 0
    tune_gc()
    assert gc.get_threshold() == GC_THRESHOLDS
    # the objects alive now (this module, pytest, everything imported) are frozen
    assert gc.get_freeze_count() > 10_000
    assert GC_THRESHOLDS[0] > 700  # rarer young collections than CPython's default


@pytest.mark.timeout(30)
def test_cycles_are_still_collected_after_tuning(restore_gc: None) -> None:
    tune_gc()

    class Node:
        other: object

    a, b = Node(), Node()
    a.other, b.other = b, a
    ref = weakref.ref(a)
    del a, b
    assert ref() is not None  # a cycle: reference counting alone cannot free it
    gc.collect()
    assert ref() is None
