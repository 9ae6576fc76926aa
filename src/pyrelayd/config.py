"""The relay daemon's settings, as resolved from config files, environment and command line.

`pyrelayd.options` builds one `RelaydOptions`; the server only ever reads it.
"""

from __future__ import annotations

import dataclasses
import enum
from pathlib import Path

from pyrelayd.constants import DEFAULT_CONTROL_PORT as DEFAULT_CONTROL_PORT
from pyrelayd.constants import DEFAULT_DATA_PORT as DEFAULT_DATA_PORT
from pyrelayd.constants import DEFAULT_LIVE_PORT as DEFAULT_LIVE_PORT

DEFAULT_METRICS_PORT = 9464  # --metrics-port without a port
DEFAULT_NETWORK_SOCKET_TIMEOUT_MS = 0  # 0: no timeout (lttng's default is to wait forever)
# How long a peer may keep the relay waiting in the middle of a message (or before its first
# one) when LTTNG_NETWORK_SOCKET_TIMEOUT does not say: lttng's default TCP timeout.
DEFAULT_STALL_TIMEOUT_S = 180.0
# The health check's delta: a component that made no progress for this long is unhealthy.
DEFAULT_HEALTH_CHECK_DELTA_S = 20.0
# --fd-pool-size bounds, as lttng-relayd: at least this many, and the relay keeps
# RELAYD_FD_POOL_SIZE_RESERVE of the pool for transient uses (sockets being accepted, ...).
RELAYD_MIN_FD_POOL_SIZE = 100
RELAYD_FD_POOL_SIZE_RESERVE = 10


class GroupOutputBy(enum.Enum):
    HOST = "host"
    SESSION = "session"


@dataclasses.dataclass(frozen=True)
class ListenAddress:
    """One TCP listener: the address family, the host to bind and the port (0: the OS picks)."""

    host: str
    port: int
    ipv6: bool = False


@dataclasses.dataclass(frozen=True)
class TcpKeepAlive:
    """LTTNG_RELAYD_TCP_KEEP_ALIVE* settings; None leaves the system default."""

    enabled: bool = False
    idle_time_s: int | None = None
    probe_interval_s: int | None = None
    max_probe_count: int | None = None
    abort_threshold_s: int | None = None


@dataclasses.dataclass(frozen=True)
class RelaydOptions:
    control: ListenAddress = ListenAddress("0.0.0.0", DEFAULT_CONTROL_PORT)
    data: ListenAddress = ListenAddress("0.0.0.0", DEFAULT_DATA_PORT)
    live: ListenAddress = ListenAddress("localhost", DEFAULT_LIVE_PORT)
    output_root: Path = Path("lttng-traces")  # absolute once resolved by the CLI
    group_output_by: GroupOutputBy = GroupOutputBy.HOST
    allow_clear: bool = True
    daemonize: bool = False
    background: bool = False
    tracing_group: str = "tracing"
    working_directory: Path | None = None
    verbosity: int = 0
    # --fd-pool-size as given (checked: >= RELAYD_MIN_FD_POOL_SIZE and <= the soft
    # RLIMIT_NOFILE); None: the soft RLIMIT_NOFILE.
    fd_pool_size: int | None = None
    dynamic_port_allocation: bool = False
    pid_file: Path | None = None
    sig_parent: bool = False
    network_socket_timeout_ms: int = DEFAULT_NETWORK_SOCKET_TIMEOUT_MS
    tcp_keep_alive: TcpKeepAlive = TcpKeepAlive()
    # The LTTng run directory ($LTTNG_RUNDIR, /var/run/lttng for root, else
    # $LTTNG_HOME/.lttng); port files (dynamic port allocation) go to run_dir/relayd/.
    run_dir: Path = Path("/var/run/lttng")
    # --metrics-port: HTTP /metrics, /status and /healthz; None: off.
    metrics: ListenAddress | None = None
    # The health socket ($LTTNG_RELAYD_HEALTH); None: run_dir/relayd/health-PID.
    health_socket: Path | None = None
    health_check_delta_s: float = DEFAULT_HEALTH_CHECK_DELTA_S
    # --log-file: log there (reopened on SIGHUP) instead of stderr or, as a daemon, syslog.
    log_file: Path | None = None
    # --workers: worker processes sharing the traced hosts (1: one process, the default).
    workers: int = 1
