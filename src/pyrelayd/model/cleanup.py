"""Close and release paths that run to their end.

Closing a stream or releasing a trace chunk or a session is a list of steps (write what is
deferred, close files, drop references, unregister, archive). A step that fails must not stop
the ones after it: `attempt` runs one step, logs a failure with what was being closed, counts
a file-system failure as a disk error, and lets the caller go on.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from pyrelayd.model.counters import ErrorKind, RelayCounters

log = logging.getLogger(__name__)


def attempt(owner: object, step: str, action: Callable[[], object],
            counters: RelayCounters | None) -> BaseException | None:
    """Run `action`; on failure log "`owner`: `step` failed", count it, return the error."""
    try:
        action()
    except OSError as error:
        log.error("%s: %s failed: %s", owner, step, error)
        if counters is not None:
            counters.count(ErrorKind.DISK)
        return error
    except Exception as error:
        log.exception("%s: %s failed", owner, step)
        return error
    return None
