"""Values fixed by LTTng that several modules need: one definition each.

`UINT64_MAX` is the "none" value of many 64-bit fields (`-1ULL` in the C sources); the ports
are lttng-relayd's defaults. (The field limits of each wire protocol stay with its codec.)
`TRACE` is the log level of `-vvv`: here rather than in `pyrelayd.logs` (handlers, sockets,
threads) so that sans-IO code (protocol/) can log at it without importing any I/O.
"""

from __future__ import annotations

import logging

UINT64_MAX = 0xFFFF_FFFF_FFFF_FFFF
UINT32_MAX = 0xFFFF_FFFF

# lttng-relayd's default ports (DEFAULT_NETWORK_{CONTROL,DATA,VIEWER}_PORT).
DEFAULT_CONTROL_PORT = 5342
DEFAULT_DATA_PORT = 5343
DEFAULT_LIVE_PORT = 5344

# The level below DEBUG of lttng-relayd's `-vvv` (each live request), named in log lines.
TRACE = 5
logging.addLevelName(TRACE, "TRACE")
