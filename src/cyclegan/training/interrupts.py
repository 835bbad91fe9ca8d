"""Ctrl-C and SIGTERM during training: the first asks the run to stop after the current step and save; a
second aborts at once, except while a checkpoint is being committed, which it lets finish first."""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from tqdm import tqdm

SIGNALS = (signal.SIGINT, signal.SIGTERM)
T = TypeVar("T")


class Interrupts:
    """Counts stop requests; ``protect()`` marks a section a second request must not cut in two."""

    def __init__(self) -> None:
        self.count = 0
        self._protected = False
        self._pending = False

    @property
    def requested(self) -> bool:
        return self.count > 0

    def handle(self, signum: int, frame: Any) -> None:
        self.count += 1
        if self.count == 1:
            tqdm.write(
                "Stopping after this step and saving a checkpoint (Ctrl-C again to abort)...", file=sys.stderr
            )
        elif self._protected:
            self._pending = True
        else:
            raise KeyboardInterrupt

    def until_stopped(self, items: Iterable[T]) -> Iterator[T]:
        """``items`` to their end, or until fetching the next fails once a stop was requested: the signal
        that asked for the stop may have killed a loader worker before it could ignore it, and the run must
        still save and stop as asked."""
        iterator = iter(items)
        while True:
            try:
                item = next(iterator)
            except StopIteration:
                return
            except Exception:
                if self.requested:
                    return
                raise
            yield item

    @contextmanager
    def protect(self) -> Iterator[None]:
        self._protected = True
        try:
            yield
        finally:
            self._protected = False
            if self._pending:
                self._pending = False
                raise KeyboardInterrupt


@contextmanager
def catch_interrupts() -> Iterator[Interrupts]:
    """Install the handlers for the duration of a run (only the main thread can; elsewhere they are inert)."""
    interrupts = Interrupts()
    if threading.current_thread() is not threading.main_thread():
        yield interrupts
        return
    previous = {s: signal.signal(s, interrupts.handle) for s in SIGNALS}
    try:
        yield interrupts
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
