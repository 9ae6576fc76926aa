"""lttng-relayd's options: the command line, config files and environment, resolved.

`parse_options` turns a command line and an environment into a `RelaydOptions` without side
effects (beyond reading config files and resolving listener host names); `pyrelayd.cli.main`
then sets up the process (`pyrelayd.daemon`) and hands over to the server.

Settings apply in this order, later ones winning: `LTTNG_RELAYD_WORKING_DIRECTORY`, the
`[relayd]` section of `/etc/lttng/lttng.conf`, of `$LTTNG_HOME/.lttng/lttng.conf`, of the
`-f` file (read by `pyrelayd.inifile`), then the command line. Config keys are the long
option names.
"""

from __future__ import annotations

import dataclasses
import getopt
import logging
import os
import pwd
import resource
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from pyrelayd import __version__
from pyrelayd.config import (
    DEFAULT_CONTROL_PORT,
    DEFAULT_DATA_PORT,
    DEFAULT_HEALTH_CHECK_DELTA_S,
    DEFAULT_LIVE_PORT,
    DEFAULT_METRICS_PORT,
    RELAYD_MIN_FD_POOL_SIZE,
    GroupOutputBy,
    ListenAddress,
    RelaydOptions,
    TcpKeepAlive,
)
from pyrelayd.inifile import ConfigEntry, parse_config_value, read_config_entries
from pyrelayd.netaddr import resolved
from pyrelayd.protocol.uri import UriError, listen_address, parse_uri

PROG = "pyrelayd"
COMPATIBLE_WITH = "lttng-relayd 2.13"
SYSTEM_CONFIG_PATH = Path("/etc/lttng/lttng.conf")
CONFIG_SECTION = "relayd"
SYSTEM_RUN_DIR = Path("/var/run/lttng")
TRACE_DIR_NAME = "lttng-traces"
MAX_VERBOSITY = 3

DEFAULT_CONTROL_URL = "tcp://0.0.0.0"
DEFAULT_DATA_URL = "tcp://0.0.0.0"
DEFAULT_LIVE_URL = "tcp://localhost"

ENV_LTTNG_HOME = "LTTNG_HOME"
ENV_LTTNG_RUNDIR = "LTTNG_RUNDIR"
ENV_NETWORK_SOCKET_TIMEOUT = "LTTNG_NETWORK_SOCKET_TIMEOUT"
ENV_DISALLOW_CLEAR = "LTTNG_RELAYD_DISALLOW_CLEAR"
ENV_WORKING_DIRECTORY = "LTTNG_RELAYD_WORKING_DIRECTORY"
ENV_TCP_KEEP_ALIVE = "LTTNG_RELAYD_TCP_KEEP_ALIVE"
ENV_TCP_KEEP_ALIVE_IDLE_TIME = "LTTNG_RELAYD_TCP_KEEP_ALIVE_IDLE_TIME"
ENV_TCP_KEEP_ALIVE_MAX_PROBE_COUNT = "LTTNG_RELAYD_TCP_KEEP_ALIVE_MAX_PROBE_COUNT"
ENV_TCP_KEEP_ALIVE_PROBE_INTERVAL = "LTTNG_RELAYD_TCP_KEEP_ALIVE_PROBE_INTERVAL"
ENV_TCP_KEEP_ALIVE_ABORT_THRESHOLD = "LTTNG_RELAYD_TCP_KEEP_ALIVE_ABORT_THRESHOLD"
ENV_RELAYD_HEALTH = "LTTNG_RELAYD_HEALTH"
# pyrelayd's own: the health check's delta in seconds (default 20, as lttng-relayd).
ENV_HEALTH_CHECK_DELTA = "PYRELAYD_HEALTH_CHECK_DELTA"

_log = logging.getLogger(__name__)
_COMMAND_LINE = "command line"  # the origin of command-line settings, for messages


class CliError(Exception):
    """A setting that cannot be used; the message is one line naming the problem."""


@dataclasses.dataclass(frozen=True)
class _Option:
    name: str  # the long name, also the config file key
    short: str | None
    takes_value: bool


_OPTIONS = (
    _Option("control-port", "C", True),
    _Option("data-port", "D", True),
    _Option("live-port", "L", True),
    _Option("metrics-port", None, True),
    _Option("daemonize", "d", False),
    _Option("background", "b", False),
    _Option("pid-file", "P", True),
    _Option("log-file", None, True),
    _Option("group", "g", True),
    _Option("fd-pool-size", None, True),
    _Option("workers", None, True),
    _Option("help", "h", False),
    _Option("output", "o", True),
    _Option("verbose", "v", False),
    _Option("config", "f", True),
    _Option("version", "V", False),
    _Option("working-directory", "w", True),
    _Option("group-output-by-session", "s", False),
    _Option("group-output-by-host", "p", False),
    _Option("disallow-clear", "x", False),
    _Option("dynamic-port-allocation", None, False),
    _Option("sig-parent", "S", False),
)
_OPTIONS_BY_NAME = {option.name: option for option in _OPTIONS}
_OPTIONS_BY_SHORT = {option.short: option for option in _OPTIONS if option.short}
# Meaningless in a config file; lttng-relayd skips them silently.
_CONFIG_IGNORED = frozenset({"help", "config", "version"})

USAGE = f"""\
Usage: {PROG} [OPTION]...
Receive LTTng traces from session/consumer daemons, write them under the output directory
and serve them to live viewers ({COMPATIBLE_WITH} compatible).

Daemon:
  -d, --daemonize               run as a daemon, stdin/stdout/stderr to /dev/null
  -b, --background              run as a daemon, keeping the console open
  -P, --pid-file=PATH           write the process ID to PATH (removed at exit)
  -S, --sig-parent              send SIGUSR1 to the parent process once ready
  -f, --config=PATH             read the [relayd] section of the INI file PATH too
  -g, --group=GROUP             Unix tracing group (default: tracing)
  -w, --working-directory=DIR   change to DIR after starting
      --fd-pool-size=COUNT      keep at most COUNT file descriptors open
                                (default: the soft RLIMIT_NOFILE)
      --workers=COUNT           serve the traced hosts from COUNT processes, one core each
                                (default: 1; see docs/scaling.md)
  -v, --verbose                 increase verbosity (up to three times)
      --log-file=PATH           log to PATH (reopened on SIGHUP) instead of stderr or,
                                with -d/-b, syslog

Output:
  -o, --output=DIR              base output directory (default: $LTTNG_HOME/lttng-traces)
  -p, --group-output-by-host    DIR/HOSTNAME/SESSION-DATETIME (default)
  -s, --group-output-by-session DIR/SESSION/HOSTNAME-DATETIME
  -x, --disallow-clear          refuse clear requests

Ports (URL: tcp://HOST[:PORT], tcp6://[ADDR][:PORT], net://HOST[:PORT]):
  -C, --control-port=URL        control listener (default: tcp://0.0.0.0:{DEFAULT_CONTROL_PORT})
  -D, --data-port=URL           data listener (default: tcp://0.0.0.0:{DEFAULT_DATA_PORT})
  -L, --live-port=URL           live viewer listener (default: tcp://localhost:{DEFAULT_LIVE_PORT})
      --dynamic-port-allocation let the OS choose ports not given (or given as 0) and write
                                them to RUNDIR/relayd/{{control,data,live}}.port
      --metrics-port=URL        serve /metrics (Prometheus), /status (JSON) and /healthz over
                                HTTP (e.g. tcp://127.0.0.1:{DEFAULT_METRICS_PORT}; default: off)

  -h, --help                    show this help and exit
  -V, --version                 show the version and exit

Environment: LTTNG_HOME, LTTNG_RUNDIR, LTTNG_NETWORK_SOCKET_TIMEOUT,
LTTNG_RELAYD_DISALLOW_CLEAR, LTTNG_RELAYD_WORKING_DIRECTORY, LTTNG_RELAYD_TCP_KEEP_ALIVE,
LTTNG_RELAYD_TCP_KEEP_ALIVE_{{IDLE_TIME,PROBE_INTERVAL,MAX_PROBE_COUNT,ABORT_THRESHOLD}},
LTTNG_RELAYD_HEALTH (health socket; default RUNDIR/relayd/health-PID), NOTIFY_SOCKET and
WATCHDOG_USEC (systemd).
Config files: {SYSTEM_CONFIG_PATH}, $LTTNG_HOME/.lttng/lttng.conf, then --config."""

VERSION_LINE = f"{PROG} {__version__} ({COMPATIBLE_WITH} compatible)"


# --- Command line -------------------------------------------------------------------------


def _split_command_line(argv: Sequence[str]) -> tuple[list[tuple[_Option, str | None]], list[str]]:
    """The options of `argv` in order, as (option, value or None), and the other arguments."""
    shorts = "".join(
        option.short + (":" if option.takes_value else "") for option in _OPTIONS if option.short
    )
    longs = [option.name + ("=" if option.takes_value else "") for option in _OPTIONS]
    try:
        pairs, others = getopt.gnu_getopt(list(argv), shorts, longs)
    except getopt.GetoptError as error:
        raise CliError(str(error)) from None
    found: list[tuple[_Option, str | None]] = []
    for flag, value in pairs:
        if flag.startswith("--"):
            option = _OPTIONS_BY_NAME[flag[2:]]
        else:
            option = _OPTIONS_BY_SHORT[flag[1:]]
        found.append((option, value if option.takes_value else None))
    return found, others


def information_request(argv: Sequence[str]) -> str | None:
    """The text `-h` or `-V` asks for (help wins), or None when the relay should run."""
    names = {option.name for option, _value in _split_command_line(argv)[0]}
    if "help" in names:
        return USAGE
    if "version" in names:
        return VERSION_LINE
    return None


# --- Resolving settings -------------------------------------------------------------------


def home_directory(environ: Mapping[str, str]) -> Path | None:
    """$LTTNG_HOME, else $HOME, else the user's passwd entry; None when there is none."""
    for variable in (ENV_LTTNG_HOME, "HOME"):
        value = environ.get(variable)
        if value:
            return Path(value)
    try:
        return Path(pwd.getpwuid(os.getuid()).pw_dir)
    except KeyError:
        return None


def run_directory(environ: Mapping[str, str], home: Path | None) -> Path:
    """The LTTng run directory: $LTTNG_RUNDIR, else /var/run/lttng for root, else
    $LTTNG_HOME/.lttng."""
    explicit = environ.get(ENV_LTTNG_RUNDIR)
    if explicit:
        return _absolute(explicit)
    if os.getuid() == 0:
        return SYSTEM_RUN_DIR
    if home is None:
        raise CliError("cannot find a home directory for the run directory; set LTTNG_HOME")
    return _absolute(str(home / ".lttng"))


def _absolute(path: str) -> Path:
    """`path` with ~ expanded, made absolute against the current directory, normalized."""
    return Path(os.path.abspath(os.path.expanduser(path)))


class _Settings:
    """Settings as they accumulate from config files and the command line."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self.urls: dict[str, tuple[str, str]] = {}  # listener -> (URL, origin)
        self.output: str | None = None
        self.daemonize = False
        self.background = False
        self.group = "tracing"
        self.fd_pool_size: int | None = None
        self.workers = 1
        self.verbosity = 0
        self.working_directory: str | None = environ.get(ENV_WORKING_DIRECTORY) or None
        self.group_output_by: GroupOutputBy | None = None
        self.disallow_clear = False
        self.dynamic_port_allocation = False
        self.pid_file: str | None = None
        self.log_file: str | None = None
        self.sig_parent = False

    def apply(self, option: _Option, value: str | None, origin: str) -> None:
        """Apply one option; `value` is None for a flag (an option without value)."""
        match option.name:
            case "control-port" | "data-port" | "live-port" | "metrics-port":
                assert value is not None
                listener = option.name.removesuffix("-port")
                _check_url(listener, value, origin)
                self.urls[listener] = (value, origin)
            case "output":
                self.output = value
            case "working-directory":
                self.working_directory = value
            case "pid-file":
                self.pid_file = value
            case "log-file":
                self.log_file = value
            case "group":
                assert value is not None
                self.group = value
            case "fd-pool-size":
                assert value is not None
                self.fd_pool_size = _parse_fd_pool_size(value, origin)
            case "workers":
                assert value is not None
                self.workers = _parse_workers(value, origin)
            case "daemonize":
                self.daemonize = True
            case "background":
                self.background = True
            case "verbose":
                self.verbosity = min(self.verbosity + 1, MAX_VERBOSITY)
            case "group-output-by-session":
                self._set_group_output_by(GroupOutputBy.SESSION, option.name, origin)
            case "group-output-by-host":
                self._set_group_output_by(GroupOutputBy.HOST, option.name, origin)
            case "disallow-clear":
                self.disallow_clear = True
            case "dynamic-port-allocation":
                self.dynamic_port_allocation = True
            case "sig-parent":
                self.sig_parent = True
            case "help" | "version" | "config":
                pass  # handled before settings are applied

    def apply_config(self, entry: ConfigEntry) -> None:
        if entry.name in _CONFIG_IGNORED:
            return
        option = _OPTIONS_BY_NAME.get(entry.name)
        if option is None:
            _log.warning("%s: unrecognized option '%s' in config file", entry.origin, entry.name)
            return
        if option.takes_value:
            self.apply(option, entry.value, entry.origin)
            return
        # Flags take a boolean; false leaves the flag as it was, as in lttng.
        number = parse_config_value(entry.value)
        if number is None or number < 0:
            _log.warning(
                "%s: invalid value '%s' for option '%s'", entry.origin, entry.value, entry.name
            )
        elif number > 0 and option.name == "verbose":
            self.verbosity = min(number, MAX_VERBOSITY)
        elif number > 0:
            self.apply(option, None, entry.origin)

    def _set_group_output_by(self, wanted: GroupOutputBy, name: str, origin: str) -> None:
        # Stricter than "later wins": the two groupings exclude each other wherever they
        # come from (lttng-relayd even refuses the same one twice).
        earlier = self.group_output_by
        if earlier is not None and earlier is not wanted:
            raise CliError(
                f"--{name}{_where(origin)} conflicts with --group-output-by-{earlier.value}"
            )
        self.group_output_by = wanted


def _where(origin: str) -> str:
    return "" if origin == _COMMAND_LINE else f" ({origin})"


def _check_url(listener: str, url: str, origin: str) -> None:
    try:
        parse_uri(url)
    except UriError as error:
        raise CliError(f"invalid {listener} port URL '{url}'{_where(origin)}: {error}") from None


def _listener(
    settings: _Settings, listener: str, default_url: str, default_port: int
) -> ListenAddress:
    url, origin = settings.urls.get(listener, (default_url, _COMMAND_LINE))
    try:
        return resolved(listen_address(
            url, default_port, dynamic_port_allocation=settings.dynamic_port_allocation
        ))
    except UriError as error:
        raise CliError(f"invalid {listener} port URL '{url}'{_where(origin)}: {error}") from None


def _parse_fd_pool_size(text: str, origin: str) -> int:
    if not (text.isascii() and text.isdigit()):
        raise CliError(
            f"invalid --fd-pool-size value '{text}'{_where(origin)}: expected a number of "
            "file descriptors"
        )
    return int(text)


MAX_WORKERS = 1024


def _parse_workers(text: str, origin: str) -> int:
    if not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= MAX_WORKERS:
        raise CliError(f"invalid --workers value '{text}'{_where(origin)}: expected a number "
                       f"of processes from 1 to {MAX_WORKERS}")
    return int(text)


def _check_fd_pool_size(requested: int | None) -> None:
    """Refuse pool sizes lttng-relayd refuses: below the minimum or above RLIMIT_NOFILE."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    unlimited = soft == resource.RLIM_INFINITY
    if requested is None:
        if not unlimited and soft < RELAYD_MIN_FD_POOL_SIZE:
            raise CliError(
                f"the open file limit ({soft}) is too low: it must be at least "
                f"{RELAYD_MIN_FD_POOL_SIZE}"
            )
        return
    if requested < RELAYD_MIN_FD_POOL_SIZE:
        raise CliError(f"--fd-pool-size must be at least {RELAYD_MIN_FD_POOL_SIZE}")
    if not unlimited and requested > soft:
        raise CliError(f"--fd-pool-size {requested} exceeds the soft limit on open files ({soft})")


def _allow_clear(settings: _Settings, environ: Mapping[str, str]) -> bool:
    if settings.disallow_clear:
        return False
    value = environ.get(ENV_DISALLOW_CLEAR)
    if value is None:
        return True
    number = parse_config_value(value)
    if number is None or number < 0:
        raise CliError(f"invalid value '{value}' for {ENV_DISALLOW_CLEAR}")
    return number == 0


def _env_int(environ: Mapping[str, str], name: str) -> int | None:
    """A whole-number environment variable (C-style base prefixes allowed); None if unset
    or unusable (warned about: lttng-relayd starts anyway)."""
    value = environ.get(name)
    if value is None:
        return None
    try:
        number = int(value.strip(), 0)
    except ValueError:
        _log.warning("ignoring %s='%s': not a number", name, value)
        return None
    if number < -1:
        _log.warning("ignoring %s='%s': must be -1 or more", name, value)
        return None
    return number


def _health_check_delta(environ: Mapping[str, str]) -> float:
    value = environ.get(ENV_HEALTH_CHECK_DELTA)
    if value is None:
        return DEFAULT_HEALTH_CHECK_DELTA_S
    try:
        delta = float(value)
    except ValueError:
        delta = 0.0
    if not 0 < delta < float("inf"):
        raise CliError(f"invalid value '{value}' for {ENV_HEALTH_CHECK_DELTA}: expected a "
                       "number of seconds")
    return delta


def _network_socket_timeout_ms(environ: Mapping[str, str]) -> int:
    timeout = _env_int(environ, ENV_NETWORK_SOCKET_TIMEOUT)
    # 0 and -1 both mean "no timeout".
    return timeout if timeout is not None and timeout > 0 else 0


def _tcp_keep_alive(environ: Mapping[str, str]) -> TcpKeepAlive:
    enabled = False
    value = environ.get(ENV_TCP_KEEP_ALIVE)
    if value is not None:
        number = parse_config_value(value)
        if number in (0, 1):
            enabled = number == 1
        else:
            _log.warning("ignoring %s='%s': expected 0 or 1", ENV_TCP_KEEP_ALIVE, value)

    def positive(name: str) -> int | None:
        # 0 and -1 leave the system default.
        number = _env_int(environ, name)
        return number if number is not None and number > 0 else None

    if environ.get(ENV_TCP_KEEP_ALIVE_ABORT_THRESHOLD) is not None:
        _log.warning(
            "ignoring %s: per-socket abort threshold is not supported on this platform",
            ENV_TCP_KEEP_ALIVE_ABORT_THRESHOLD,
        )
    return TcpKeepAlive(
        enabled=enabled,
        idle_time_s=positive(ENV_TCP_KEEP_ALIVE_IDLE_TIME),
        probe_interval_s=positive(ENV_TCP_KEEP_ALIVE_PROBE_INTERVAL),
        max_probe_count=positive(ENV_TCP_KEEP_ALIVE_MAX_PROBE_COUNT),
    )


def _config_files(
    command_line: list[tuple[_Option, str | None]], home: Path | None, system_config: Path
) -> Iterator[tuple[Path, bool]]:
    """The config files to read in order, each with whether it must exist."""
    yield system_config, False
    if home is not None:
        yield home / ".lttng" / "lttng.conf", False
    explicit = [value for option, value in command_line if option.name == "config" and value]
    if explicit:
        yield _absolute(explicit[-1]), True


def _read_config_file(path: Path, required: bool) -> list[ConfigEntry]:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as error:
        if required:
            raise CliError(f"cannot read config file {path}: {error.strerror or error}") from None
        if not isinstance(error, FileNotFoundError):
            _log.warning("cannot read config file %s: %s", path, error.strerror or error)
        return []
    _log.debug("reading config file %s", path)
    return [e for e in read_config_entries(text, str(path)) if e.section == CONFIG_SECTION]


def parse_options(
    argv: Sequence[str],
    environ: Mapping[str, str],
    *,
    system_config: Path | None = None,
) -> RelaydOptions:
    """Resolve the relay's options from `argv` (without the program name), `environ` and
    the config files; raise `CliError` with a one-line message when one cannot be used.
    `system_config` replaces /etc/lttng/lttng.conf (for tests).

    `-h`/`-V` are not acted on here: see `information_request`.
    """
    command_line, others = _split_command_line(argv)
    if others:
        # lttng-relayd ignores operands; so do we, but say so.
        _log.warning("ignoring unexpected argument(s): %s", " ".join(others))
    home = home_directory(environ)

    settings = _Settings(environ)
    system_config = SYSTEM_CONFIG_PATH if system_config is None else system_config
    for path, required in _config_files(command_line, home, system_config):
        for entry in _read_config_file(path, required):
            settings.apply_config(entry)
    for option, value in command_line:
        settings.apply(option, value, _COMMAND_LINE)

    control = _listener(settings, "control", DEFAULT_CONTROL_URL, DEFAULT_CONTROL_PORT)
    data = _listener(settings, "data", DEFAULT_DATA_URL, DEFAULT_DATA_PORT)
    live = _listener(settings, "live", DEFAULT_LIVE_URL, DEFAULT_LIVE_PORT)
    metrics = (_listener(settings, "metrics", "", DEFAULT_METRICS_PORT)
               if "metrics" in settings.urls else None)
    _check_fd_pool_size(settings.fd_pool_size)

    if settings.output is not None:
        if not settings.output:
            raise CliError("empty output directory (-o, --output)")
        output_root = _absolute(settings.output)
    elif home is not None:
        output_root = _absolute(str(home / TRACE_DIR_NAME))
    else:
        raise CliError("cannot find a home directory; give an output directory with -o DIR")

    # Resolved now (symbolic links too, as lttng): a daemon moves to / before writing it.
    pid_file = Path(os.path.realpath(_absolute(settings.pid_file))) if settings.pid_file else None
    if settings.log_file is not None and not settings.log_file:
        raise CliError("empty log file path (--log-file)")
    log_file = _absolute(settings.log_file) if settings.log_file else None
    health_socket = environ.get(ENV_RELAYD_HEALTH)

    return RelaydOptions(
        control=control,
        data=data,
        live=live,
        metrics=metrics,
        output_root=output_root,
        group_output_by=settings.group_output_by or GroupOutputBy.HOST,
        allow_clear=_allow_clear(settings, environ),
        daemonize=settings.daemonize,
        background=settings.background,
        tracing_group=settings.group,
        working_directory=(
            _absolute(settings.working_directory) if settings.working_directory else None
        ),
        verbosity=settings.verbosity,
        fd_pool_size=settings.fd_pool_size,
        dynamic_port_allocation=settings.dynamic_port_allocation,
        pid_file=pid_file,
        sig_parent=settings.sig_parent,
        network_socket_timeout_ms=_network_socket_timeout_ms(environ),
        tcp_keep_alive=_tcp_keep_alive(environ),
        run_dir=run_directory(environ, home),
        health_socket=_absolute(health_socket) if health_socket else None,
        health_check_delta_s=_health_check_delta(environ),
        log_file=log_file,
        workers=settings.workers,
    )
