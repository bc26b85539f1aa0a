"""Pipeline stages on worker threads: order, errors and shutdown, including chained stages."""

import threading
import time

import pytest

from realtime.loops.threads import map_ahead


def slow_double(x: int) -> int:
    time.sleep(0.002)
    return 2 * x


def workers() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name in ("first", "second")]


def test_chained_stages_keep_order() -> None:
    chained = map_ahead(slow_double, map_ahead(slow_double, iter(range(50)), name="first"), name="second")
    assert list(chained) == [4 * x for x in range(50)]
    assert workers() == []


def test_leaving_early_stops_and_joins_every_stage() -> None:
    chained = map_ahead(slow_double, map_ahead(slow_double, iter(range(10_000)), name="first"), name="second")
    for index, _ in enumerate(chained):
        if index == 5:
            break
    chained.close()
    assert workers() == []


def test_an_upstream_error_reaches_the_consumer() -> None:
    def fail_on_three(x: int) -> int:
        if x == 3:
            raise ValueError("three")
        return x

    seen = []
    with pytest.raises(ValueError, match="three"):
        for value in map_ahead(slow_double, map_ahead(fail_on_three, iter(range(10)), name="first"), name="second"):
            seen.append(value)
    assert seen == [0, 2, 4]
    assert workers() == []
