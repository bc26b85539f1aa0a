"""Overlapping pipeline stages on a 2-core machine: run one stage on a worker thread, a few items ahead."""

import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")

_POLL_S = 0.1


class _Done:
    def __init__(self, error: BaseException | None = None) -> None:
        self.error = error


def map_ahead(fn: Callable[[T], R], items: Iterable[T], depth: int = 4, name: str = "stage") -> Iterator[R]:
    """``fn(item)`` for each item, computed on a worker thread up to ``depth`` results ahead, yielded in order.

    The worker's exception is re-raised in the consumer. Leaving the loop early stops and joins the worker.
    """
    results: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: object) -> bool:
        while not stop.is_set():
            try:
                results.put(item, timeout=_POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        try:
            for item in items:
                if not put(fn(item)):
                    return
        except BaseException as err:  # handed to the consumer, which decides
            put(_Done(err))
            return
        finally:
            close = getattr(items, "close", None)
            if close is not None:  # an upstream map_ahead: stop and join its worker too
                close()
        put(_Done())

    worker = threading.Thread(target=work, name=name)
    worker.start()
    try:
        while True:
            result = results.get()
            if isinstance(result, _Done):
                if result.error is not None:
                    raise result.error
                return
            yield result
    finally:
        stop.set()
        worker.join()
