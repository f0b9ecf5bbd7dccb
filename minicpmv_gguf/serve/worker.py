"""One thread that runs the engine's jobs in order, fed by a bounded queue; events go back to asyncio.

llama.cpp calls block, so they run on this thread, never on the event loop. A request that is cancelled
(its client went away) before its turn is skipped; during its turn the engine checks the flag per token.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from ..errors import ToolkitError
from .errors import unavailable

log = logging.getLogger(__name__)
_END = object()
_WAKE = object()  # a queue item that only wakes the worker for its spare-time task


@dataclass(eq=False)
class Ticket:
    """A submitted job: `events` receives its events, then an exception or the end marker."""

    run: Callable[[threading.Event], Iterator]
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    cancel: threading.Event = field(default_factory=threading.Event)

    def _send(self, item) -> None:
        self.loop.call_soon_threadsafe(self.events.put_nowait, item)

    async def next(self):
        """The next event; raises what the job raised; None at the end."""
        item = await self.events.get()
        if item is _END:
            return None
        if isinstance(item, BaseException):
            raise item
        return item


class Worker:
    """Runs tickets one at a time; at most `max_queued` wait, more are refused with 503."""

    def __init__(self, max_queued: int) -> None:
        self._queue: queue.Queue = queue.Queue(maxsize=max_queued)  # Tickets, _WAKE, or None to stop
        self._idle: Callable[[], object] | None = None  # the latest spare-time task; an older one is dropped
        self._thread = threading.Thread(target=self._loop, name="minicpmv-gguf-engine", daemon=True)
        self._thread.start()
        self.busy = False

    @property
    def waiting(self) -> int:
        """Requests waiting for the engine."""
        with self._queue.mutex:
            return sum(isinstance(item, Ticket) for item in self._queue.queue)

    def submit(self, run: Callable[[threading.Event], Iterator]) -> Ticket:
        ticket = Ticket(run, asyncio.get_running_loop())
        try:
            self._queue.put_nowait(ticket)
        except queue.Full:
            raise unavailable("the server is busy: too many requests are waiting; retry shortly") from None
        return ticket

    def has_waiting(self) -> bool:
        """Whether a request waits for the engine (spare-time work should stop)."""
        return self.waiting > 0

    def when_idle(self, task: Callable[[], object]) -> None:
        """Run `task` once nothing is waiting (it replaces an earlier one not yet run); requests come first."""
        self._idle = task
        try:
            self._queue.put_nowait(_WAKE)  # the worker may be asleep in get(): wake it to run the task
        except queue.Full:
            pass  # requests are waiting: they come first anyway

    def stop(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=30)

    def _loop(self) -> None:
        while (ticket := self._next()) is not None:
            if ticket.cancel.is_set():
                ticket._send(_END)
                continue
            self.busy = True
            try:
                for event in ticket.run(ticket.cancel):
                    ticket._send(event)
                ticket._send(_END)
            except ToolkitError as err:  # the request's fault: the app answers with a 4xx
                ticket._send(err)
            except Exception as err:  # noqa: BLE001 - the thread must outlive one failed request; the app says 500
                log.exception("request failed")
                ticket._send(err)
            finally:
                self.busy = False

    def _next(self) -> Ticket | None:
        """The next ticket; while none is waiting, the spare-time task runs first."""
        while True:
            try:
                item = self._queue.get(timeout=0.01) if self._idle else self._queue.get()
                if item is not _WAKE:
                    return item
            except queue.Empty:
                task, self._idle = self._idle, None
                if task is not None:
                    try:
                        task()
                    except Exception:  # noqa: BLE001 - a spare-time task must not end the worker
                        log.exception("spare-time task failed")
