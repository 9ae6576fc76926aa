"""The one relay launcher of the tests and benchmarks: pyrelayd or the C lttng-relayd, started
on 127.0.0.1, measured from /proc, stopped by pid.

Ports are taken without races where the relay allows it: pyrelayd and the C lttng-relayd
2.16 of the chroot start with every port 0 and `--dynamic-port-allocation` (upstream since
2.14), and report the ports the OS gave them in the port files of a private run directory,
LTTNG_RUNDIR/relayd/{control,data,live}.port. That directory is made in the host's temporary
directory, which the chroot's `Sandbox` binds at the same path, so the host reads the files the
sandboxed relay writes where it wrote them.

The C lttng-relayd 2.13 of the host (Debian 12's) gets ports claimed by
`pyrelayd_testkit.ports` instead (free on 127.0.0.1, and claimed across test processes): it has
no `--dynamic-port-allocation`, so port 0 would mean its default ports 5342/5343/5344, and it
writes no port files.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pyrelayd_testkit.ports import (
    free_tcp_ports,
    listening_ports_of,
    listening_tcp_ports,
    read_port_files,
    release_tcp_ports,
)
from pyrelayd_testkit.processes import (
    cpu_seconds,
    open_fd_count,
    pin_to,
    set_nofile,
    status_kib,
    stop_process,
    wait_until,
)

if TYPE_CHECKING:
    from pyrelayd_testkit.lttng import Sandbox

REPO_ROOT = Path(__file__).resolve().parent.parent
SOURCE_DIR = REPO_ROOT / "src"
#: The hostname the session daemon reports to the relay (`gethostname()` of this machine).
HOSTNAME = socket.gethostname()

RelayKind = Literal["c", "py"]
#: The C relay first: it is the reference every benchmark ratio divides by.
RELAY_KINDS: tuple[RelayKind, ...] = ("c", "py")
RELAY_NAMES: dict[str, str] = {"c": "lttng-relayd", "py": "pyrelayd"}
#: Environment variable selecting the relay under test: "py" (default), "c" or "both".
RELAY_ENV_VAR = "PYRELAYD_TEST_RELAY"


@dataclasses.dataclass
class Relay:
    """A running relay daemon (C `lttng-relayd` or pyrelayd) listening on 127.0.0.1."""

    kind: RelayKind
    process: subprocess.Popen[Any]
    control_port: int
    data_port: int
    live_port: int
    output_dir: Path
    log_path: Path
    argv: list[str]
    #: The sandbox a C relay of a chroot runs in (None: on the host).
    sandbox: Sandbox | None = None
    #: Ports claimed for this relay (`pyrelayd_testkit.ports`), released when it stops.
    claimed_ports: list[int] = dataclasses.field(default_factory=list)
    #: The private run directory (LTTNG_RUNDIR: port files, health socket) of a relay started
    #: with dynamic ports (pyrelayd, lttng-relayd 2.14+), removed at stop.
    run_dir: Path | None = None

    @property
    def pid(self) -> int:
        """Host pid of the relay daemon."""
        inner_pid: Callable[[], int | None] | None = getattr(self.process, "inner_pid", None)
        if inner_pid is not None:
            return inner_pid() or self.process.pid
        return self.process.pid

    @property
    def name(self) -> str:
        return RELAY_NAMES[self.kind]

    def url(self, base_path: str = "", host: str = "127.0.0.1") -> str:
        """The `lttng create --set-url` value that streams to this relay (through `host`)."""
        return f"net://{host}:{self.control_port}:{self.data_port}{base_path}"

    def live_url(self, session_name: str | None = None, hostname: str = HOSTNAME) -> str:
        """The babeltrace2 lttng-live URL of a session (or the listing URL without one)."""
        base = f"net://127.0.0.1:{self.live_port}"
        return base if session_name is None else f"{base}/host/{hostname}/{session_name}"

    def is_running(self) -> bool:
        return self.process.poll() is None

    def check_running(self) -> None:
        """Raise with the end of the log if the relay exited."""
        if not self.is_running():
            raise RuntimeError(
                f"{self.kind} relay exited with status {self.process.returncode}\n"
                f"argv: {' '.join(self.argv)}\n--- log ---\n{self.log_text()}"
            )

    def wait_listening(self, ports: Sequence[int], timeout: float = 20.0) -> None:
        """Wait until the relay listens on `ports`; raise with its log if it exits or hangs."""

        def listening() -> bool:
            self.check_running()
            return set(ports) <= listening_tcp_ports()

        try:
            wait_until(listening, timeout=timeout, what=f"{self.kind} relay to listen")
        except TimeoutError as error:
            raise TimeoutError(
                f"{error} on ports {sorted(ports)}\nargv: {' '.join(self.argv)}\n"
                f"--- log ---\n{self.log_text()}"
            ) from None

    def wait_live_port(self, timeout: float = 20.0) -> None:
        """Wait until the live (viewer) port listens too (`start_relay` may return once the
        control and data ports listen, which is all the session daemon needs)."""
        self.wait_listening([self.live_port], timeout)

    def other_listening_ports(self) -> set[int]:
        """The TCP ports the relay listens on besides control, data and live (the metrics
        port of `--metrics-port tcp://127.0.0.1:0`)."""
        return listening_ports_of(self.pid) - {self.control_port, self.data_port, self.live_port}

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.pid)

    def rss_kib(self) -> int:
        return status_kib(self.pid, "VmRSS")

    def hwm_kib(self) -> int:
        return status_kib(self.pid, "VmHWM")

    def open_fds(self) -> int:
        return open_fd_count(self.pid)

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM, wait, SIGKILL on timeout; returns the exit status."""
        try:
            return stop_process(self.process, timeout)
        finally:
            release_tcp_ports(self.claimed_ports)
            self.claimed_ports = []
            if self.run_dir is not None:
                shutil.rmtree(self.run_dir, ignore_errors=True)
                self.run_dir = None


def relay_command(kind: RelayKind) -> list[str]:
    if kind == "c":
        return ["lttng-relayd"]
    return [sys.executable, "-m", "pyrelayd"]


def relay_environment(kind: RelayKind, home: Path) -> dict[str, str]:
    env = {**os.environ, "LTTNG_HOME": str(home)}
    if kind == "py":
        # Run pyrelayd from the source tree even when it is not installed in the venv.
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(SOURCE_DIR), os.environ.get("PYTHONPATH", "")) if p
        )
    return env


def relay_available(kind: RelayKind) -> str | None:
    """None when the relay can run here, else why not."""
    if kind == "c" and shutil.which("lttng-relayd") is None:
        return "lttng-relayd is not installed"
    return None


def has_dynamic_ports(kind: RelayKind, sandbox: Sandbox | None) -> bool:
    """Whether the relay takes port 0 with `--dynamic-port-allocation` and writes port files:
    pyrelayd, and the C lttng-relayd from 2.14 on (the 2.16 of a chroot's `sandbox`), not the
    host's 2.13 (None `sandbox`)."""
    if kind == "py":
        return True
    return sandbox is not None and sandbox.peers.lttng_version >= (2, 14)


def _process_setup(cpus: frozenset[int] | None, nofile: int | None) -> Callable[[], None] | None:
    """What the relay process does before exec: run on `cpus`, with `nofile` open files."""
    if not cpus and nofile is None:
        return None

    def setup() -> None:
        pin_to(cpus)
        if nofile is not None:
            set_nofile(nofile)

    return setup


def start_relay(
    kind: RelayKind,
    workdir: Path,
    extra_args: Sequence[str] = (),
    *,
    output_dir: Path | None = None,
    timeout: float = 20.0,
    sandbox: Sandbox | None = None,
    cpus: frozenset[int] | None = None,
    nofile: int | None = None,
    log_name: str = "relayd.log",
) -> Relay:
    """Start a relay daemon on fresh ports, writing under `output_dir` (default
    WORKDIR/output), its log in WORKDIR/`log_name`.

    pyrelayd always runs on the host. The C relay is that of the peers in use: with the
    `sandbox` of a chroot (LTTng 2.16), the chroot's lttng-relayd runs in that sandbox.
    `cpus` and `nofile` pin the relay to CPUs and set its open-file limit (benchmarks).
    Ports: see the module's docstring (port files of a private LTTNG_RUNDIR, or claimed ports
    for lttng-relayd 2.13). Returns once the control and data ports listen and every port is
    known; call `Relay.wait_live_port` before using the live port (the live-viewer helpers
    do: the C relay writes live.port between bind and listen).
    """
    if sandbox is not None and (kind == "py" or sandbox.peers.is_host):
        sandbox = None
    workdir.mkdir(parents=True, exist_ok=True)
    output_dir = workdir / "output" if output_dir is None else output_dir
    output_dir.mkdir(parents=True, exist_ok=True)
    home = workdir / "home"
    home.mkdir(exist_ok=True)
    log_path = workdir / log_name
    environment = relay_environment(kind, home)
    run_dir: Path | None = None
    claimed: list[int] = []
    if has_dynamic_ports(kind, sandbox):
        # Short, so that the health socket path in it stays under the 108-byte limit; in the
        # host's temporary directory, which a sandbox sees at the same path.
        run_dir = Path(tempfile.mkdtemp(prefix="pyrelayd-run-"))
        environment["LTTNG_RUNDIR"] = str(run_dir)
        # --dynamic-port-allocation first: lttng-relayd decides whether a port 0 of -C/-D/-L
        # means its default port as it parses that option.
        ports = ["--dynamic-port-allocation", "-C", "tcp://127.0.0.1:0",
                 "-D", "tcp://127.0.0.1:0", "-L", "tcp://127.0.0.1:0"]  # fmt: skip
    else:
        claimed = free_tcp_ports(3)
        control, data, live = claimed
        ports = ["-C", f"tcp://127.0.0.1:{control}", "-D", f"tcp://127.0.0.1:{data}",
                 "-L", f"tcp://127.0.0.1:{live}"]  # fmt: skip
    argv = [*relay_command(kind), *ports, "-o", str(output_dir), *extra_args]
    if os.environ.get("PYRELAYD_TEST_RELAY_VERBOSE"):
        argv.append("-vvv")
    process: subprocess.Popen[Any]
    with open(log_path, "wb") as log:
        if sandbox is not None:
            process = sandbox.popen(argv, env=environment, stdout=log, stderr=subprocess.STDOUT)
        else:
            process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=environment,
                preexec_fn=_process_setup(cpus, nofile),
            )
    control_port, data_port, live_port = claimed or (0, 0, 0)  # else from the port files
    relay = Relay(kind, process, control_port, data_port, live_port, output_dir, log_path, argv,
                  sandbox, claimed, run_dir)  # fmt: skip
    try:
        if run_dir is not None:
            _wait_port_files(relay, run_dir, timeout)
        else:
            relay.wait_listening([relay.control_port, relay.data_port], timeout)
    except BaseException:
        relay.stop()
        raise
    return relay


def _wait_port_files(relay: Relay, run_dir: Path, timeout: float) -> None:
    """Wait for the port files the relay writes once its listeners are bound (control and
    data listen by then; lttng-relayd's live port may not yet); take the ports."""

    def ports() -> dict[str, int] | None:
        relay.check_running()
        return read_port_files(run_dir)

    try:
        found = wait_until(ports, timeout=timeout, what=f"{relay.name} port files")
    except TimeoutError as error:
        raise TimeoutError(
            f"{error}\nargv: {' '.join(relay.argv)}\n--- log ---\n{relay.log_text()}"
        ) from None
    relay.control_port, relay.data_port, relay.live_port = (
        found["control"], found["data"], found["live"])


@contextlib.contextmanager
def running_relay(kind: RelayKind, workdir: Path, extra_args: Sequence[str] = (),
                  **options: Any) -> Iterator[Relay]:
    """`start_relay`, stopped on the way out."""
    relay = start_relay(kind, workdir, extra_args, **options)
    try:
        yield relay
    finally:
        relay.stop()
