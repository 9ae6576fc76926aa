"""Load generators in child processes (producers, viewers), driven by messages on a pipe.

A child sends `(kind, value)` tuples: "ready", "done", "closed", or "error" with a message,
which `ChildProcess.expect` turns into an exception in the benchmark.
"""

from __future__ import annotations

import multiprocessing
import time
from collections.abc import Callable
from typing import Any

_CONTEXT = multiprocessing.get_context("fork")


class ChildError(RuntimeError):
    pass


class ChildProcess:
    def __init__(self, target: Callable[..., None], *args: object, name: str) -> None:
        self.name = name
        self.conn, child_end = _CONTEXT.Pipe()
        self.process = _CONTEXT.Process(target=target, args=(child_end, *args), name=name,
                                        daemon=True)
        self.process.start()
        child_end.close()

    def expect(self, kind: str, timeout: float = 600.0,
               tick: Callable[[], None] | None = None, interval: float = 0.05) -> Any:
        """The next message, which must be `kind`; `tick` is called every `interval` s while
        waiting for it (to sample the relay)."""
        deadline = time.monotonic() + timeout
        while not self.conn.poll(interval if tick else timeout):
            if time.monotonic() > deadline:
                raise ChildError(f"{self.name}: no '{kind}' after {timeout} s")
            if tick is not None:
                tick()
        try:
            got, value = self.conn.recv()
        except EOFError:
            raise ChildError(f"{self.name} exited (status {self.process.exitcode})") from None
        if got == "error":
            raise ChildError(f"{self.name}: {value}")
        if got != kind:
            raise ChildError(f"{self.name}: got '{got}', expected '{kind}'")
        return value

    def send(self, message: object) -> None:
        self.conn.send(message)

    def stop(self, timeout: float = 10.0) -> None:
        """Wait for the child to end; terminate it (by pid) if it does not."""
        self.process.join(timeout)
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(5)
        self.conn.close()
