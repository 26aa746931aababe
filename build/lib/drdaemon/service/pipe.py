"""The bounded hand-off between two stages of the daemon's pipeline."""

from __future__ import annotations

import collections
import threading
from typing import Generic, TypeVar

T = TypeVar("T")


class Pipe(Generic[T]):
    """A bounded hand-off between two pipeline stages.

    ``get`` returns None once every producer has called :meth:`producer_done` and the pipe is
    empty (a graceful drain), or at once after :meth:`abort` (items left behind stay in
    ``work/`` and are redone at the next start).
    """

    def __init__(self, capacity: int, producers: int) -> None:
        self._items: collections.deque[T] = collections.deque()
        self._capacity = max(1, capacity)
        self._producers = producers
        self._aborted = False
        self._cond = threading.Condition()

    def __len__(self) -> int:
        return len(self._items)

    def wait_for_room(self, timeout: float) -> bool:
        """Block until an item would fit (True) or ``timeout`` passes or the pipe is aborted (False)."""
        with self._cond:
            self._cond.wait_for(lambda: len(self._items) < self._capacity or self._aborted, timeout)
            return len(self._items) < self._capacity and not self._aborted

    def put(self, item: T) -> bool:
        with self._cond:
            while len(self._items) >= self._capacity and not self._aborted:
                self._cond.wait()
            if self._aborted:
                return False
            self._items.append(item)
            self._cond.notify_all()
            return True

    def get(self) -> T | None:
        with self._cond:
            while not self._items and self._producers > 0 and not self._aborted:
                self._cond.wait()
            if self._aborted or not self._items:
                return None
            item = self._items.popleft()
            self._cond.notify_all()
            return item

    def producer_done(self) -> None:
        with self._cond:
            self._producers -= 1
            self._cond.notify_all()

    def abort(self) -> None:
        with self._cond:
            self._aborted = True
            self._cond.notify_all()


__all__ = ["Pipe"]
