"""The lttng-relayd command line: options, config files, environment and daemonizing.

`parse_options` turns a command line and an environment into a `RelaydOptions` without side
effects (beyond reading config files and resolving listener host names); `main` then sets up
the process (logging, daemon, working directory, PID file) and hands over to the server.

Settings apply in this order, later ones winning: `LTTNG_RELAYD_WORKING_DIRECTORY`, the
`[relayd]` section of `/etc/lttng/lttng.conf`, of `$LTTNG_HOME/.lttng/lttng.conf`, of the
`-f` file, then the command line. Config keys are the long option names.
"""

from __future__ import annotations

import contextlib
import dataclasses
import getopt
import importlib
import logging
import os
import pwd
import re
import resource
import signal
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

from pyrelayd import __version__, logs
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
from pyrelayd.protocol.uri import UriError, listen_address, parse_uri
from pyrelayd.server.health import RUN_SUBDIRECTORY, make_run_directory

PROG = "pyrelayd"
COMPATIBLE_WITH = "lttng-relayd 2.13"
SYSTEM_CONFIG_PATH = Path("/etc/lttng/lttng.conf")
CONFIG_SECTION = "relayd"
SYSTEM_RUN_DIR = Path("/var/run/lttng")
TRACE_DIR_NAME = "lttng-traces"
# Port files (--dynamic-port-allocation) go to RUN_DIR/relayd/{control,data,live}.port,
# next to the health socket.
RELAYD_RUN_SUBDIR = RUN_SUBDIRECTORY
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

# The server calls this once every listener is bound, with {"control": port, ...}.
ReadyCallback = Callable[[Mapping[str, int]], None]


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


# --- Config files -------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ConfigEntry:
    section: str
    name: str
    value: str
    origin: str  # "PATH:LINE", for messages


def read_config_entries(text: str, path: str) -> Iterator[ConfigEntry]:
    """The name=value entries of an INI file, in order, as lttng's INI reader sees them.

    Like lttng (inih): `;` or `#` start a comment line, `;` after a blank ends a value,
    `name: value` works too, an indented line continues the previous name (yielding it
    again), keys and sections are case-sensitive and repeat freely. Malformed lines are
    skipped with a warning rather than refused, as lttng ignores them.
    """
    section = ""
    previous_name = ""
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.removeprefix("\ufeff") if number == 1 else raw
        stripped = line.strip()
        origin = f"{path}:{number}"
        if not stripped or stripped[0] in ";#":
            continue
        if previous_name and line[0].isspace():
            yield ConfigEntry(section, previous_name, _strip_inline_comment(stripped), origin)
            continue
        if stripped.startswith("["):
            end = _find_outside_comment(stripped, "]", 1)
            if end is None:
                _log.warning("%s: ignoring section line without ']'", origin)
            else:
                section = stripped[1:end]
                previous_name = ""
            continue
        end = _find_outside_comment(stripped, "=")
        if end is None:
            end = _find_outside_comment(stripped, ":")
        if end is None:
            _log.warning("%s: ignoring line without '=' or ':'", origin)
            continue
        name = stripped[:end].rstrip()
        value = _strip_inline_comment(stripped[end + 1 :].lstrip())
        previous_name = name
        yield ConfigEntry(section, name, value, origin)


def _find_outside_comment(text: str, char: str, start: int = 0) -> int | None:
    """Index of `char` in `text` before any ';' comment (one that follows a blank)."""
    for index in range(start, len(text)):
        if text[index] == char:
            return index
        if text[index] == ";" and index > 0 and text[index - 1].isspace():
            return None
    return None


def _strip_inline_comment(value: str) -> str:
    match = re.search(r"\s;", value)
    return (value[: match.start()] if match else value).rstrip()


def parse_config_value(text: str) -> int | None:
    """lttng's reading of a config/environment value: a number, yes/true/on = 1,
    no/false/off = 0; None when it is none of these."""
    # strtoul-like: leading digits win, whatever follows them.
    match = re.match(r"\s*([+-]?)(\d+)", text)
    if match:
        number = int(match.group(2))
        return -number if match.group(1) == "-" else number
    lowered = text.lower()
    if lowered in ("yes", "true", "on"):
        return 1
    if lowered in ("no", "false", "off"):
        return 0
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
        return listen_address(
            url, default_port, dynamic_port_allocation=settings.dynamic_port_allocation
        )
    except UriError as error:
        raise CliError(f"invalid {listener} port URL '{url}'{_where(origin)}: {error}") from None


def _parse_fd_pool_size(text: str, origin: str) -> int:
    if not (text.isascii() and text.isdigit()):
        raise CliError(
            f"invalid --fd-pool-size value '{text}'{_where(origin)}: expected a number of "
            "file descriptors"
        )
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
    )


# --- Process setup ------------------------------------------------------------------------


def configure_logging(options: RelaydOptions) -> None:
    """stderr in the foreground; the --log-file instead when given; as a daemon (-d, -b)
    without a log file, syslog (and the console too with -b, which keeps it). Raises
    OSError when the log file cannot be opened."""
    if options.log_file is not None:
        logs.configure(options.verbosity, log_file=options.log_file, stderr=False)
        return
    daemon = options.daemonize or options.background
    logs.configure(options.verbosity, syslog=daemon, stderr=not options.daemonize)
    syslog = logs.syslog_handler()
    if syslog is not None and not syslog.connected():
        print(f"{PROG}: warning: cannot log to syslog ({syslog.address}): the daemon's "
              "messages are lost; use --log-file", file=sys.stderr, flush=True)


def _error(message: str) -> int:
    print(f"{PROG}: error: {message}", file=sys.stderr, flush=True)
    return 1


class _DaemonParent(Exception):
    """Raised in the process that started the daemon: it exits with `status`."""

    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


def _daemonize(close_stdio: bool) -> int:
    """Turn this process into a daemon (fork, setsid, fork, chdir /).

    The starting process waits until the daemon reports readiness on a pipe, then exits 0;
    it exits 1 if the daemon dies first (EOF). In the daemon, returns the pipe's write end,
    to be written to once listening; raises `_DaemonParent` in the starting process.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    read_end, write_end = os.pipe()
    child = os.fork()
    if child != 0:
        os.close(write_end)
        with os.fdopen(read_end, "rb") as readiness:
            ready = readiness.read(1)
        os.waitpid(child, 0)  # the intermediate process, gone right after its own fork
        raise _DaemonParent(0 if ready else 1)
    os.close(read_end)
    os.setsid()
    # A second fork: the daemon is no session leader, so it never gains a controlling tty.
    if os.fork() != 0:
        os._exit(0)
    with contextlib.suppress(OSError):
        os.chdir("/")
    if close_stdio:
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        if null > 2:
            os.close(null)
    return write_end


def port_file_directory(options: RelaydOptions) -> Path:
    return options.run_dir / RELAYD_RUN_SUBDIR


def write_value_file(path: Path, value: int) -> None:
    """Write "VALUE\\n" to `path` atomically, so a reader never sees a partial number."""
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(f"{value}\n", encoding="ascii")
    os.replace(temporary, path)


class _Readiness:
    """What happens once the server listens: port files, then the waiting processes."""

    def __init__(
        self, options: RelaydOptions, daemon_pipe: int | None, sig_parent_pid: int | None
    ) -> None:
        self._options = options
        self._daemon_pipe = daemon_pipe
        self._sig_parent_pid = sig_parent_pid
        self.port_files: list[Path] = []

    def __call__(self, ports: Mapping[str, int]) -> None:
        if self._options.dynamic_port_allocation:
            directory = port_file_directory(self._options)
            for listener in ("control", "data", "live"):
                if listener in ports:
                    path = directory / f"{listener}.port"
                    write_value_file(path, ports[listener])
                    if path not in self.port_files:
                        self.port_files.append(path)
        _log.info("listening: %s", ", ".join(f"{k} port {v}" for k, v in ports.items()))
        if self._daemon_pipe is not None:
            os.write(self._daemon_pipe, b"\n")
            os.close(self._daemon_pipe)
            self._daemon_pipe = None
        if self._sig_parent_pid is not None:
            try:
                os.kill(self._sig_parent_pid, signal.SIGUSR1)
            except ProcessLookupError:
                _log.warning("cannot signal parent process %d: it is gone", self._sig_parent_pid)
            self._sig_parent_pid = None

    def remove_port_files(self) -> None:
        for path in self.port_files:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()


def _write_pid_file(path: Path) -> None:
    path.write_text(f"{os.getpid()}\n", encoding="ascii")
    path.chmod(0o644)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the relay daemon as `lttng-relayd` would; return the exit status."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    logs.configure(0)
    try:
        information = information_request(arguments)
        if information is not None:
            print(information)
            return 0
        options = parse_options(arguments, os.environ)
    except CliError as error:
        return _error(str(error))
    try:
        configure_logging(options)
    except OSError as error:
        return _error(f"cannot open log file {options.log_file}: {error.strerror}")
    # The parent to signal is the one that started us, not the daemon's.
    sig_parent_pid = os.getppid() if options.sig_parent else None

    try:
        options.output_root.mkdir(mode=0o770, parents=True, exist_ok=True)
    except OSError as error:
        return _error(f"cannot create output directory {options.output_root}: {error.strerror}")
    # For the health socket and the port files, as lttng-relayd (always, even when
    # LTTNG_RELAYD_HEALTH puts the socket elsewhere).
    try:
        make_run_directory(options.run_dir, options.tracing_group)
        make_run_directory(port_file_directory(options), options.tracing_group)
    except OSError as error:
        return _error(f"cannot create run directory {error.filename}: {error.strerror}")

    daemon_pipe: int | None = None
    if options.daemonize or options.background:
        try:
            daemon_pipe = _daemonize(close_stdio=not options.background)
        except _DaemonParent as parent:
            return parent.status
    return _run_daemon(options, daemon_pipe, sig_parent_pid)


def _run_daemon(options: RelaydOptions, daemon_pipe: int | None, sig_parent_pid: int | None) -> int:
    if options.working_directory is not None:
        # lttng-relayd's own messages: its regression tests (and operators' scripts) grep them.
        try:
            os.chdir(options.working_directory)
        except OSError as error:
            return _error(
                f'Failed to change working directory to "{options.working_directory}":'
                f" {error.strerror}"
            )
        if not os.access(options.working_directory, os.W_OK):
            _log.debug('Working directory "%s" is not writable', options.working_directory)
    if options.pid_file is not None:
        try:
            _write_pid_file(options.pid_file)
        except OSError as error:
            return _error(f"cannot write PID file {options.pid_file}: {error.strerror}")

    readiness = _Readiness(options, daemon_pipe, sig_parent_pid)
    try:
        # Imported late: the server (and its event loop) must start after daemonizing.
        app = importlib.import_module("pyrelayd.server.app")
        return int(app.run(options, on_ready=readiness))
    finally:
        readiness.remove_port_files()
        if options.pid_file is not None:
            with contextlib.suppress(FileNotFoundError):
                options.pid_file.unlink()
