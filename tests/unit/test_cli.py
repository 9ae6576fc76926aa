"""The lttng-relayd command line: options, config files, environment, and `main`."""

from __future__ import annotations

import logging
import os
import pwd
import re
import subprocess
import sys
import textwrap
import time
import types
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

from pyrelayd import __version__, cli, logs
from pyrelayd import options as relayd_options
from pyrelayd.config import GroupOutputBy, ListenAddress, RelaydOptions, TcpKeepAlive
from pyrelayd.daemon import ReadyCallback
from pyrelayd.inifile import parse_config_value, read_config_entries
from pyrelayd.options import CliError, parse_options

SRC = Path(__file__).resolve().parents[2] / "src"


@pytest.fixture
def home(tmp_path: Path) -> Path:
    path = tmp_path / "home"
    path.mkdir()
    return path


@pytest.fixture
def env(home: Path, tmp_path: Path) -> dict[str, str]:
    """An environment with its own LTTNG_HOME and run directory."""
    return {"LTTNG_HOME": str(home), "LTTNG_RUNDIR": str(tmp_path / "run")}


@pytest.fixture
def no_system_config(tmp_path: Path) -> Path:
    return tmp_path / "no-system-lttng.conf"


def options(
    argv: list[str], environ: Mapping[str, str], system_config: Path | None = None
) -> RelaydOptions:
    return parse_options(argv, environ, system_config=system_config or Path("/nonexistent"))


def write_config(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


# --- Defaults -------------------------------------------------------------------------------


def test_defaults(env: dict[str, str], home: Path, tmp_path: Path) -> None:
    resolved = options([], env)
    assert resolved.control == ListenAddress("0.0.0.0", 5342)
    assert resolved.data == ListenAddress("0.0.0.0", 5343)
    assert resolved.live == ListenAddress("127.0.0.1", 5344)  # localhost, resolved
    assert resolved.output_root == home / "lttng-traces"
    assert resolved.group_output_by is GroupOutputBy.HOST
    assert resolved.allow_clear
    assert not resolved.daemonize and not resolved.background
    assert resolved.tracing_group == "tracing"
    assert resolved.working_directory is None
    assert resolved.verbosity == 0
    assert resolved.fd_pool_size is None
    assert not resolved.dynamic_port_allocation
    assert resolved.pid_file is None
    assert not resolved.sig_parent
    assert resolved.network_socket_timeout_ms == 0
    assert resolved.tcp_keep_alive == TcpKeepAlive()
    assert resolved.run_dir == tmp_path / "run"


def test_home_falls_back_to_home_then_passwd(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert options([], {"HOME": str(home)}).output_root == home / "lttng-traces"
    passwd = types.SimpleNamespace(pw_dir=str(home / "pw"))
    monkeypatch.setattr(pwd, "getpwuid", lambda uid: passwd)
    assert options([], {}).output_root == home / "pw" / "lttng-traces"


def test_run_dir_is_home_dot_lttng_for_users_and_var_run_for_root(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(os, "getuid", lambda: 1000)
    assert options([], {"LTTNG_HOME": str(home)}).run_dir == home / ".lttng"
    monkeypatch.setattr(os, "getuid", lambda: 0)
    assert options([], {"LTTNG_HOME": str(home)}).run_dir == Path("/var/run/lttng")


# --- Command line ---------------------------------------------------------------------------


def test_ports_short_and_long(env: dict[str, str]) -> None:
    resolved = options(
        ["-C", "tcp://127.0.0.1:6000", "--data-port=tcp://127.0.0.1:6001", "-Ltcp6://[::1]"],
        env,
    )
    assert resolved.control == ListenAddress("127.0.0.1", 6000)
    assert resolved.data == ListenAddress("127.0.0.1", 6001)
    assert resolved.live == ListenAddress("::1", 5344, ipv6=True)


def test_later_port_option_wins(env: dict[str, str]) -> None:
    resolved = options(["-C", "tcp://127.0.0.1:1", "-C", "tcp://127.0.0.1:2"], env)
    assert resolved.control.port == 2


def test_net_url_uses_its_first_port(env: dict[str, str]) -> None:
    assert options(["-C", "net://127.0.0.1:7000:7001"], env).control.port == 7000


def test_dynamic_port_allocation_keeps_missing_ports_zero(env: dict[str, str]) -> None:
    # Unlike lttng-relayd 2.14, the order of the options does not matter.
    resolved = options(["-C", "tcp://0.0.0.0:0", "--dynamic-port-allocation"], env)
    assert (resolved.control.port, resolved.data.port, resolved.live.port) == (0, 0, 0)
    assert resolved.dynamic_port_allocation
    pinned = options(["--dynamic-port-allocation", "-D", "tcp://0.0.0.0:9000"], env)
    assert pinned.data.port == 9000


def test_flags(env: dict[str, str]) -> None:
    resolved = options(["-d", "-b", "-x", "-s", "-S", "-vvv", "-g", "grp"], env)
    assert resolved.daemonize and resolved.background
    assert not resolved.allow_clear
    assert resolved.group_output_by is GroupOutputBy.SESSION
    assert resolved.sig_parent
    assert resolved.verbosity == 3
    assert resolved.tracing_group == "grp"


def test_verbosity_counts_up_to_three(env: dict[str, str]) -> None:
    assert options(["-v"], env).verbosity == 1
    assert options(["--verbose", "-v"], env).verbosity == 2
    assert options(["-vvvvv"], env).verbosity == 3


def test_long_options_may_be_abbreviated(env: dict[str, str]) -> None:
    assert options(["--daemon", "--disallow"], env).daemonize


def test_paths_are_made_absolute(
    env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    resolved = options(["-o", "out/../traces", "-w", "work", "-P", "relayd.pid"], env)
    assert resolved.output_root == tmp_path / "traces"
    assert resolved.working_directory == tmp_path / "work"
    assert resolved.pid_file == Path(os.path.realpath(tmp_path)) / "relayd.pid"


def test_output_expands_the_home_directory(
    env: dict[str, str], home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(home))
    assert options(["-o", "~/traces"], env).output_root == home / "traces"


def test_fd_pool_size(env: dict[str, str]) -> None:
    assert options(["--fd-pool-size", "100"], env).fd_pool_size == 100


def test_operands_are_ignored_with_a_warning(
    env: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        options(["stray", "-v"], env)
    assert "ignoring unexpected argument(s): stray" in caplog.text


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--bogus"], "option --bogus not recognized"),
        (["-Z"], "option -Z not recognized"),
        (["-C"], "option -C requires argument"),
        (["--daemonize=yes"], "must not have an argument"),
        (["--group-output-by"], "not a unique prefix"),
        (["-C", "xyz://"], "invalid control port URL 'xyz://': unknown scheme 'xyz'"),
        (["-D", "tcp://"], "invalid data port URL 'tcp://': missing host"),
        (["-L", "tcp://h:70000"], "invalid live port URL 'tcp://h:70000': port 70000"),
        (["-C", "file:///tmp/x"], "file:// URLs cannot be used for a listener"),
        (["-C", "tcp://no-such-host.invalid"], "cannot resolve host"),
        # An earlier bad URL is an error even if a later one is good, as in lttng-relayd.
        (["-C", "xyz://", "-C", "tcp://0.0.0.0"], "unknown scheme"),
        (["-s", "-p"], "--group-output-by-host conflicts with --group-output-by-session"),
        (["-p", "-s"], "--group-output-by-session conflicts with --group-output-by-host"),
        (["--fd-pool-size", "abc"], "invalid --fd-pool-size value 'abc'"),
        (["--fd-pool-size", "-5"], "invalid --fd-pool-size value '-5'"),
        (["--fd-pool-size", "99"], "--fd-pool-size must be at least 100"),
        (["--fd-pool-size", str(2**40)], "exceeds the soft limit on open files"),
        (["-o", ""], "empty output directory"),
        (["-f", "/nonexistent/relayd.conf"], "cannot read config file /nonexistent/relayd.conf"),
    ],
)
def test_bad_command_lines(argv: list[str], message: str, env: dict[str, str]) -> None:
    with pytest.raises(CliError, match=re.escape(message)) as info:
        options(argv, env)
    assert "\n" not in str(info.value)


def test_same_grouping_twice_is_fine(env: dict[str, str]) -> None:
    assert options(["-s", "-s"], env).group_output_by is GroupOutputBy.SESSION


def test_information_request() -> None:
    assert relayd_options.information_request([]) is None
    assert relayd_options.information_request(["-V"]) == relayd_options.VERSION_LINE
    assert relayd_options.information_request(["-v", "--help", "-V"]) == relayd_options.USAGE
    with pytest.raises(CliError):
        relayd_options.information_request(["--bogus", "-h"])


# --- Environment ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "allowed"), [("1", False), ("yes", False), ("0", True), ("off", True)]
)
def test_disallow_clear_environment(value: str, allowed: bool, env: dict[str, str]) -> None:
    assert options([], env | {"LTTNG_RELAYD_DISALLOW_CLEAR": value}).allow_clear is allowed


def test_disallow_clear_option_beats_environment(env: dict[str, str]) -> None:
    assert not options(["-x"], env | {"LTTNG_RELAYD_DISALLOW_CLEAR": "0"}).allow_clear


def test_bad_disallow_clear_environment(env: dict[str, str]) -> None:
    with pytest.raises(CliError, match="invalid value 'maybe' for LTTNG_RELAYD_DISALLOW_CLEAR"):
        options([], env | {"LTTNG_RELAYD_DISALLOW_CLEAR": "maybe"})


def test_working_directory_environment_and_override(env: dict[str, str], tmp_path: Path) -> None:
    with_env = env | {"LTTNG_RELAYD_WORKING_DIRECTORY": str(tmp_path / "a")}
    assert options([], with_env).working_directory == tmp_path / "a"
    assert options(["-w", str(tmp_path / "b")], with_env).working_directory == tmp_path / "b"


@pytest.mark.parametrize(("value", "expected"), [("2500", 2500), ("0", 0), ("-1", 0), ("x", 0)])
def test_network_socket_timeout(value: str, expected: int, env: dict[str, str]) -> None:
    resolved = options([], env | {"LTTNG_NETWORK_SOCKET_TIMEOUT": value})
    assert resolved.network_socket_timeout_ms == expected


def test_health_socket_environment(env: dict[str, str], tmp_path: Path,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    assert options([], env).health_socket is None  # RUNDIR/relayd/health-PID, once running
    monkeypatch.chdir(tmp_path)
    resolved = options([], env | {"LTTNG_RELAYD_HEALTH": "health.sock"})
    assert resolved.health_socket == tmp_path / "health.sock"  # a daemon moves to /


def test_health_check_delta_environment(env: dict[str, str]) -> None:
    assert options([], env).health_check_delta_s == 20
    assert options([], env | {"PYRELAYD_HEALTH_CHECK_DELTA": "0.5"}).health_check_delta_s == 0.5
    for bad in ("0", "-1", "soon", "inf"):
        with pytest.raises(CliError, match="PYRELAYD_HEALTH_CHECK_DELTA"):
            options([], env | {"PYRELAYD_HEALTH_CHECK_DELTA": bad})


def test_log_file_option_and_config_key(env: dict[str, str], tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    assert options([], env).log_file is None
    monkeypatch.chdir(tmp_path)
    assert options(["--log-file", "relayd.log"], env).log_file == tmp_path / "relayd.log"
    config = write_config(tmp_path / "relayd.conf", "[relayd]\nlog-file = /var/log/r.log\n")
    assert options(["-f", str(config)], env).log_file == Path("/var/log/r.log")
    assert options(["-f", str(config), "--log-file", "/x.log"], env).log_file == Path("/x.log")
    with pytest.raises(CliError, match="empty log file path"):
        options(["--log-file", ""], env)


def test_tcp_keep_alive(env: dict[str, str], caplog: pytest.LogCaptureFixture) -> None:
    keep_alive = {
        "LTTNG_RELAYD_TCP_KEEP_ALIVE": "1",
        "LTTNG_RELAYD_TCP_KEEP_ALIVE_IDLE_TIME": "30",
        "LTTNG_RELAYD_TCP_KEEP_ALIVE_PROBE_INTERVAL": "0x0a",
        "LTTNG_RELAYD_TCP_KEEP_ALIVE_MAX_PROBE_COUNT": "-1",
        "LTTNG_RELAYD_TCP_KEEP_ALIVE_ABORT_THRESHOLD": "20",
    }
    with caplog.at_level(logging.WARNING):
        resolved = options([], env | keep_alive)
    assert resolved.tcp_keep_alive == TcpKeepAlive(
        enabled=True, idle_time_s=30, probe_interval_s=10, max_probe_count=None
    )
    assert "LTTNG_RELAYD_TCP_KEEP_ALIVE_ABORT_THRESHOLD" in caplog.text


def test_bad_tcp_keep_alive_values_are_warned_about_and_ignored(
    env: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    bad = {"LTTNG_RELAYD_TCP_KEEP_ALIVE": "2", "LTTNG_RELAYD_TCP_KEEP_ALIVE_IDLE_TIME": "soon"}
    with caplog.at_level(logging.WARNING):
        assert options([], env | bad).tcp_keep_alive == TcpKeepAlive()
    assert "LTTNG_RELAYD_TCP_KEEP_ALIVE='2'" in caplog.text
    assert "LTTNG_RELAYD_TCP_KEEP_ALIVE_IDLE_TIME='soon'" in caplog.text


# --- Config files ---------------------------------------------------------------------------


def test_config_value_reading() -> None:
    assert [parse_config_value(v) for v in ("yes", "TRUE", "on", "3", "12abc")] == [1, 1, 1, 3, 12]
    assert [parse_config_value(v) for v in ("no", "False", "OFF", "0")] == [0, 0, 0, 0]
    assert [parse_config_value(v) for v in ("", "maybe", "-1")] == [None, None, -1]


def test_ini_reading_follows_lttng() -> None:
    text = "\ufeff; comment\n# comment\n[relayd]\n  \na = 1 ; trailing\nb: two\n  more\nc=x;y\n"
    text += "[other]\nd=4\n[broken\nno separator\n"
    entries = [(e.section, e.name, e.value) for e in read_config_entries(text, "f")]
    assert entries == [
        ("relayd", "a", "1"),
        ("relayd", "b", "two"),
        ("relayd", "b", "more"),  # an indented line continues the previous name
        ("relayd", "c", "x;y"),  # ';' starts a comment only after a blank
        ("other", "d", "4"),
    ]


def test_config_files_apply_in_order(
    env: dict[str, str], home: Path, tmp_path: Path, no_system_config: Path
) -> None:
    system = write_config(
        no_system_config,
        """\
        [relayd]
        output = /system
        control-port = tcp://127.0.0.1:1
        data-port = tcp://127.0.0.1:1
        live-port = tcp://127.0.0.1:1
        """,
    )
    write_config(
        home / ".lttng" / "lttng.conf",
        """\
        [relayd]
        output = /user
        data-port = tcp://127.0.0.1:2
        live-port = tcp://127.0.0.1:2
        """,
    )
    explicit = write_config(
        tmp_path / "explicit.conf",
        """\
        [sessiond]
        live-port = tcp://127.0.0.1:99
        [relayd]
        live-port = tcp://127.0.0.1:3
        """,
    )
    resolved = options(["-f", str(explicit), "-o", "/cli"], env, system)
    assert resolved.output_root == Path("/cli")
    assert (resolved.control.port, resolved.data.port, resolved.live.port) == (1, 2, 3)


def test_config_flags_and_values(env: dict[str, str], tmp_path: Path) -> None:
    config = write_config(
        tmp_path / "relayd.conf",
        """\
        [relayd]
        daemonize = yes
        background = 0
        disallow-clear = on
        group-output-by-session = true
        verbose = 2
        dynamic-port-allocation = 1
        sig-parent = no
        group = tracers
        fd-pool-size = 200
        working-directory = /work
        pid-file = /tmp/relayd.pid
        help = yes
        version = yes
        config = /elsewhere
        """,
    )
    resolved = options(["-f", str(config)], env)
    assert resolved.daemonize and not resolved.background
    assert not resolved.allow_clear
    assert resolved.group_output_by is GroupOutputBy.SESSION
    assert resolved.verbosity == 2
    assert resolved.dynamic_port_allocation and resolved.control.port == 0
    assert not resolved.sig_parent
    assert resolved.tracing_group == "tracers"
    assert resolved.fd_pool_size == 200
    assert resolved.working_directory == Path("/work")
    assert resolved.pid_file == Path(os.path.realpath("/tmp")) / "relayd.pid"


def test_config_warnings(
    env: dict[str, str], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = write_config(
        tmp_path / "relayd.conf",
        """\
        [relayd]
        bogus = 1
        daemonize = maybe
        """,
    )
    with caplog.at_level(logging.WARNING):
        resolved = options(["-f", str(config)], env)
    assert not resolved.daemonize
    assert f"{config}:2: unrecognized option 'bogus'" in caplog.text
    assert f"{config}:3: invalid value 'maybe' for option 'daemonize'" in caplog.text


def test_bad_url_in_config_names_the_file_and_line(env: dict[str, str], tmp_path: Path) -> None:
    config = write_config(tmp_path / "relayd.conf", "[relayd]\ncontrol-port = xyz://\n")
    with pytest.raises(CliError, match=rf"'xyz://' \({config}:2\): unknown scheme"):
        options(["-f", str(config)], env)


def test_grouping_conflict_across_config_and_command_line(
    env: dict[str, str], tmp_path: Path
) -> None:
    config = write_config(tmp_path / "relayd.conf", "[relayd]\ngroup-output-by-session=yes\n")
    with pytest.raises(CliError, match="--group-output-by-host conflicts"):
        options(["-f", str(config), "-p"], env)


def test_last_config_option_is_the_one_read(env: dict[str, str], tmp_path: Path) -> None:
    first = write_config(tmp_path / "a.conf", "[relayd]\noutput=/a\n")
    second = write_config(tmp_path / "b.conf", "[relayd]\noutput=/b\n")
    assert options(["-f", str(first), "-f", str(second)], env).output_root == Path("/b")


# --- main -----------------------------------------------------------------------------------


def run_pyrelayd(
    *argv: str, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    environment = dict(os.environ if env is None else env)
    environment["PYTHONPATH"] = str(SRC)
    return subprocess.run(
        [sys.executable, "-m", "pyrelayd", *argv],
        capture_output=True,
        text=True,
        env=environment,
        timeout=60,
        check=False,
    )


def test_main_help() -> None:
    result = run_pyrelayd("-h")
    assert result.returncode == 0
    assert result.stdout.startswith("Usage: pyrelayd")
    assert "--control-port=URL" in result.stdout
    assert "--log-file=PATH" in result.stdout
    assert "LTTNG_RELAYD_HEALTH" in result.stdout
    assert result.stderr == ""


def test_main_version() -> None:
    result = run_pyrelayd("--version")
    assert result.returncode == 0
    assert result.stdout == f"pyrelayd {__version__} (lttng-relayd 2.13 compatible)\n"


@pytest.mark.parametrize(
    ("argv", "line"),
    [
        (["-C", "xyz://"], "pyrelayd: error: invalid control port URL 'xyz://': unknown scheme"),
        (["--bogus"], "pyrelayd: error: option --bogus not recognized"),
        (["-s", "-p"], "pyrelayd: error: --group-output-by-host conflicts"),
        (["--log-file", "/nonexistent/relayd.log"],
         "pyrelayd: error: cannot open log file /nonexistent/relayd.log: No such file"),
    ],
)
def test_main_bad_input_exits_1_with_one_line(argv: list[str], line: str) -> None:
    result = run_pyrelayd(*argv)
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.startswith(line)
    assert result.stderr.count("\n") == 1


class FakeServer:
    """Stands in for pyrelayd.server.app: reports some bound ports, records what it saw."""

    def __init__(self, ports: dict[str, int], status: int = 0) -> None:
        self.ports = ports
        self.status = status
        self.seen: dict[str, object] = {}

    def run(self, options: RelaydOptions, on_ready: ReadyCallback) -> int:
        on_ready(self.ports)
        port_dir = options.run_dir / "relayd"
        self.seen["cwd"] = Path.cwd()
        self.seen["port files"] = {p.name: p.read_text() for p in port_dir.glob("*.port")}
        if options.pid_file is not None:
            self.seen["pid file"] = options.pid_file.read_text()
        return self.status


@pytest.fixture
def fake_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeServer]:
    server = FakeServer({"control": 40001, "data": 40002, "live": 40003})
    module = types.ModuleType("pyrelayd.server.app")
    module.run = server.run  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "pyrelayd.server.app", module)
    monkeypatch.setattr(relayd_options, "SYSTEM_CONFIG_PATH", Path("/nonexistent"))
    yield server
    # main() configures the root logger; undo it for the other tests.
    logs.reset()
    logging.getLogger().setLevel(logging.WARNING)


def test_main_runs_the_server_with_port_and_pid_files(
    fake_server: FakeServer,
    env: dict[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.chdir(tmp_path)
    work = tmp_path / "work"
    work.mkdir()
    status = cli.main(
        ["-o", "out", "-w", str(work), "-P", "relayd.pid", "--dynamic-port-allocation"]
    )
    assert status == 0
    assert fake_server.seen["cwd"] == work
    assert fake_server.seen["port files"] == {
        "control.port": "40001\n",
        "data.port": "40002\n",
        "live.port": "40003\n",
    }
    assert fake_server.seen["pid file"] == f"{os.getpid()}\n"
    # Cleaned up at exit; the output directory was created.
    assert not list((tmp_path / "run" / "relayd").glob("*.port*"))
    assert not (tmp_path / "relayd.pid").exists()
    assert (tmp_path / "out").is_dir()


def test_main_writes_no_port_files_without_dynamic_allocation(
    fake_server: FakeServer, env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert cli.main(["-o", str(tmp_path / "out")]) == 0
    assert fake_server.seen["port files"] == {}


def test_main_returns_the_server_status(
    fake_server: FakeServer, env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    fake_server.status = 3
    assert cli.main(["-o", str(tmp_path / "out")]) == 3


def test_main_refuses_a_missing_working_directory(
    fake_server: FakeServer,
    env: dict[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.chdir(tmp_path)
    assert cli.main(["-o", "out", "-w", str(tmp_path / "missing")]) == 1
    assert f'Failed to change working directory to "{tmp_path / "missing"}"' in (
        capsys.readouterr().err
    )
    assert "cwd" not in fake_server.seen


@pytest.mark.parametrize("option", ["--working-directory", "--working-dir", "-w"])
def test_background_relay_with_a_missing_working_directory_fails_as_lttng_relayd(
    option: str, env: dict[str, str], tmp_path: Path
) -> None:
    """lttng-tools' tests/regression/tools/working-directory, test_relayd_failure: `-b` with a
    directory that does not exist exits 1 and says why, in lttng-relayd's words."""
    missing = tmp_path / "imaginary_directory"
    result = subprocess.run(
        [sys.executable, "-m", "pyrelayd", "-b", "-o", str(tmp_path / "out"), option,
         str(missing), "-C", "tcp://127.0.0.1:0", "-D", "tcp://127.0.0.1:0",
         "-L", "tcp://127.0.0.1:0"],
        env={**os.environ, **env}, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert result.returncode == 1
    assert "Failed to change working directory to" in result.stderr
    assert str(missing) in result.stderr


# --- Daemonizing and readiness, in real processes -------------------------------------------

DRIVER = """\
import os, pathlib, sys, time, types

app = types.ModuleType("pyrelayd.server.app")

def run(options, on_ready):
    if os.environ.get("FAKE_FAIL"):
        return 1
    on_ready({"control": 41001, "data": 41002, "live": 41003})
    stop = pathlib.Path(os.environ["FAKE_STOP"])
    deadline = time.monotonic() + 30
    while not stop.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    print("server stopping", file=sys.stderr)
    return 0

app.run = run
sys.modules["pyrelayd.server.app"] = app
from pyrelayd import __version__, cli, options
options.SYSTEM_CONFIG_PATH = pathlib.Path("/nonexistent")
raise SystemExit(cli.main(sys.argv[1:]))
"""

# Starts the driver and reports whether SIGUSR1 arrived before the driver's readiness timed out.
SIGNAL_WAITER = """\
import os, pathlib, signal, subprocess, sys

signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
child = subprocess.Popen([sys.executable, *sys.argv[1:]])
info = signal.sigtimedwait({signal.SIGUSR1}, 20)
print("SIGUSR1" if info else "no signal", flush=True)
pathlib.Path(os.environ["FAKE_STOP"]).touch()
print("status", child.wait(), flush=True)
"""


@pytest.fixture
def daemon_env(env: dict[str, str], tmp_path: Path) -> dict[str, str]:
    return dict(os.environ) | env | {"PYTHONPATH": str(SRC), "FAKE_STOP": str(tmp_path / "stop")}


def wait_until_gone(path: Path, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while path.exists():
        assert time.monotonic() < deadline, f"{path} still there"
        time.sleep(0.02)


@pytest.mark.parametrize("mode", ["-d", "-b"])
def test_daemon_parent_exits_once_ready(
    mode: str, daemon_env: dict[str, str], tmp_path: Path
) -> None:
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    pid_file = tmp_path / "relayd.pid"
    log = tmp_path / "log"
    with log.open("w") as output:
        # Files, not pipes: a -b daemon keeps the console open after its parent exits.
        result = subprocess.run(
            [
                sys.executable,
                str(driver),
                mode,
                "-P",
                str(pid_file),
                "-o",
                str(tmp_path / "out"),
                "--dynamic-port-allocation",
            ],
            stdout=output,
            stderr=output,
            env=daemon_env,
            timeout=60,
            check=False,
        )
    assert result.returncode == 0
    # Ready means listening: the port files are already there.
    port_dir = tmp_path / "run" / "relayd"
    assert (port_dir / "control.port").read_text() == "41001\n"
    assert (port_dir / "live.port").read_text() == "41003\n"
    daemon_pid = int(pid_file.read_text())
    os.kill(daemon_pid, 0)  # the daemon outlives the process that started it
    (tmp_path / "stop").touch()
    wait_until_gone(pid_file)
    wait_until_gone(port_dir / "control.port")
    # -d sends the daemon's stderr to /dev/null; -b keeps it.
    time.sleep(0.2)
    assert ("server stopping" in log.read_text()) is (mode == "-b")


def test_daemon_parent_fails_when_the_daemon_dies_first(
    daemon_env: dict[str, str], tmp_path: Path
) -> None:
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    result = subprocess.run(
        [sys.executable, str(driver), "-d", "-o", str(tmp_path / "out")],
        capture_output=True,
        env=daemon_env | {"FAKE_FAIL": "1"},
        timeout=60,
        check=False,
    )
    assert result.returncode == 1


@pytest.mark.parametrize("extra", [[], ["-d"]])
def test_sig_parent_signals_the_starting_process(
    extra: list[str], daemon_env: dict[str, str], tmp_path: Path
) -> None:
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    waiter = tmp_path / "waiter.py"
    waiter.write_text(SIGNAL_WAITER)
    result = subprocess.run(
        [sys.executable, str(waiter), str(driver), "-S", *extra, "-o", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        env=daemon_env,
        timeout=60,
        check=False,
    )
    assert result.stdout.splitlines() == ["SIGUSR1", "status 0"]


def test_sigusr1_is_not_sent_without_sig_parent(daemon_env: dict[str, str], tmp_path: Path) -> None:
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    waiter = tmp_path / "waiter.py"
    # The driver stops itself shortly, so the waiter does not wait its full timeout.
    waiter.write_text(
        SIGNAL_WAITER.replace(
            "sigtimedwait({signal.SIGUSR1}, 20)", "sigtimedwait({signal.SIGUSR1}, 1)"
        )
    )
    result = subprocess.run(
        [sys.executable, str(waiter), str(driver), "-o", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        env=daemon_env,
        timeout=60,
        check=False,
    )
    assert result.stdout.splitlines() == ["no signal", "status 0"]
