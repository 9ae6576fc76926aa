"""The real LTTng peers, driven against a relay daemon (the C one or pyrelayd).

Two installations of the peers are used (`Peers`): the machine's own, Debian 12's LTTng 2.13
and babeltrace2 2.0, and a Debian sid chroot built by `scripts/peers-sid` with LTTng 2.16 and
babeltrace2 2.1 (CTF 2 by default).

Isolation: the root session daemon owns `/run/lttng` (sockets, `agent.port`) and the UST wait
shared memory in `/dev/shm`, which would collide with any other root session daemon on the
machine. Each installation in use therefore gets a `Sandbox`: a private mount and pid
namespace, rooted in the installation (`/` or the chroot), with fresh tmpfs mounts on `/run`
and `/dev/shm` and its own `/proc`. The session daemon, every `lttng` command, traced
application, babeltrace2 and (for the chroot) the C lttng-relayd 2.16 run inside it with
`nsenter`. The network namespace is shared, so pyrelayd runs on the host side and both meet on
127.0.0.1; the chroot sees the host's temporary directory and this repository at the same
paths, so every path means the same inside and outside.

Everything here is synchronous and talks to processes by pid; every process started is
stopped by pid (SIGTERM, then SIGKILL after a timeout).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Literal

from pyrelayd_testkit.ports import free_tcp_ports, release_tcp_ports
from pyrelayd_testkit.processes import (
    DEFAULT_COMMAND_TIMEOUT,
    CommandError,
    descendant_pids,
    kill_if_same_process,
    process_start_time,
    run_command,
    stop_process,
    wait_until,
)
from pyrelayd_testkit.relays import REPO_ROOT

if TYPE_CHECKING:
    from pyrelayd_testkit.relays import Relay

INTEGRATION_DIR = REPO_ROOT / "tests" / "integration"
#: The traced applications' sources (C with its tracepoint provider, and a Python agent one).
APPS_DIR = INTEGRATION_DIR / "apps"

#: Python interpreter that has `bt2` and `lttngust` (Debian packages for the system Python).
SYSTEM_PYTHON = "/usr/bin/python3"

#: Tracepoint emitted by the C test application (apps/tp.tp).
C_APP_EVENT = "pyrelayd_test:event"
#: Logger used by the Python-agent test application (apps/agent_app.py).
AGENT_LOGGER = "pyrelayd.test"
AGENT_EVENT = "lttng_python:event"

@dataclasses.dataclass(frozen=True)
class Peers:
    """One installation of the LTTng peers, and the trace format its sessions are created with.

    `root` is `/` for the machine's own packages, else a chroot. `trace_format` is given to
    `lttng create --trace-format` (None: the session daemon's default, CTF 1.8 before 2.15 and
    CTF 2 from 2.15 on).
    """

    name: str
    root: Path
    lttng_version: tuple[int, int]
    trace_format: Literal["ctf-1.8", "ctf-2"] | None = None

    @property
    def is_host(self) -> bool:
        return self.root == Path("/")

    @property
    def writes_ctf2(self) -> bool:
        """Whether this installation's sessions are CTF 2 (2.15+ default, or asked for)."""
        if self.trace_format is not None:
            return self.trace_format == "ctf-2"
        return self.lttng_version >= (2, 15)


#: Where `scripts/peers-sid` builds the Debian sid chroot (LTTng 2.16, babeltrace2 2.1).
SID_ROOT = Path(os.environ.get("PYRELAYD_SID_ROOT", "/var/cache/pyrelayd/sid"))
#: The chroot is complete once this file exists.
SID_READY = ".pyrelayd-ready"

HOST_PEERS = Peers("2.13", Path("/"), (2, 13))
SID_PEERS = Peers("2.16", SID_ROOT, (2, 16))
SID_CTF1_PEERS = Peers("2.16-ctf-1.8", SID_ROOT, (2, 16), trace_format="ctf-1.8")
ALL_PEERS: dict[str, Peers] = {p.name: p for p in (HOST_PEERS, SID_PEERS, SID_CTF1_PEERS)}
#: Environment variable selecting the peers: a comma-separated list of `ALL_PEERS` names.
PEERS_ENV_VAR = "PYRELAYD_TEST_PEERS"
#: When set to 1, peers that cannot run here fail the tests instead of skipping them (CI).
REQUIRE_PEERS_ENV_VAR = "PYRELAYD_TEST_REQUIRE_PEERS"

# `<session>-YYYYmmdd-HHMMSS` as produced by the relay for a session directory.
SESSION_DATETIME_RE = r"\d{8}-\d{6}"
# Trace chunk names: `YYYYmmddTHHMMSS+ZZZZ[-YYYYmmddTHHMMSS+ZZZZ]-ID`.
CHUNK_TIME_RE = r"\d{8}T\d{6}[+-]\d{4}"


# --------------------------------------------------------------------------------------------
# Session daemon in a private mount namespace

# The sandbox's first process: mounts, then the chroot, then a reaper as pid 1 of the new pid
# namespace. "$1" is the root, "$2" the host's temporary directory, "$3" this repository.
_SANDBOX_SCRIPT = """
set -e
root="$1"; shift
if [ "$root" != / ]; then
    mount --rbind /dev "$root/dev"
    mount --rbind /sys "$root/sys"
    for shared in "$1" "$2"; do
        mkdir -p "$root$shared"
        mount --rbind "$shared" "$root$shared"
    done
fi
shift 2
mount -t proc proc "$root/proc"
mount -t tmpfs -o mode=1777 pyrelayd-shm "$root/dev/shm"
mount -t tmpfs -o mode=0755 pyrelayd-run "$root/run"
mkdir -p "$root/run/lttng"
exec chroot "$root" "$@"
"""

# pid 1 of the sandbox: says it is ready, reaps orphans, exits on SIGTERM (the kernel then
# kills whatever is left in the namespace).
_REAPER = """
import os, signal, sys, time
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
print("ready", flush=True)
while True:
    try:
        os.waitpid(-1, 0)
    except ChildProcessError:
        time.sleep(0.2)
"""


class NamespacedPopen(subprocess.Popen[str]):
    """A process started through `nsenter --pid`, which forks and waits for its child.

    Signals go to the child (the real command), not to nsenter, which would die without
    passing them on; `wait()` and the exit status are nsenter's, which returns the child's.
    """

    def inner_pid(self, timeout: float = 5.0) -> int | None:
        """Host pid of the command, None once it is gone."""
        deadline = time.monotonic() + timeout
        while True:
            children = descendant_pids(self.pid)
            if children:
                return children[0]
            if self.poll() is not None or time.monotonic() >= deadline:
                return None
            time.sleep(0.001)

    def namespace_pid(self) -> int | None:
        """The command's pid inside the sandbox (what the session daemon sees)."""
        pid = self.inner_pid()
        if pid is None:
            return None
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("NSpid:"):
                    return int(line.split()[-1])
        return None

    def send_signal(self, sig: int) -> None:
        if self.poll() is not None:
            return
        pid = self.inner_pid(timeout=0.5)
        if pid is None:
            super().send_signal(sig)
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        # The command first, then nsenter itself, so that wait() always returns.
        self.send_signal(signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)


class Sandbox:
    """A private mount + pid namespace rooted in an installation of the LTTng peers."""

    def __init__(self, peers: Peers, holder: subprocess.Popen[str], holder_pid: int) -> None:
        self.peers = peers
        self.holder = holder
        self.pid = holder_pid  # host pid of the namespace's pid 1

    @classmethod
    def start(cls, peers: Peers, *, timeout: float = 20.0) -> Sandbox:
        reason = peers_unavailable(peers)
        if reason is not None:
            raise RuntimeError(f"LTTng {peers.name} peers unavailable: {reason}")
        argv = [
            "unshare", "--mount", "--pid", "--fork", "--propagation", "private",
            "sh", "-c", _SANDBOX_SCRIPT, "sh",
            str(peers.root), tempfile.gettempdir(), str(REPO_ROOT),
            "python3", "-c", _REAPER,
        ]  # fmt: skip
        holder = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        assert holder.stdout is not None
        ready = holder.stdout.readline()
        children = descendant_pids(holder.pid)
        if ready.strip() != "ready" or not children:
            stop_process(holder, 2.0)
            raise RuntimeError(
                f"sandbox for LTTng {peers.name} did not start:\n{holder.communicate()[1]}"
            )
        return cls(peers, holder, children[0])

    def argv(self, argv: Sequence[str]) -> list[str]:
        """`argv` wrapped to run in the sandbox (its root, mounts and pid namespace; cwd /)."""
        return [
            "nsenter", f"--target={self.pid}", "--mount", "--pid", "--root", "--wd", "--", *argv
        ]

    def run(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        timeout: float = DEFAULT_COMMAND_TIMEOUT,
        check: bool = True,
    ) -> subprocess.CompletedProcess[str]:
        return run_command(self.argv(argv), env=env, timeout=timeout, check=check)

    def popen(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        stdout: int | IO[Any] | None = subprocess.PIPE,
        stderr: int | IO[Any] | None = subprocess.PIPE,
    ) -> NamespacedPopen:
        return NamespacedPopen(
            self.argv(argv), stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr, text=True,
            env=dict(env) if env is not None else None,
        )  # fmt: skip

    def path(self, inside: str) -> Path:
        """Where a path of the sandbox is seen from the host (while the sandbox runs)."""
        return Path(f"/proc/{self.pid}/root") / inside.lstrip("/")

    def is_running(self) -> bool:
        return self.holder.poll() is None

    def stop(self, timeout: float = 10.0) -> None:
        """Ends the namespace: every process still in it is killed by the kernel."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGTERM)
        try:
            self.holder.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
            stop_process(self.holder, timeout)


def peers_unavailable(peers: Peers) -> str | None:
    """None when these peers can run here, else the reason why not."""
    if os.geteuid() != 0:
        return "needs root (private mount and pid namespaces)"
    missing = [tool for tool in ("unshare", "nsenter", "chroot") if shutil.which(tool) is None]
    if missing:
        return "missing tools: " + ", ".join(missing)
    if not peers.is_host and not (peers.root / SID_READY).exists():
        return f"no chroot at {peers.root} (build it with scripts/peers-sid)"
    tools = ("lttng", "lttng-sessiond", "lttng-relayd", "babeltrace2", "lttng-gen-tp", "gcc",
             "taskset", "python3")  # fmt: skip
    search = [peers.root / d.lstrip("/") for d in ("/usr/local/bin", "/usr/bin", "/bin",
                                                   "/usr/sbin", "/sbin")]  # fmt: skip
    missing = [tool for tool in tools if not any((d / tool).exists() for d in search)]
    if missing:
        return f"missing in {peers.root}: " + ", ".join(missing)
    return None


@dataclasses.dataclass
class SessionDaemon:
    """A root `lttng-sessiond --no-kernel` alone in its own sandbox."""

    sandbox: Sandbox
    process: NamespacedPopen
    workdir: Path
    home: Path
    log_path: Path
    agent_port: int

    @property
    def peers(self) -> Peers:
        return self.sandbox.peers

    @property
    def pid(self) -> int | None:
        """Host pid of lttng-sessiond."""
        return self.process.inner_pid()

    @classmethod
    def start(
        cls, workdir: Path, peers: Peers = HOST_PEERS, *, timeout: float = 30.0
    ) -> SessionDaemon:
        home = workdir / "home"
        home.mkdir(parents=True, exist_ok=True)
        log_path = workdir / "lttng-sessiond.log"
        (agent_port,) = free_tcp_ports(1)
        sandbox = Sandbox.start(peers)
        env = {**os.environ, "LTTNG_HOME": str(home)}
        try:
            with open(log_path, "wb") as log:
                process = sandbox.popen(
                    ["lttng-sessiond", "--no-kernel", f"--agent-tcp-port={agent_port}"],
                    env=env, stdout=log, stderr=subprocess.STDOUT,
                )  # fmt: skip
        except BaseException:
            sandbox.stop()
            raise
        daemon = cls(sandbox, process, workdir, home, log_path, agent_port)
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
        def ready() -> bool:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"lttng-sessiond exited with status {self.process.returncode}:\n"
                    + self.log_tail()
                )
            # The UST socket and wait shm carry lttng-ust's ABI major (8 for 2.13, 11 for 2.16).
            if not self.sandbox.path("run/lttng/client-lttng-sessiond").exists():
                return False
            if not list(self.sandbox.path("run/lttng").glob("lttng-ust-sock-*")):
                return False
            if not list(self.sandbox.path("dev/shm").glob("lttng-ust-wait-*")):
                return False
            return self.lttng("list", check=False, timeout=10).returncode == 0

        wait_until(ready, timeout=timeout, interval=0.05, what="lttng-sessiond to accept commands")

    def is_running(self) -> bool:
        return self.process.poll() is None and self.sandbox.is_running()

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

    def run(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        timeout: float = DEFAULT_COMMAND_TIMEOUT,
        check: bool = True,
    ) -> subprocess.CompletedProcess[str]:
        """Run a command in the sandbox (absolute paths only: the cwd is `/`)."""
        return self.sandbox.run(argv, env=self.environment(env), timeout=timeout, check=check)

    def popen(
        self, argv: Sequence[str], *, env: Mapping[str, str] | None = None
    ) -> NamespacedPopen:
        """Start a command in the sandbox without waiting (the caller stops it)."""
        return self.sandbox.popen(argv, env=self.environment(env))

    def lttng(
        self, *args: str, check: bool = True, timeout: float = DEFAULT_COMMAND_TIMEOUT
    ) -> subprocess.CompletedProcess[str]:
        """`lttng ARGS...` against this session daemon (never auto-spawns another one)."""
        return self.run(["lttng", "--no-sessiond", *args], check=check, timeout=timeout)

    def create_options(self, *, live_timer_us: int | None, snapshot: bool) -> list[str]:
        """`lttng create` options for a session of these peers (live, snapshot, format)."""
        options = []
        if live_timer_us is not None:
            options.append(f"--live={live_timer_us}")
        if snapshot:
            options.append("--snapshot")
        if self.peers.trace_format is not None:
            options.append(f"--trace-format={self.peers.trace_format}")
        return options

    def session_names(self) -> list[str]:
        out = self.lttng("--mi=xml", "list").stdout
        return re.findall(r"<session>\s*<name>([^<]*)</name>", out)

    def stop(self, timeout: float = 10.0) -> None:
        # The daemon stops its consumer daemons itself on SIGTERM; after a SIGKILL nobody
        # would, so remember them (pid and start time) and kill the leftovers by pid.
        pid = self.pid
        children = [(p, process_start_time(p)) for p in descendant_pids(pid)] if pid else []
        stop_process(self.process, timeout)
        for child, start_time in reversed(children):
            kill_if_same_process(child, start_time)
        self.sandbox.stop()
        release_tcp_ports([self.agent_port])



# --------------------------------------------------------------------------------------------
# Traced applications


def build_c_app(build_dir: Path, sandbox: Sandbox | None = None) -> Path:
    """Build apps/app.c with its tracepoint provider apps/tp.tp; return the executable.

    With a `sandbox`, with the compiler and the lttng-ust of its installation (`build_dir`
    must then be under the temporary directory, which the sandbox shares).
    """
    build_dir.mkdir(parents=True, exist_ok=True)
    for name in ("tp.tp", "app.c"):
        shutil.copy2(APPS_DIR / name, build_dir / name)
    run = sandbox.run if sandbox is not None else run_command
    # lttng-gen-tp writes tp.h and tp.c next to its input (run from the build directory).
    run(["sh", "-c", f"cd '{build_dir}' && lttng-gen-tp -o tp.h -o tp.c tp.tp"])
    executable = build_dir / "app"
    run(
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
        Returns the application's pid in the sandbox (what the session daemon sees).
        """
        argv = self.c_app_argv(
            count, delay_us=delay_us, payload_bytes=payload_bytes, first_seq=first_seq
        )
        if cpu is not None:
            argv = ["taskset", "-c", str(cpu), *argv]
        process = self.sessiond.popen(argv, env=APP_ENVIRONMENT)
        pid = process.namespace_pid()
        self.finish(process, timeout)
        if pid is None:
            raise RuntimeError(f"no pid for {argv}: it ended before it could be read")
        return pid

    def start_c_app(
        self, count: int, *, delay_us: int = 0, payload_bytes: int = 0, first_seq: int = 0
    ) -> NamespacedPopen:
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
        relay_host: str = "127.0.0.1",
    ) -> Session:
        """`lttng create NAME --set-url=net://HOST:C:D[BASE_PATH] [--live=US] [--snapshot]`."""
        args = ["create", name, f"--set-url={relay.url(base_path, relay_host)}"]
        args += sessiond.create_options(live_timer_us=live_timer_us, snapshot=snapshot)
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

#: Where babeltrace2 and the bt2 bindings run: the sandbox of the peers in use when they are
#: not the machine's own (babeltrace2 2.1 with LTTng 2.16), else the host.
_tools_sandbox: Sandbox | None = None


@contextlib.contextmanager
def trace_tools_of(sandbox: Sandbox | None) -> Iterator[None]:
    """Read traces and follow live sessions with the babeltrace2 of `sandbox`'s peers."""
    global _tools_sandbox
    previous = _tools_sandbox
    _tools_sandbox = sandbox if sandbox is not None and not sandbox.peers.is_host else None
    try:
        yield
    finally:
        _tools_sandbox = previous


def babeltrace2_version() -> tuple[int, int]:
    """(major, minor) of the babeltrace2 in use."""
    out = run_tool(["babeltrace2", "--version"]).stdout
    match = re.search(r"Babeltrace (\d+)\.(\d+)", out)
    if match is None:
        raise RuntimeError(f"unexpected babeltrace2 --version output: {out!r}")
    return int(match.group(1)), int(match.group(2))


def run_tool(
    argv: Sequence[str], *, timeout: float = DEFAULT_COMMAND_TIMEOUT, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """Run a trace tool (babeltrace2, the bt2 reader) of the peers in use."""
    if _tools_sandbox is not None:
        return _tools_sandbox.run(argv, timeout=timeout, check=check)
    return run_command(argv, timeout=timeout, check=check)


def start_tool(argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
    """Start a trace tool of the peers in use (stdout/stderr as in `subprocess.Popen`)."""
    if _tools_sandbox is not None:
        return _tools_sandbox.popen(argv, **kwargs)
    return subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, **kwargs)


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
    result = run_tool(
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
    return run_tool(["babeltrace2", str(path)], timeout=timeout).stdout.splitlines()


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
    #: "ctf-1.8" or "ctf-2" (entries of viewer protocol 2.15 only; older ones are CTF 1.8).
    trace_format: str = "ctf-1.8"


def list_live_sessions(
    port: int, *, minor: int = 15, timeout: float = 5.0
) -> list[LiveSessionInfo]:
    """LIST_SESSIONS on a relay's live port, announcing viewer protocol 2.`minor`.

    Written from the protocol description, independently of pyrelayd's codec (it checks it):
    entries are 2.4's fixed 339 bytes below a negotiated minor of 15, else 2.15's 32 bytes and
    the two names (no NUL), with the trace format as 0 = CTF 1.8, 1 = CTF 2.
    """

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
        sock.sendall(struct.pack(">QII", 20, 1, 0) + struct.pack(">QIII", 2**64 - 1, 2, minor, 1))
        _viewer_id, major, relay_minor, _type = struct.unpack(">QIII", receive(sock, 20))
        if major != 2:
            raise ConnectionError(f"live port answered major version {major}")
        negotiated = min(minor, relay_minor)
        sock.sendall(struct.pack(">QII", 0, 2, 0))
        (count,) = struct.unpack(">I", receive(sock, 4))
        sessions = []
        for _ in range(count):
            if negotiated < 15:
                sid, timer, clients, streams, host, name = struct.unpack(
                    ">QIII64s255s", receive(sock, 339)
                )
                hostname = host.split(b"\0", 1)[0].decode()
                session_name = name.split(b"\0", 1)[0].decode()
                trace_format = "ctf-1.8"
            else:
                sid, timer, clients, streams, host_len, name_len, live_format = struct.unpack(
                    ">QIIIIII", receive(sock, 32)
                )
                hostname = receive(sock, host_len).decode()
                session_name = receive(sock, name_len).decode()
                trace_format = {0: "ctf-1.8", 1: "ctf-2"}[live_format]
            sessions.append(
                LiveSessionInfo(sid, timer, clients, streams, hostname, session_name,
                                trace_format)
            )  # fmt: skip
        return sessions


@dataclasses.dataclass
class LiveViewer:
    """`babeltrace2 -i lttng-live URL` running in the background, output kept in files."""

    process: subprocess.Popen[Any]
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
            process = start_tool(
                ["babeltrace2", "--input-format=lttng-live", url], stdout=out, stderr=err
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
    """None when the machine's own LTTng peers can run here, else the reason why not."""
    return peers_unavailable(HOST_PEERS)
