"""The `pyrelayd` program: lttng-relayd's command line, then the process, then the server.

The rooms: `pyrelayd.options` resolves the command line, environment and config files
(`pyrelayd.inifile` reads those) into a `RelaydOptions`; `pyrelayd.daemon` detaches and
reports readiness; `main` here strings them together and hands over to `pyrelayd.server.app`.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import sys
from collections.abc import Sequence

from pyrelayd import logs
from pyrelayd.config import RelaydOptions
from pyrelayd.daemon import (
    DaemonParent,
    Readiness,
    ReadyCallback,
    daemonize,
    port_file_directory,
    write_pid_file,
    write_value_file,
)
from pyrelayd.inifile import ConfigEntry, parse_config_value, read_config_entries
from pyrelayd.options import (
    PROG,
    USAGE,
    VERSION_LINE,
    CliError,
    information_request,
    parse_options,
)
from pyrelayd.server.health import make_run_directory

_log = logging.getLogger(__name__)

__all__ = [
    "USAGE",
    "VERSION_LINE",
    "CliError",
    "ConfigEntry",
    "ReadyCallback",
    "configure_logging",
    "information_request",
    "main",
    "parse_config_value",
    "parse_options",
    "port_file_directory",
    "read_config_entries",
    "write_value_file",
]


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
            daemon_pipe = daemonize(close_stdio=not options.background)
        except DaemonParent as parent:
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
            write_pid_file(options.pid_file)
        except OSError as error:
            return _error(f"cannot write PID file {options.pid_file}: {error.strerror}")

    readiness = Readiness(options, daemon_pipe, sig_parent_pid)
    try:
        # Imported late: the server (and its event loop) must start after daemonizing.
        app = importlib.import_module("pyrelayd.server.app")
        return int(app.run(options, on_ready=readiness))
    finally:
        readiness.remove_port_files()
        if options.pid_file is not None:
            with contextlib.suppress(FileNotFoundError):
                options.pid_file.unlink()
