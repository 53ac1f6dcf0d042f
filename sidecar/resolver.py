"""Name resolution that cannot hold the process.

`getaddrinfo` blocks in C and cannot be cancelled. asyncio runs it in the loop's default
executor, whose threads interpreter exit joins: with a resolver that never answers, shutdown
waited for glibc's whole retry schedule (timeout x attempts x search domains, 10 to 30 s). Here
lookups run in a few daemon threads that exit never waits for, a bounded number at a time,
and the caller's wait is bounded separately.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import queue
import socket
import threading
from collections.abc import Callable
from typing import Any, Final, TypeVar

T = TypeVar("T")

# Lookups running at once; a silent resolver holds each thread for its whole retry schedule.
MAX_THREADS: Final = 4
# Lookups waiting for a thread; beyond it a lookup fails at once rather than piling up.
MAX_WAITING: Final = 16


class DaemonExecutor(concurrent.futures.ThreadPoolExecutor):
    """A small thread pool whose threads are daemons: shutdown never waits for them.

    Also the loop's default executor (asyncio resolves names there), so nothing the loop hands
    to a thread can hold the exit. A ThreadPoolExecutor only in name (asyncio's
    set_default_executor insists on one): submit and shutdown are its own.
    """

    def __init__(self, max_threads: int = MAX_THREADS, max_waiting: int = MAX_WAITING) -> None:
        super().__init__(max_workers=max_threads, thread_name_prefix="resolver")
        self._work: queue.Queue[tuple[concurrent.futures.Future[Any], Callable[[], Any]]] = (
            queue.Queue(maxsize=max_waiting)
        )
        self._max_threads = max_threads
        self._daemons: list[threading.Thread] = []
        self._count_lock = threading.Lock()
        self._busy = 0

    @property
    def busy(self) -> int:
        """Calls running now (a stuck lookup stays counted until it returns)."""
        return self._busy

    def submit(
        self, fn: Callable[..., T], /, *args: Any, **kwargs: Any
    ) -> concurrent.futures.Future[T]:
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        try:
            self._work.put_nowait((future, lambda: fn(*args, **kwargs)))
        except queue.Full:
            future.set_exception(socket.gaierror(socket.EAI_AGAIN, "too many name lookups waiting"))
            return future
        with self._count_lock:
            if len(self._daemons) < self._max_threads and self._busy + self._work.qsize() > len(
                self._daemons
            ):
                thread = threading.Thread(target=self._run, name="resolver", daemon=True)
                self._daemons.append(thread)
                thread.start()
        return future

    def _run(self) -> None:
        while True:
            future, call = self._work.get()
            if not future.set_running_or_notify_cancel():
                continue  # its caller gave up before a thread was free
            with self._count_lock:
                self._busy += 1
            try:
                result = call()
            except BaseException as exc:  # noqa: BLE001 -- handed to the caller
                future.set_exception(exc)
            else:
                future.set_result(result)
            finally:
                with self._count_lock:
                    self._busy -= 1

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Never waits: the threads are daemons, a stuck lookup dies with the process."""
        while cancel_futures:
            try:
                future, _ = self._work.get_nowait()
            except queue.Empty:
                break
            future.cancel()


class LookupTimedOut(Exception):
    """The resolver did not answer within the bound."""


async def resolve(
    executor: DaemonExecutor, host: str, port: int, within: float
) -> list[tuple[Any, ...]]:
    """getaddrinfo in `executor`, waiting at most `within` seconds (LookupTimedOut then)."""
    loop = asyncio.get_running_loop()
    lookup = loop.run_in_executor(executor, socket.getaddrinfo, host, port, 0, socket.SOCK_STREAM)
    try:
        async with asyncio.timeout(within):
            return await lookup
    except TimeoutError:
        raise LookupTimedOut(host) from None
