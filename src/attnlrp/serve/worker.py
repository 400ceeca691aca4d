"""The one thread that owns the model: every model call of the explorer runs here, one at a time, in the order
it was accepted, from a bounded queue.

A model (and an ``Explainer`` with its rule context) must not run two passes at once, and a CPU gains nothing from
trying; so the async handlers never touch the model. They :meth:`ModelWorker.run` a function here and await its
result; when ``size`` requests are already waiting, a new one is refused at once (:class:`QueueFull`, answered 429)
instead of piling up memory and latency.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from concurrent.futures import Future
from typing import Any, Callable, TypeVar

from .limits import RequestError

T = TypeVar("T")

#: what the queue holds: a job and the future of its result, or ``None`` to stop the thread
_Job = tuple[Callable[[], Any], "Future[Any]"]


class QueueFull(RequestError):
    """The model's queue holds as many waiting requests as it may (answered 429)."""

    def __init__(self, size: int) -> None:
        super().__init__(f"the model is busy: {size} requests are already waiting; try again when one has finished "
                         "(or start attnlrp serve with a larger --queue N)", status=429)


class ModelWorker:
    """One daemon thread running submitted jobs one after another; at most ``size`` jobs wait.

    The thread starts with the first job and stops with :meth:`close`. A job that raises passes its exception to
    its future; a job whose future was cancelled before it started (the client went away) is skipped.
    """

    def __init__(self, size: int, *, name: str = "attnlrp-model") -> None:
        self.size = size
        self._jobs: queue.Queue[_Job | None] = queue.Queue(maxsize=size)
        self._name = name
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._closed = False

    def submit(self, job: Callable[[], T]) -> "Future[T]":
        """Queue ``job``; its future. :class:`QueueFull` when ``size`` jobs are waiting already."""
        future: Future[T] = Future()
        with self._lock:
            if self._closed:
                raise RequestError("the server is shutting down", status=503)
            if self._thread is None:
                self._thread = threading.Thread(target=self._serve, name=self._name, daemon=True)
                self._thread.start()
            try:
                self._jobs.put_nowait((job, future))
            except queue.Full:
                raise QueueFull(self.size) from None
        return future

    async def run(self, job: Callable[[], T]) -> T:
        """Run ``job`` on the model's thread and await its result (its exception is raised here)."""
        return await asyncio.wrap_future(self.submit(job))

    def close(self, timeout: float | None = None) -> None:
        """Cancel the jobs still waiting, let the running one finish (up to ``timeout`` seconds), stop the
        thread; new jobs are refused from now on."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            thread = self._thread
        while True:
            try:
                item = self._jobs.get_nowait()
            except queue.Empty:
                break
            if item is not None:
                item[1].cancel()
        if thread is not None:
            self._jobs.put(None)
            thread.join(timeout)

    def _serve(self) -> None:
        while True:
            item = self._jobs.get()
            if item is None:
                return
            job, future = item
            if not future.set_running_or_notify_cancel():
                continue
            try:
                result = job()
            except BaseException as error:  # handed to the awaiting handler, which answers for it
                future.set_exception(error)
            else:
                future.set_result(result)
