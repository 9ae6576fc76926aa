"""liblttng-ctl's relay health client, through ctypes: what `lttng_health_query()` sees.

Debian's `liblttng-ctl0` (from lttng-tools) is the client operators' monitoring tools link
with; the tests query pyrelayd (and the C lttng-relayd) with it rather than with our own
reading of the wire format.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import dataclasses
from pathlib import Path


def load_liblttng_ctl() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("lttng-ctl") or "liblttng-ctl.so.0"
    try:
        library = ctypes.CDLL(name)
    except OSError:
        return None
    library.lttng_health_create_relayd.restype = ctypes.c_void_p
    library.lttng_health_create_relayd.argtypes = [ctypes.c_char_p]
    library.lttng_health_query.argtypes = [ctypes.c_void_p]
    library.lttng_health_state.argtypes = [ctypes.c_void_p]
    library.lttng_health_get_nr_threads.argtypes = [ctypes.c_void_p]
    library.lttng_health_get_thread.restype = ctypes.c_void_p
    library.lttng_health_get_thread.argtypes = [ctypes.c_void_p, ctypes.c_uint]
    library.lttng_health_thread_state.argtypes = [ctypes.c_void_p]
    library.lttng_health_thread_name.restype = ctypes.c_char_p
    library.lttng_health_thread_name.argtypes = [ctypes.c_void_p]
    library.lttng_health_destroy.argtypes = [ctypes.c_void_p]
    return library


LIBLTTNG_CTL = load_liblttng_ctl()


@dataclasses.dataclass(frozen=True)
class HealthReport:
    query: int  # lttng_health_query(): 0, or negative when the relay could not be asked
    state: int  # lttng_health_state(): 0 healthy, -1 not
    threads: tuple[tuple[str, int], ...]  # (name, lttng_health_thread_state) per component

    @property
    def unhealthy(self) -> set[str]:
        return {name for name, state in self.threads if state != 0}

    @property
    def bitmask(self) -> int:
        """The reply's bitmask, as liblttng-ctl spread it over the threads."""
        return sum(1 << index for index, (_name, state) in enumerate(self.threads) if state)


def query_relay_health(socket_path: Path) -> HealthReport:
    """One health query, as `lttng_health_create_relayd(path)` + `lttng_health_query()`."""
    library = LIBLTTNG_CTL
    assert library is not None, "liblttng-ctl is not installed"
    health = library.lttng_health_create_relayd(str(socket_path).encode())
    assert health, "lttng_health_create_relayd failed"
    try:
        query = library.lttng_health_query(health)
        threads = []
        for index in range(library.lttng_health_get_nr_threads(health)):
            thread = library.lttng_health_get_thread(health, index)
            threads.append((library.lttng_health_thread_name(thread).decode(),
                            library.lttng_health_thread_state(thread)))
        return HealthReport(query, library.lttng_health_state(health), tuple(threads))
    finally:
        library.lttng_health_destroy(health)
