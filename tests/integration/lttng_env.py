"""Helpers that drive real LTTng 2.13 peers against a relay daemon (the C one or pyrelayd).

Isolation: the root session daemon owns `/run/lttng` (sockets, `agent.port`) and the UST wait
shared memory in `/dev/shm`, which would collide with any other root session daemon on the
machine. `SessionDaemon.start` therefore runs it in a private mount namespace with fresh tmpfs
mounts on `/run` and `/dev/shm`; every `lttng` command and every traced application is then run
inside that namespace with `nsenter --target PID --mount`. The network namespace is shared, so
the relay daemon runs on the host side and is reached on 127.0.0.1.

Everything here is synchronous and talks to processes by pid; every process started is
stopped by pid (SIGTERM, then SIGKILL after a timeout).
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import hashlib
import json
import os
import random
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Literal, TypeVar

INTEGRATION_DIR = Path(__file__).resolve().parent
APPS_DIR = INTEGRATION_DIR / "apps"
REPO_ROOT = INTEGRATION_DIR.parent.parent
SOURCE_DIR = REPO_ROOT / "src"

#: The hostname the session daemon reports to the relay (`gethostname()` of this machine).
HOSTNAME = socket.gethostname()

#: Python interpreter that has `bt2` and `lttngust` (Debian packages for the system Python).
SYSTEM_PYTHON = "/usr/bin/python3"

#: Tracepoint emitted by the C test application (apps/tp.tp).
C_APP_EVENT = "pyrelayd_test:event"
#: Logger used by the Python-agent test application (apps/agent_app.py).
AGENT_LOGGER = "pyrelayd.test"
AGENT_EVENT = "lttng_python:event"

RelayKind = Literal["c", "py"]
RELAY_KINDS: tuple[RelayKind, ...] = ("c", "py")
#: Environment variable selecting the relay under test: "py" (default), "c" or "both".
RELAY_ENV_VAR = "PYRELAYD_TEST_RELAY"

DEFAULT_COMMAND_TIMEOUT = 60.0

# `<session>-YYYYmmdd-HHMMSS` as produced by the relay for a session directory.
SESSION_DATETIME_RE = r"\d{8}-\d{6}"
# Trace chunk names: `YYYYmmddTHHMMSS+ZZZZ[-YYYYmmddTHHMMSS+ZZZZ]-ID`.
CHUNK_TIME_RE = r"\d{8}T\d{6}[+-]\d{4}"


class CommandError(RuntimeError):
    """A command exited with a non-zero status; the message carries its output."""

    def __init__(self, argv: Sequence[str], result: subprocess.CompletedProcess[str]) -> None:
        self.argv = list(argv)
        self.returncode = result.returncode
        self.stdout = result.stdout
        self.stderr = result.stderr
        super().__init__(
            f"command failed with status {result.returncode}: {' '.join(argv)}\n"
            f"--- stdout ---\n{result.stdout}--- stderr ---\n{result.stderr}"
        )


T = TypeVar("T")


def wait_until(
    predicate: Callable[[], T | bool | None],
    *,
    timeout: float,
    interval: float = 0.02,
    what: str = "condition",
) -> T:
    """Poll `predicate` until it returns a truthy value, which is returned; raise on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value  # type: ignore[return-value]
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout:.1f} s waiting for {what}")
        time.sleep(interval)


def run_command(
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    timeout: float = DEFAULT_COMMAND_TIMEOUT,
    check: bool = True,
) -> subprocess.CompletedProcess[str]:
    """Run a command to completion, capturing its output; raise `CommandError` on failure."""
    process = subprocess.Popen(
        list(argv),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(env) if env is not None else None,
    )
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        stop_process(process, timeout=2.0)
        stdout, stderr = process.communicate()
        raise CommandError(
            argv,
            subprocess.CompletedProcess(
                argv, -1, stdout, f"{stderr}\n[timed out after {timeout} s]"
            ),
        ) from None
    result = subprocess.CompletedProcess(list(argv), process.returncode, stdout, stderr)
    if check and result.returncode != 0:
        raise CommandError(argv, result)
    return result


def stop_process(process: subprocess.Popen[bytes] | subprocess.Popen[str], timeout: float) -> int:
    """SIGTERM a process we started, then SIGKILL it after `timeout`; return its status."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            process.wait(timeout=10.0)
    return process.returncode


def descendant_pids(pid: int) -> list[int]:
    """Pids of all live descendants of `pid` (children first, depth first)."""
    found: list[int] = []
    try:
        task_dirs = list(Path(f"/proc/{pid}/task").iterdir())
    except FileNotFoundError:
        return found
    for task in task_dirs:
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            for child in (task / "children").read_text().split():
                found.append(int(child))
                found.extend(descendant_pids(int(child)))
    return found


def process_start_time(pid: int) -> int | None:
    """Start time of a process in clock ticks since boot (tells a pid's reuse apart)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # Fields after the parenthesised command name; starttime is field 22 of the line.
    return int(stat.rsplit(")", 1)[1].split()[19])


def kill_if_same_process(pid: int, start_time: int | None) -> None:
    """SIGKILL `pid` unless it exited meanwhile (and its pid went to another process)."""
    if start_time is not None and process_start_time(pid) == start_time:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


# --------------------------------------------------------------------------------------------
# TCP ports


_PORT_REGISTRY = Path(tempfile.gettempdir()) / "pyrelayd-test-ports"
# Below the Linux ephemeral range (32768-60999), so outgoing connections never take them.
_PORT_RANGE = (20000, 32000)
_reserved_here: set[int] = set()


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _reserve(port: int) -> bool:
    """Claim `port` for this process across pytest-xdist workers (an O_EXCL file per port)."""
    _PORT_REGISTRY.mkdir(exist_ok=True)
    marker = _PORT_REGISTRY / str(port)
    for _ in range(2):
        try:
            fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                owner = int(marker.read_text() or "0")
            except (FileNotFoundError, ValueError):
                owner = 0
            if owner and _pid_alive(owner):
                return False
            with contextlib.suppress(FileNotFoundError):
                marker.unlink()  # stale claim of a dead test process
            continue
        with os.fdopen(fd, "w") as file:
            file.write(str(os.getpid()))
        _reserved_here.add(port)
        return True
    return False


def free_tcp_ports(count: int) -> list[int]:
    """`count` distinct TCP ports, free on 127.0.0.1 and claimed by this process.

    Ports are claimed until `release_tcp_ports` (or until this process exits: claims of dead
    processes are reclaimed), so concurrent pytest-xdist workers never get the same one.
    """
    ports: list[int] = []
    rng = random.Random()
    for _ in range(count):
        for _attempt in range(1000):
            port = rng.randrange(*_PORT_RANGE)
            if port in _reserved_here or not _port_is_free(port):
                continue
            if _reserve(port):
                ports.append(port)
                break
        else:
            raise RuntimeError("no free TCP port found")
    return ports


def release_tcp_ports(ports: Sequence[int]) -> None:
    for port in ports:
        if port in _reserved_here:
            _reserved_here.discard(port)
            with contextlib.suppress(FileNotFoundError):
                (_PORT_REGISTRY / str(port)).unlink()


@atexit.register
def _release_all_tcp_ports() -> None:
    release_tcp_ports(sorted(_reserved_here))


def listening_tcp_ports() -> set[int]:
    """Ports in LISTEN state on this network namespace (from /proc/net/tcp{,6})."""
    ports: set[int] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(FileNotFoundError), open(table) as file:
            next(file)
            for line in file:
                fields = line.split()
                if fields[3] == "0A":  # TCP_LISTEN
                    ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


# --------------------------------------------------------------------------------------------
# Session daemon in a private mount namespace

# Fresh tmpfs on /run (holds /run/lttng == /var/run/lttng) and /dev/shm, then the daemon itself,
# exec'ed so the pid we hold is the session daemon's.
_NAMESPACE_SCRIPT = (
    "set -e; "
    "mount -t tmpfs -o mode=0755 pyrelayd-run /run; "
    "mkdir -p /run/lttng; "
    "mount -t tmpfs -o mode=1777 pyrelayd-shm /dev/shm; "
    'exec "$@"'
)


@dataclasses.dataclass
class SessionDaemon:
    """A root `lttng-sessiond --no-kernel` alone in its own mount namespace."""

    process: subprocess.Popen[bytes]
    workdir: Path
    home: Path
    log_path: Path
    agent_port: int

    @property
    def pid(self) -> int:
        return self.process.pid

    @classmethod
    def start(cls, workdir: Path, *, timeout: float = 30.0) -> SessionDaemon:
        home = workdir / "home"
        home.mkdir(parents=True, exist_ok=True)
        log_path = workdir / "lttng-sessiond.log"
        (agent_port,) = free_tcp_ports(1)
        argv = [
            "unshare", "--mount", "--propagation", "private",
            "sh", "-c", _NAMESPACE_SCRIPT, "sh",
            "lttng-sessiond", "--no-kernel", f"--agent-tcp-port={agent_port}",
        ]  # fmt: skip
        env = {**os.environ, "LTTNG_HOME": str(home)}
        with open(log_path, "wb") as log:
            process = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env
            )
        daemon = cls(process, workdir, home, log_path, agent_port)
        try:
            daemon._wait_ready(timeout)
            daemon._skip_low_session_ids()
        except BaseException:
            daemon.stop()
            raise
        return daemon

    def _skip_low_session_ids(self, count: int = 16) -> None:
        """Use up the session daemon's first session ids with throw-away local sessions.

        lttng-relayd 2.13 answers TRACE_CHUNK_EXISTS by looking the chunk up with its own
        relay session id where the session daemon's session id is due. When a relay session
        id (1, 2, ... for each new relay) equals the session daemon id of another session
        still streaming to that relay, `lttng destroy` then waits until that other session is
        gone, forever if the test destroys them in that order. Tests create few relay
        sessions per relay, so session daemon ids >= `count` never collide.
        """
        for number in range(count):
            self.lttng("create", f"pyrelayd-id-filler-{number}", "--no-output")
        self.lttng("destroy", "--all")

    def _wait_ready(self, timeout: float) -> None:
        root = Path(f"/proc/{self.pid}/root")

        def ready() -> bool:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"lttng-sessiond exited with status {self.process.returncode}:\n"
                    + self.log_tail()
                )
            sockets = ("run/lttng/client-lttng-sessiond", "run/lttng/lttng-ust-sock-8")
            if not all((root / name).exists() for name in sockets):
                return False
            if not (root / "dev/shm/lttng-ust-wait-8").exists():
                return False
            return self.lttng("list", check=False, timeout=10).returncode == 0

        wait_until(ready, timeout=timeout, interval=0.05, what="lttng-sessiond to accept commands")

    def is_running(self) -> bool:
        return self.process.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""

    def environment(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        env = {**os.environ, "LTTNG_HOME": str(self.home)}
        if extra:
            env.update(extra)
        return env

    def namespace_argv(self, argv: Sequence[str]) -> list[str]:
        """`argv` wrapped to run inside the session daemon's mount namespace."""
        return ["nsenter", f"--target={self.pid}", "--mount", "--", *argv]

    def run(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        timeout: float = DEFAULT_COMMAND_TIMEOUT,
        check: bool = True,
    ) -> subprocess.CompletedProcess[str]:
        """Run a command inside the namespace (absolute paths only: the cwd becomes `/`)."""
        return run_command(
            self.namespace_argv(argv), env=self.environment(env), timeout=timeout, check=check
        )

    def popen(
        self, argv: Sequence[str], *, env: Mapping[str, str] | None = None
    ) -> subprocess.Popen[str]:
        """Start a command inside the namespace without waiting (the caller stops it by pid)."""
        return subprocess.Popen(
            self.namespace_argv(argv),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=self.environment(env),
        )

    def lttng(
        self, *args: str, check: bool = True, timeout: float = DEFAULT_COMMAND_TIMEOUT
    ) -> subprocess.CompletedProcess[str]:
        """`lttng ARGS...` against this session daemon (never auto-spawns another one)."""
        return self.run(["lttng", "--no-sessiond", *args], check=check, timeout=timeout)

    def session_names(self) -> list[str]:
        out = self.lttng("--mi=xml", "list").stdout
        return re.findall(r"<session>\s*<name>([^<]*)</name>", out)

    def stop(self, timeout: float = 10.0) -> None:
        # The daemon stops its consumer daemons itself on SIGTERM; after a SIGKILL nobody
        # would, so remember them (pid and start time) and kill the leftovers by pid.
        children = [(pid, process_start_time(pid)) for pid in descendant_pids(self.pid)]
        stop_process(self.process, timeout)
        for pid, start_time in reversed(children):
            kill_if_same_process(pid, start_time)
        release_tcp_ports([self.agent_port])


# --------------------------------------------------------------------------------------------
# Relay daemons


@dataclasses.dataclass
class Relay:
    """A running relay daemon (C `lttng-relayd` or pyrelayd) listening on 127.0.0.1."""

    kind: RelayKind
    process: subprocess.Popen[bytes]
    control_port: int
    data_port: int
    live_port: int
    output_dir: Path
    log_path: Path
    argv: list[str]

    @property
    def pid(self) -> int:
        return self.process.pid

    def url(self, base_path: str = "") -> str:
        """The `lttng create --set-url` value that streams to this relay."""
        return f"net://127.0.0.1:{self.control_port}:{self.data_port}{base_path}"

    def live_url(self, session_name: str | None = None, hostname: str = HOSTNAME) -> str:
        """The babeltrace2 lttng-live URL of a session (or the listing URL without one)."""
        base = f"net://127.0.0.1:{self.live_port}"
        return base if session_name is None else f"{base}/host/{hostname}/{session_name}"

    def is_running(self) -> bool:
        return self.process.poll() is None

    def wait_listening(self, ports: Sequence[int], timeout: float = 20.0) -> None:
        """Wait until the relay listens on `ports`; raise with its log if it exits or hangs."""

        def listening() -> bool:
            if not self.is_running():
                raise RuntimeError(
                    f"{self.kind} relay exited with status {self.process.returncode}\n"
                    f"argv: {' '.join(self.argv)}\n--- log ---\n{self.log_text()}"
                )
            return set(ports) <= listening_tcp_ports()

        try:
            wait_until(listening, timeout=timeout, what=f"{self.kind} relay to listen")
        except TimeoutError as error:
            raise TimeoutError(
                f"{error} on ports {sorted(ports)}\nargv: {' '.join(self.argv)}\n"
                f"--- log ---\n{self.log_text()}"
            ) from None

    def wait_live_port(self, timeout: float = 20.0) -> None:
        """Wait until the live (viewer) port listens too (`start_relay` waits only for the
        control and data ports, which is all the session daemon needs)."""
        self.wait_listening([self.live_port], timeout)

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM, wait, SIGKILL on timeout; returns the exit status."""
        status = stop_process(self.process, timeout)
        release_tcp_ports([self.control_port, self.data_port, self.live_port])
        return status


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


def start_relay(
    kind: RelayKind,
    workdir: Path,
    extra_args: Sequence[str] = (),
    *,
    timeout: float = 20.0,
) -> Relay:
    """Start a relay daemon with fresh ports and output directory.

    Returns once the control and data ports listen; call `Relay.wait_live_port` before using
    the live port (the live-viewer helpers do).
    """
    workdir.mkdir(parents=True, exist_ok=True)
    output_dir = workdir / "output"
    output_dir.mkdir(exist_ok=True)
    home = workdir / "home"
    home.mkdir(exist_ok=True)
    log_path = workdir / "relayd.log"
    control_port, data_port, live_port = free_tcp_ports(3)
    argv = [
        *relay_command(kind),
        "-C", f"tcp://127.0.0.1:{control_port}",
        "-D", f"tcp://127.0.0.1:{data_port}",
        "-L", f"tcp://127.0.0.1:{live_port}",
        "-o", str(output_dir),
        *extra_args,
    ]  # fmt: skip
    if os.environ.get("PYRELAYD_TEST_RELAY_VERBOSE"):
        argv.append("-vvv")
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=relay_environment(kind, home),
        )
    relay = Relay(kind, process, control_port, data_port, live_port, output_dir, log_path, argv)
    try:
        relay.wait_listening([control_port, data_port], timeout)
    except BaseException:
        relay.stop()
        raise
    return relay


# --------------------------------------------------------------------------------------------
# Traced applications


def build_c_app(build_dir: Path) -> Path:
    """Build apps/app.c with its tracepoint provider apps/tp.tp; return the executable."""
    build_dir.mkdir(parents=True, exist_ok=True)
    for name in ("tp.tp", "app.c"):
        shutil.copy2(APPS_DIR / name, build_dir / name)
    # lttng-gen-tp writes tp.h and tp.c next to its input (run from the build directory).
    run_command(["sh", "-c", f"cd '{build_dir}' && lttng-gen-tp -o tp.h -o tp.c tp.tp"])
    executable = build_dir / "app"
    run_command(
        [
            "gcc", "-O1", "-Wall", "-I", str(build_dir),
            "-o", str(executable), str(build_dir / "app.c"), str(build_dir / "tp.c"),
            "-llttng-ust", "-ldl",
        ]
    )  # fmt: skip
    return executable


#: Keeps an application's constructor waiting until the session daemon answered its
#: registration, so no event is lost to a late registration (bounded, in milliseconds).
APP_ENVIRONMENT = {"LTTNG_UST_REGISTER_TIMEOUT": "20000"}
AGENT_ENVIRONMENT = {"LTTNG_UST_PYTHON_REGISTER_TIMEOUT": "20000", **APP_ENVIRONMENT}


@dataclasses.dataclass(frozen=True)
class TracedApps:
    """Runs the test applications inside a session daemon's namespace."""

    sessiond: SessionDaemon
    c_app: Path

    def c_app_argv(
        self, count: int, *, delay_us: int = 0, payload_bytes: int = 0, first_seq: int = 0
    ) -> list[str]:
        return [str(self.c_app), str(count), str(delay_us), str(payload_bytes), str(first_seq)]

    def run_c_app(
        self,
        count: int,
        *,
        delay_us: int = 0,
        payload_bytes: int = 0,
        first_seq: int = 0,
        cpu: int | None = None,
        timeout: float = DEFAULT_COMMAND_TIMEOUT,
    ) -> int:
        """Emit `count` `pyrelayd_test:event` events with seq = first_seq .. first_seq+count-1.

        `cpu` pins the application to one CPU (so only that CPU's stream gets events).
        Returns the application's pid (nsenter and taskset exec it, keeping their pid).
        """
        argv = self.c_app_argv(
            count, delay_us=delay_us, payload_bytes=payload_bytes, first_seq=first_seq
        )
        if cpu is not None:
            argv = ["taskset", "-c", str(cpu), *argv]
        process = self.sessiond.popen(argv, env=APP_ENVIRONMENT)
        self.finish(process, timeout)
        return process.pid

    def start_c_app(
        self, count: int, *, delay_us: int = 0, payload_bytes: int = 0, first_seq: int = 0
    ) -> subprocess.Popen[str]:
        """Like `run_c_app` without waiting; pair with `finish`."""
        return self.sessiond.popen(
            self.c_app_argv(
                count, delay_us=delay_us, payload_bytes=payload_bytes, first_seq=first_seq
            ),
            env=APP_ENVIRONMENT,
        )

    @staticmethod
    def finish(process: subprocess.Popen[str], timeout: float = DEFAULT_COMMAND_TIMEOUT) -> None:
        """Wait for an application started with `start_*`; raise if it failed."""
        try:
            stdout, stderr = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            stop_process(process, 2.0)
            stdout, stderr = process.communicate()
        result = subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
        if result.returncode != 0:
            raise CommandError([str(a) for a in process.args], result)  # type: ignore[union-attr]

    def run_agent_app(
        self, count: int, *, first_seq: int = 0, timeout: float = DEFAULT_COMMAND_TIMEOUT
    ) -> None:
        """Log `count` records `seq=N` on logger `pyrelayd.test` through the Python agent."""
        argv = [SYSTEM_PYTHON, str(APPS_DIR / "agent_app.py"), str(count), str(first_seq)]
        self.sessiond.run(argv, env=AGENT_ENVIRONMENT, timeout=timeout)


# --------------------------------------------------------------------------------------------
# Recording sessions


@dataclasses.dataclass
class Session:
    """One recording session of a `SessionDaemon`; methods are thin `lttng` wrappers."""

    sessiond: SessionDaemon
    name: str
    relay: Relay | None = None
    live_timer_us: int | None = None
    snapshot: bool = False
    destroyed: bool = False
    #: The user-space channel made by `enable_channel`, used by `enable_events` by default.
    channel: str | None = None

    @classmethod
    def create(
        cls,
        sessiond: SessionDaemon,
        name: str,
        relay: Relay,
        *,
        live_timer_us: int | None = None,
        base_path: str = "",
        snapshot: bool = False,
    ) -> Session:
        """`lttng create NAME --set-url=net://127.0.0.1:C:D[BASE_PATH] [--live=US] [--snapshot]`."""
        args = ["create", name, f"--set-url={relay.url(base_path)}"]
        if live_timer_us is not None:
            args.append(f"--live={live_timer_us}")
        if snapshot:
            args.append("--snapshot")
        sessiond.lttng(*args)
        return cls(sessiond, name, relay, live_timer_us, snapshot)

    def lttng(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.sessiond.lttng(*args, check=check)

    def enable_channel(
        self,
        name: str = "channel0",
        *,
        domain: str = "--userspace",
        buffers: Literal["uid", "pid"] | None = None,
        subbuf_size: int | None = None,
        num_subbuf: int | None = None,
        tracefile_size: int | None = None,
        tracefile_count: int | None = None,
        switch_timer_us: int | None = None,
        overwrite: bool = False,
    ) -> None:
        args = ["enable-channel", f"--session={self.name}", domain]
        if buffers is not None:
            args.append(f"--buffers-{buffers}")
        options = {
            "--subbuf-size": subbuf_size,
            "--num-subbuf": num_subbuf,
            "--tracefile-size": tracefile_size,
            "--tracefile-count": tracefile_count,
            "--switch-timer": switch_timer_us,
        }
        args += [f"{option}={value}" for option, value in options.items() if value is not None]
        if overwrite:
            args.append("--overwrite")
        args.append(name)
        self.lttng(*args)
        if domain == "--userspace":
            self.channel = name

    def enable_events(
        self, pattern: str = C_APP_EVENT, *, domain: str = "--userspace", channel: str | None = None
    ) -> None:
        args = ["enable-event", f"--session={self.name}", domain]
        if channel is None and domain == "--userspace":
            channel = self.channel
        if channel is not None:
            args.append(f"--channel={channel}")
        self.lttng(*args, pattern)

    def enable_python_events(self, logger: str = AGENT_LOGGER) -> None:
        self.lttng("enable-event", f"--session={self.name}", "--python", logger)

    def start(self) -> None:
        self.lttng("start", self.name)

    def stop(self) -> None:
        self.lttng("stop", self.name)

    def rotate(self) -> subprocess.CompletedProcess[str]:
        return self.lttng("rotate", self.name)

    def clear(self, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.lttng("clear", self.name, check=check)

    def snapshot_record(self, name: str | None = None) -> subprocess.CompletedProcess[str]:
        args = ["snapshot", "record", f"--session={self.name}"]
        if name is not None:
            args.append(f"--name={name}")
        return self.lttng(*args)

    def regenerate_metadata(self) -> None:
        self.lttng("regenerate", "metadata", f"--session={self.name}")

    def destroy(self) -> None:
        """`lttng destroy` (waits until the peers report all data sent to the relay)."""
        self.lttng("destroy", self.name)
        self.destroyed = True


# --------------------------------------------------------------------------------------------
# Reading traces


@dataclasses.dataclass(frozen=True)
class TraceEvent:
    name: str
    timestamp_ns: int | None
    seq: int | None
    fields: dict[str, object]


class TraceReadError(RuntimeError):
    pass


_AGENT_SEQ_RE = re.compile(r"^seq=(\d+)$")


def _seq_of(name: str, fields: Mapping[str, object]) -> int | None:
    if name == C_APP_EVENT:
        value = fields.get("seq")
        return int(value) if isinstance(value, int) else None
    if name == AGENT_EVENT:
        match = _AGENT_SEQ_RE.match(str(fields.get("msg", "")))
        return int(match.group(1)) if match else None
    return None


def read_trace(path: Path, *, timeout: float = 60.0) -> list[TraceEvent]:
    """Every event of the CTF trace(s) found under `path`, read with the bt2 Python bindings.

    Reading happens in a child process (`bt_reader.py`), so a trace that crashes or hangs
    babeltrace2 fails the test instead of the test process.
    """
    result = run_command(
        [SYSTEM_PYTHON, str(INTEGRATION_DIR / "bt_reader.py"), str(path)],
        timeout=timeout,
        check=False,
    )
    if result.returncode != 0:
        raise TraceReadError(f"bt2 could not read {path}:\n{result.stderr}")
    events = []
    for line in result.stdout.splitlines():
        record = json.loads(line)
        fields = record["fields"]
        events.append(
            TraceEvent(record["name"], record["timestamp_ns"], _seq_of(record["name"], fields),
                       fields)
        )  # fmt: skip
    return events


def sequence_numbers(events: Sequence[TraceEvent], name: str = C_APP_EVENT) -> list[int]:
    """The `seq` of every event called `name`, in trace order."""
    return [e.seq for e in events if e.name == name and e.seq is not None]


def babeltrace2_text(path: Path | str, *, timeout: float = 60.0) -> list[str]:
    """`babeltrace2 PATH` output lines (the pretty printer of the command-line tool)."""
    return run_command(["babeltrace2", str(path)], timeout=timeout).stdout.splitlines()


_TEXT_SEQ_RE = re.compile(r"\bseq = (\d+)\b|msg = \"seq=(\d+)\"")


def text_sequence_numbers(lines: Sequence[str]) -> list[int]:
    """Sequence numbers of the test events in babeltrace2 pretty-printed lines."""
    numbers = []
    for line in lines:
        match = _TEXT_SEQ_RE.search(line)
        if match:
            numbers.append(int(match.group(1) or match.group(2)))
    return numbers


# --------------------------------------------------------------------------------------------
# Live viewer


@dataclasses.dataclass(frozen=True)
class LiveSessionInfo:
    """One entry of the viewer protocol's LIST_SESSIONS reply."""

    id: int
    live_timer_us: int
    clients: int
    streams: int
    hostname: str
    name: str


def list_live_sessions(port: int, *, timeout: float = 5.0) -> list[LiveSessionInfo]:
    """LIST_SESSIONS on a relay's live port (viewer protocol 2.4: CONNECT then LIST)."""

    def receive(sock: socket.socket, size: int) -> bytes:
        data = bytearray()
        while len(data) < size:
            chunk = sock.recv(size - len(data))
            if not chunk:
                raise ConnectionError("live port closed the connection")
            data += chunk
        return bytes(data)

    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        # header: data_size u64, cmd u32, cmd_version u32; CONNECT: id u64, major, minor, type
        sock.sendall(struct.pack(">QII", 20, 1, 0) + struct.pack(">QIII", 2**64 - 1, 2, 4, 1))
        _viewer_id, major, _minor, _type = struct.unpack(">QIII", receive(sock, 20))
        if major != 2:
            raise ConnectionError(f"live port answered major version {major}")
        sock.sendall(struct.pack(">QII", 0, 2, 0))
        (count,) = struct.unpack(">I", receive(sock, 4))
        sessions = []
        for _ in range(count):
            sid, timer, clients, streams, host, name = struct.unpack(
                ">QIII64s255s", receive(sock, 339)
            )
            sessions.append(
                LiveSessionInfo(
                    sid, timer, clients, streams,
                    host.split(b"\0", 1)[0].decode(), name.split(b"\0", 1)[0].decode(),
                )
            )  # fmt: skip
        return sessions


@dataclasses.dataclass
class LiveViewer:
    """`babeltrace2 -i lttng-live URL` running in the background, output kept in files."""

    process: subprocess.Popen[bytes]
    url: str
    stdout_path: Path
    stderr_path: Path

    @classmethod
    def start(cls, relay: Relay, session_name: str, workdir: Path) -> LiveViewer:
        relay.wait_live_port()
        url = relay.live_url(session_name)
        workdir.mkdir(parents=True, exist_ok=True)
        stdout_path = workdir / f"live-{session_name}.out"
        stderr_path = workdir / f"live-{session_name}.err"
        with open(stdout_path, "wb") as out, open(stderr_path, "wb") as err:
            process = subprocess.Popen(
                ["babeltrace2", "--input-format=lttng-live", url],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
            )
        return cls(process, url, stdout_path, stderr_path)

    def wait_attached(self, relay: Relay, session_name: str, timeout: float = 20.0) -> None:
        """Block until the relay reports a viewer attached to the session."""

        def attached() -> bool:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"babeltrace2 exited early ({self.process.returncode}):\n{self.stderr()}"
                )
            return any(
                s.name == session_name and s.clients > 0
                for s in list_live_sessions(relay.live_port)
            )

        wait_until(attached, timeout=timeout, interval=0.05, what=f"viewer attached to {self.url}")

    def wait(self, timeout: float = 30.0) -> int:
        """Wait for babeltrace2 to end (it does when the session is destroyed)."""
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            stop_process(self.process, 2.0)
            raise TimeoutError(
                f"live viewer of {self.url} still running after {timeout} s;"
                f" stderr:\n{self.stderr()}"
            ) from None

    def lines(self) -> list[str]:
        return self.stdout_path.read_text(errors="replace").splitlines()

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def stop(self) -> None:
        stop_process(self.process, 5.0)


# --------------------------------------------------------------------------------------------
# Output trees


@dataclasses.dataclass(frozen=True)
class FileInfo:
    size: int
    sha256: str


def _walk_files(root: Path) -> Iterator[Path]:
    for directory, _subdirs, files in os.walk(root):
        for name in files:
            yield Path(directory) / name


def output_listing(root: Path) -> dict[str, FileInfo]:
    """Every regular file under `root`: relative POSIX path -> size and sha256."""
    listing = {}
    for path in sorted(_walk_files(root)):
        digest = hashlib.sha256()
        with open(path, "rb") as file:
            for block in iter(lambda: file.read(1 << 20), b""):
                digest.update(block)
        listing[path.relative_to(root).as_posix()] = FileInfo(
            path.stat().st_size, digest.hexdigest()
        )
    return listing


def output_tree(root: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file under `root`, for differential comparisons."""
    return {path: info.sha256 for path, info in output_listing(root).items()}


def relative_files(root: Path) -> set[str]:
    """Relative POSIX paths of every regular file under `root`."""
    return {path.relative_to(root).as_posix() for path in _walk_files(root)}


def relative_dirs(root: Path) -> set[str]:
    """Relative POSIX paths of every directory under `root` (not `root` itself)."""
    found = set()
    for directory, subdirs, _files in os.walk(root):
        for name in subdirs:
            found.add((Path(directory) / name).relative_to(root).as_posix())
    return found


def normalize_times(relpath: str) -> str:
    """Replace the date/times the relay puts in paths by placeholders (for tree comparisons)."""
    relpath = re.sub(CHUNK_TIME_RE, "<TIME>", relpath)
    return re.sub(SESSION_DATETIME_RE, "<DATETIME>", relpath)


@dataclasses.dataclass(frozen=True)
class IndexEntry:
    """One packet record of a CTF index file (`ctf-index.h`), sizes in bits as on disk."""

    offset: int
    packet_size: int
    content_size: int
    timestamp_begin: int
    timestamp_end: int
    events_discarded: int
    stream_id: int
    stream_instance_id: int | None = None
    packet_seq_num: int | None = None


CTF_INDEX_MAGIC = 0xC1F1DCC1


def read_index(index_file: Path) -> list[IndexEntry]:
    """Records of a CTF index file; raises ValueError on a bad header or a truncated record."""
    data = index_file.read_bytes()
    if len(data) < 16:
        raise ValueError(f"{index_file}: {len(data)} bytes, shorter than the index header")
    magic, major, minor, entry_len = struct.unpack(">IIII", data[:16])
    if magic != CTF_INDEX_MAGIC or major != 1 or entry_len not in (56, 72):
        raise ValueError(f"{index_file}: bad header {magic:#x} {major}.{minor} len {entry_len}")
    if (len(data) - 16) % entry_len:
        raise ValueError(f"{index_file}: truncated record")
    fields = entry_len // 8
    return [
        IndexEntry(*struct.unpack_from(f">{fields}Q", data, offset))
        for offset in range(16, len(data), entry_len)
    ]


def index_problems(data_file: Path, index_file: Path) -> list[str]:
    """Why `index_file` does not describe `data_file` packet by packet (empty if it does)."""
    problems = []
    expected_offset = 0
    for number, entry in enumerate(read_index(index_file)):
        if entry.offset != expected_offset:
            problems.append(f"record {number}: offset {entry.offset}, expected {expected_offset}")
        if entry.packet_size % 8 or entry.content_size > entry.packet_size:
            problems.append(f"record {number}: sizes {entry.content_size}/{entry.packet_size}")
        expected_offset = entry.offset + entry.packet_size // 8
    size = data_file.stat().st_size
    if expected_offset != size:
        problems.append(f"records cover {expected_offset} bytes, data file has {size}")
    return problems


def possible_cpus() -> list[int]:
    """CPU ids lttng-ust makes per-CPU streams for (`/sys/devices/system/cpu/possible`)."""
    cpus: list[int] = []
    for part in Path("/sys/devices/system/cpu/possible").read_text().strip().split(","):
        first, _, last = part.partition("-")
        cpus.extend(range(int(first), int(last or first) + 1))
    return cpus


def host_has_lttng() -> str | None:
    """None when the real LTTng peers can run here, else the reason why not."""
    tools = ("lttng", "lttng-sessiond", "lttng-relayd", "babeltrace2", "lttng-gen-tp", "gcc",
             "unshare", "nsenter", "taskset")  # fmt: skip
    missing = [tool for tool in tools if shutil.which(tool) is None]
    if missing:
        return "missing tools: " + ", ".join(missing)
    if os.geteuid() != 0:
        return "needs root (private mount namespace for the root session daemon)"
    if not Path(SYSTEM_PYTHON).exists():
        return f"{SYSTEM_PYTHON} not found"
    return None
