"""The layering ("sans-IO all the way down"), checked on the source with `ast`, importing nothing.

Every module of src/pyrelayd is parsed. Imports under `if TYPE_CHECKING:` are skipped
everywhere: they never run. Imports inside functions count like the others.

1. protocol/ does no I/O (`test_protocol_does_no_io`). No module of pyrelayd/protocol/
   imports, itself, a module of `PROTOCOL_MAY_NOT_IMPORT`: the standard library's network,
   event loop, thread and process modules (socket, asyncio, selectors, ssl, threading,
   subprocess, queue...), uvloop, mmap, and the pyrelayd modules that do I/O (server/, logs,
   netaddr, options, cli, daemon, storage.files, storage.fdpool...). Nor does it use a name
   that does file, descriptor or terminal I/O (`PROTOCOL_MAY_NOT_CALL`): the builtins open,
   print and input, os's file/descriptor/process functions (`os.read`, `from os import write`),
   `io.open`, Path's read_/write_ methods, socket methods.

2. protocol/'s imports lead to no network or event loop (`test_protocol_imports_reach_no_
   network_nor_event_loop`). Following pyrelayd imports from protocol/ through the whole
   package reaches model/ and storage/: that is by design, the handlers apply their
   decisions to the domain model, which writes trace files (synchronously, so that tests and
   fuzzers drive a handler without an event loop). File I/O is therefore allowed along that
   path; what is not is reaching server/, logs, netaddr, options, cli, daemon, capture or
   client, or any reached module importing socket, asyncio, uvloop, selectors, select, ssl,
   threading, subprocess, queue, signal or multiprocessing (`REACHABLE_MAY_NOT_IMPORT`). The
   standard library is not followed (logging imports threading: it is not ours).

3. server/ makes no protocol decisions, as far as imports can tell
   (`test_server_takes_only_entry_points_from_protocol`). It may take from pyrelayd.protocol
   only the entry points of `SERVER_MAY_USE`: the framers, the handlers and what they return,
   the errors they raise (with their reply) and the HTTP and health reply encoders. A codec module
   imported whole (`from pyrelayd.protocol import relayd as wire`) may be used only through
   those names (`wire.ControlFramer`), never passed around. Command enums, return codes,
   message classes and struct formats stay in protocol/; server/ does not import `struct`
   either (packing or unpacking fields by hand is a codec's job). `KNOWN_EXCEPTIONS` lists the
   violations tolerated for now, each with why (none today); one that disappears must be taken
   off the list.

Each failure names the module, the line and what it imports or uses.
"""

from __future__ import annotations

import ast
import collections
import dataclasses
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"
PACKAGE = "pyrelayd"

PROTOCOL = "pyrelayd.protocol"
SERVER = "pyrelayd.server"

# Rule 1: what protocol/ modules may not import themselves (a module or any submodule of it).
PROTOCOL_MAY_NOT_IMPORT = frozenset({
    # network, event loops, threads, processes, memory-mapped files
    "socket", "socketserver", "ssl", "asyncio", "selectors", "select", "uvloop", "threading",
    "_thread", "multiprocessing", "concurrent", "subprocess", "signal", "queue", "mmap",
    "fcntl", "shutil", "tempfile", "http.client", "http.server", "urllib.request",
    # pyrelayd's I/O
    "pyrelayd.server", "pyrelayd.logs", "pyrelayd.netaddr", "pyrelayd.options",
    "pyrelayd.inifile", "pyrelayd.cli", "pyrelayd.daemon", "pyrelayd.capture",
    "pyrelayd.client", "pyrelayd.storage.files", "pyrelayd.storage.fdpool",
})
_OS_IO = frozenset({
    "open", "read", "write", "pread", "pwrite", "preadv", "pwritev", "readv", "writev",
    "sendfile", "splice", "copy_file_range", "close", "closerange", "dup", "dup2", "fsync",
    "fdatasync", "ftruncate", "truncate", "lseek", "posix_fallocate", "posix_fadvise", "mkdir",
    "makedirs", "mkfifo", "mknod", "unlink", "remove", "removedirs", "rename", "renames",
    "replace", "rmdir", "link", "symlink", "readlink", "stat", "lstat", "fstat", "statvfs",
    "fstatvfs", "listdir", "scandir", "walk", "fwalk", "access", "chmod", "fchmod", "chown",
    "fchown", "utime", "chdir", "getcwd", "pipe", "pipe2", "openpty", "fork", "forkpty", "kill",
    "system", "popen", "execv", "execve", "execvp", "execvpe", "execl", "execle", "execlp",
    "execlpe", "spawnv", "spawnve", "spawnl", "spawnle", "posix_spawn", "posix_spawnp",
    "waitpid", "wait", "eventfd", "memfd_create", "get_terminal_size", "urandom",
})
# Rule 1: names protocol/ may not use: builtins, module attributes and methods that do I/O.
PROTOCOL_MAY_NOT_CALL: Mapping[str, frozenset[str]] = {
    "builtins": frozenset({"open", "print", "input", "breakpoint"}),
    "os": _OS_IO,
    "posix": _OS_IO,
    "io": frozenset({"open", "open_code", "FileIO"}),
    # methods, whatever they are called on (Path I/O, sockets); none has a sans-IO namesake
    "methods": frozenset({
        "read_bytes", "read_text", "write_bytes", "write_text", "iterdir", "touch", "rglob",
        "symlink_to", "hardlink_to", "recv", "recv_into", "recvfrom", "recvmsg", "sendall",
        "sendto", "sendmsg", "setsockopt", "getsockopt", "makefile",
    }),
}

# Rule 2: what no module reached from protocol/ may be or import.
REACHABLE_MAY_NOT_IMPORT = frozenset({
    "socket", "socketserver", "ssl", "asyncio", "selectors", "select", "uvloop", "threading",
    "_thread", "multiprocessing", "concurrent", "subprocess", "signal", "queue",
    "pyrelayd.server", "pyrelayd.logs", "pyrelayd.netaddr", "pyrelayd.options", "pyrelayd.cli",
    "pyrelayd.daemon", "pyrelayd.capture", "pyrelayd.client",
})

# Rule 3: what server/ may take from pyrelayd.protocol, by module.
SERVER_MAY_USE: Mapping[str, frozenset[str]] = {
    "pyrelayd.protocol.relayd": frozenset({"ControlFramer", "DataFramer", "ProtocolError"}),
    "pyrelayd.protocol.control": frozenset({"ControlHandler", "Outcome"}),
    "pyrelayd.protocol.data": frozenset({"DataHandler"}),
    "pyrelayd.protocol.live": frozenset({
        "LiveFramer", "LiveHandler", "Output", "PacketRange", "ViewerRefused"}),
    "pyrelayd.protocol.viewer": frozenset({"ProtocolError"}),
    # the metrics endpoint: requests framed, then answered as the Exchange decides
    "pyrelayd.protocol.http": frozenset({
        "Exchange", "HttpError", "RequestReader", "encode_response"}),
    # the health socket: the one request framed, what to do with it, the bitmask encoded
    "pyrelayd.protocol.health": frozenset({
        "HealthRequestReader", "Check", "Close", "encode_reply"}),
    # --workers: the router's handler (where a viewer request goes, the reply it gets)
    "pyrelayd.protocol.liveroute": frozenset({"LiveRouter", "Route"}),
}
SERVER_MAY_NOT_IMPORT = frozenset({"struct", "_struct", "ctypes"})

# (module, what) -> why it is tolerated for now. Lines are left out: they move.
# e.g. ("pyrelayd.server.x", "imports struct"): "why, and where it should go"
KNOWN_EXCEPTIONS: Mapping[tuple[str, str], str] = {}


@dataclasses.dataclass(frozen=True)
class Violation:
    module: str
    line: int
    what: str

    def __str__(self) -> str:
        return f"{self.module}:{self.line}: {self.what}"


@dataclasses.dataclass(frozen=True)
class Import:
    """One imported module (`names`: the names taken from it by `from M import ...`)."""

    module: str
    line: int
    names: tuple[tuple[str, str], ...] = ()  # (name, local name)
    local: str | None = None  # the name `import M [as X]` binds...
    local_module: str | None = None  # ...to this module (`import a.b` binds `a` to a)


# ---------------------------------------------------------------------------- reading source


def module_files(src: Path = SRC) -> dict[str, Path]:
    """Every module of the package, by dotted name (a package by its own name)."""
    modules = {}
    for path in sorted((src / PACKAGE).rglob("*.py")):
        parts = path.relative_to(src).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def run_time_nodes(tree: ast.AST) -> Iterator[ast.AST]:
    """Every node of `tree` except the bodies of `if TYPE_CHECKING:` (never run)."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(reversed(node.orelse))
            continue
        stack.extend(reversed(list(ast.iter_child_nodes(node))))


def _absolute(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    base = module.split(".")
    if not is_package:
        base = base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


def imports_of(module: str, tree: ast.AST, is_package: bool = False) -> list[Import]:
    found = []
    for node in run_time_nodes(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                local = alias.asname or alias.name.split(".")[0]
                bound = alias.name if alias.asname else alias.name.split(".")[0]
                found.append(Import(alias.name, node.lineno, local=local, local_module=bound))
        elif isinstance(node, ast.ImportFrom):
            source = _absolute(module, is_package, node)
            names = tuple((alias.name, alias.asname or alias.name) for alias in node.names)
            found.append(Import(source, node.lineno, names=names))
    return found


def _matches(module: str, prefixes: Iterable[str]) -> str | None:
    """The entry of `prefixes` that `module` is or is inside of."""
    for prefix in prefixes:
        if module == prefix or module.startswith(prefix + "."):
            return prefix
    return None


def imported_modules(imp: Import) -> Iterator[str]:
    """The modules an import may load: the module, and `M.name` for `from M import name`."""
    yield imp.module
    for name, _local in imp.names:
        if name != "*":
            yield f"{imp.module}.{name}"


# ---------------------------------------------------------------------------- rule 1


def _dotted(node: ast.expr) -> str | None:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        return ".".join([node.id, *reversed(parts)])
    return None


def protocol_violations(module: str, tree: ast.AST, is_package: bool = False) -> list[Violation]:
    found = []
    modules_bound: dict[str, str] = {}  # local name -> module (os, io, posix)
    names_bound: dict[str, str] = {}  # local name -> "module.name"
    for imp in imports_of(module, tree, is_package):
        for candidate in imported_modules(imp):
            if _matches(candidate, PROTOCOL_MAY_NOT_IMPORT):
                found.append(Violation(module, imp.line, f"imports {candidate}"))
                break
        if imp.local is not None and imp.local_module is not None:
            modules_bound[imp.local] = imp.local_module
        for name, local in imp.names:
            names_bound[local] = f"{imp.module}.{name}"
            if name in PROTOCOL_MAY_NOT_CALL.get(imp.module, ()):
                found.append(Violation(module, imp.line, f"imports {imp.module}.{name} (I/O)"))
    for node in run_time_nodes(tree):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load):
            if node.id in PROTOCOL_MAY_NOT_CALL["builtins"] and node.id not in names_bound:
                found.append(Violation(module, node.lineno, f"uses {node.id}() (I/O)"))
        elif isinstance(node, ast.Attribute):
            if node.attr in PROTOCOL_MAY_NOT_CALL["methods"]:
                found.append(Violation(module, node.lineno, f"uses .{node.attr} (I/O)"))
            dotted = _dotted(node.value)
            target = modules_bound.get(dotted or "")
            if target is not None and node.attr in PROTOCOL_MAY_NOT_CALL.get(target, ()):
                found.append(Violation(module, node.lineno, f"uses {target}.{node.attr} (I/O)"))
    return found


# ---------------------------------------------------------------------------- rule 2


def pyrelayd_imports(module: str, imp: Import, known: Iterable[str]) -> Iterator[str]:
    """The pyrelayd modules an import runs: the one named, its parent packages, submodules."""
    known = set(known)
    for candidate in imported_modules(imp):
        parts = candidate.split(".")
        for end in range(1, len(parts) + 1):
            name = ".".join(parts[:end])
            if name in known and name != module:
                yield name


def reach_violations(start: Iterable[str], trees: Mapping[str, tuple[ast.AST, bool]]
                     ) -> list[Violation]:
    """Follow pyrelayd imports from `start`; each forbidden module reached, with the path."""
    came_from: dict[str, tuple[str, int] | None] = dict.fromkeys(start)
    queue = collections.deque(came_from)
    found = []

    def path_to(module: str) -> str:
        chain = [module]
        step = came_from[module]
        while step is not None:
            chain.append(step[0])
            step = came_from[step[0]]
        return " -> ".join(reversed(chain))

    while queue:
        module = queue.popleft()
        tree, is_package = trees[module]
        for imp in imports_of(module, tree, is_package):
            for candidate in imported_modules(imp):
                forbidden = _matches(candidate, REACHABLE_MAY_NOT_IMPORT)
                if forbidden is not None and not _matches(candidate, [PACKAGE]):
                    found.append(Violation(module, imp.line,
                                           f"imports {forbidden}, reached by {path_to(module)}"))
                    break
            for reached in pyrelayd_imports(module, imp, trees):
                if reached not in came_from:
                    came_from[reached] = (module, imp.line)
                    queue.append(reached)
                    if _matches(reached, REACHABLE_MAY_NOT_IMPORT):
                        found.append(Violation(
                            module, imp.line,
                            f"imports {reached}, reached by {path_to(module)}"))
    return found


# ---------------------------------------------------------------------------- rule 3


def server_violations(module: str, tree: ast.AST, is_package: bool = False) -> list[Violation]:
    found = []
    bound: dict[str, str] = {}  # local name -> the module it names (pyrelayd, its protocol...)
    for imp in imports_of(module, tree, is_package):
        if _matches(imp.module, SERVER_MAY_NOT_IMPORT):
            found.append(Violation(module, imp.line, f"imports {imp.module}"))
        if imp.local is not None and imp.local_module is not None:  # import M [as X]
            bound[imp.local] = imp.local_module
        for name, local in imp.names:
            qualified = f"{imp.module}.{name}"
            if _matches(qualified, [PROTOCOL]) and qualified.count(".") <= 2:
                bound[local] = qualified  # from pyrelayd.protocol import relayd [as wire]
            elif _matches(imp.module, [PROTOCOL]) and name not in SERVER_MAY_USE.get(
                    imp.module, ()):
                found.append(Violation(module, imp.line, f"imports {name} from {imp.module}"))
    for node in _outermost_uses(tree, bound):
        local, _, rest = (_dotted(node) or "").partition(".")
        qualified = ".".join(filter(None, (bound[local], rest)))
        if not _matches(qualified, [PROTOCOL]):
            continue  # e.g. pyrelayd.config.X, bound by `import pyrelayd.protocol.relayd`
        parts = qualified.split(".")
        target, attribute = ".".join(parts[:3]), ".".join(parts[3:4])
        if not attribute:
            found.append(Violation(module, node.lineno,
                                   f"uses the codec module {target} as a whole ({local})"))
        elif attribute not in SERVER_MAY_USE.get(target, ()):
            found.append(Violation(module, node.lineno, f"uses {attribute} from {target}"))
    return found


def _outermost_uses(tree: ast.AST, local_names: Mapping[str, str]) -> Iterator[ast.expr]:
    """Each use of one of `local_names`: `wire.X.y` as one node, a bare `wire` as another."""
    stack: list[ast.AST] = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
            continue
        if isinstance(node, ast.Attribute | ast.Name):
            dotted = _dotted(node)
            if dotted is not None:
                if dotted.split(".")[0] in local_names and isinstance(
                        getattr(node, "ctx", None), ast.Load):
                    yield node
                if isinstance(node, ast.Name) or dotted.split(".")[0] in local_names:
                    continue
        stack.extend(ast.iter_child_nodes(node))


# ---------------------------------------------------------------------------- the tests


def _parse(path: Path) -> ast.AST:
    return ast.parse(path.read_text(encoding="utf-8"), str(path))


def _package_trees() -> dict[str, tuple[ast.AST, bool]]:
    return {name: (_parse(path), path.name == "__init__.py")
            for name, path in module_files().items()}


TREES = _package_trees()


def _under(prefix: str) -> list[str]:
    return sorted(name for name in TREES if _matches(name, [prefix]))


def _report(rule: str, violations: Iterable[Violation]) -> str:
    return rule + ":\n" + "\n".join(f"  {v}" for v in violations)


def _unexpected(violations: Iterable[Violation],
                known: Mapping[tuple[str, str], str] = KNOWN_EXCEPTIONS) -> list[Violation]:
    return [v for v in violations if (v.module, v.what) not in known]


def test_the_layers_are_where_the_rules_look() -> None:
    # A wrong path must not make every rule pass on nothing.
    assert {"pyrelayd.protocol.live", "pyrelayd.protocol.uri", "pyrelayd.protocol.relayd"} <= set(
        _under(PROTOCOL))
    assert {"pyrelayd.server.control", "pyrelayd.server.live", "pyrelayd.server.health",
            "pyrelayd.server.http"} <= set(_under(SERVER))
    assert {"pyrelayd.protocol.health", "pyrelayd.protocol.http"} <= set(_under(PROTOCOL))


@pytest.mark.parametrize("module", _under(PROTOCOL))
def test_protocol_does_no_io(module: str) -> None:
    tree, is_package = TREES[module]
    violations = _unexpected(protocol_violations(module, tree, is_package))
    assert not violations, _report("protocol/ must do no I/O (see tests/unit/test_layers.py)",
                                   violations)


def test_protocol_imports_reach_no_network_nor_event_loop() -> None:
    violations = _unexpected(reach_violations(_under(PROTOCOL), TREES))
    assert not violations, _report(
        "what protocol/ imports must not lead to the network, an event loop or the server",
        violations)


@pytest.mark.parametrize("module", _under(SERVER))
def test_server_takes_only_entry_points_from_protocol(module: str) -> None:
    tree, is_package = TREES[module]
    violations = _unexpected(server_violations(module, tree, is_package))
    assert not violations, _report(
        "server/ may use only protocol/'s framers, handlers, errors and reply encoders "
        "(SERVER_MAY_USE in tests/unit/test_layers.py), and no struct", violations)


def test_known_exceptions_still_exist() -> None:
    found = {(v.module, v.what) for name in _under(SERVER)
             for v in server_violations(name, *TREES[name])}
    found |= {(v.module, v.what) for name in _under(PROTOCOL)
              for v in protocol_violations(name, *TREES[name])}
    stale = sorted(set(KNOWN_EXCEPTIONS) - found)
    assert not stale, f"fixed: take these off KNOWN_EXCEPTIONS: {stale}"


def test_a_known_exception_is_matched_by_module_and_what_whatever_the_line() -> None:
    violations = [Violation("pyrelayd.server.fake", 3, "imports struct"),
                  Violation("pyrelayd.server.fake", 9, "imports ctypes"),
                  Violation("pyrelayd.server.other", 3, "imports struct")]
    known = {("pyrelayd.server.fake", "imports struct"): "being moved"}
    assert _unexpected(violations, known) == violations[1:]


# ---------------------------------------------------------------------------- the checks


def _check(checker: str, source: str, module: str = "pyrelayd.protocol.fake") -> list[str]:
    tree = ast.parse(source)
    if checker == "protocol":
        return [str(v) for v in protocol_violations(module, tree)]
    if checker == "server":
        return [str(v) for v in server_violations(module, tree)]
    trees = {**TREES, module: (tree, False)}
    return [str(v) for v in reach_violations([module], trees)]


@pytest.mark.parametrize(("source", "expected"), [
    ("import socket", "pyrelayd.protocol.fake:1: imports socket"),
    ("import asyncio.events", "pyrelayd.protocol.fake:1: imports asyncio.events"),
    ("from concurrent import futures", "pyrelayd.protocol.fake:1: imports concurrent"),
    ("from pyrelayd.logs import TRACE", "pyrelayd.protocol.fake:1: imports pyrelayd.logs"),
    ("from pyrelayd.storage import fdpool",
     "pyrelayd.protocol.fake:1: imports pyrelayd.storage.fdpool"),
    ("from .. import server", "pyrelayd.protocol.fake:1: imports pyrelayd.server"),
    ("def f():\n    import threading", "pyrelayd.protocol.fake:2: imports threading"),
    ("x = open('f')", "pyrelayd.protocol.fake:1: uses open() (I/O)"),
    ("import os\nos.write(1, b'')", "pyrelayd.protocol.fake:2: uses os.write (I/O)"),
    ("import os as o\no.pread(1, 2, 3)", "pyrelayd.protocol.fake:2: uses os.pread (I/O)"),
    ("from os import read", "pyrelayd.protocol.fake:1: imports os.read (I/O)"),
    ("p.read_bytes()", "pyrelayd.protocol.fake:1: uses .read_bytes (I/O)"),
])
def test_the_protocol_check_catches(source: str, expected: str) -> None:
    assert expected in _check("protocol", source)


@pytest.mark.parametrize("source", [
    "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import socket",
    "import os\nos.strerror(1)",  # pure
    "import struct, logging, http, io\nio.BytesIO()",
    "from pyrelayd.constants import TRACE",
    "from pyrelayd.storage.paths import UnsafeNameError",
    "def open_stream(): ...\ndef f(o):\n    o.open_stream()",
])
def test_the_protocol_check_allows(source: str) -> None:
    assert _check("protocol", source) == []


def test_the_reach_check_names_the_path() -> None:
    assert ("pyrelayd.protocol.fake:1: imports pyrelayd.options, reached by "
            "pyrelayd.protocol.fake") in _check("reach", "from pyrelayd import options")
    found = _check("reach", "import pyrelayd.netaddr")
    assert ("pyrelayd.netaddr:11: imports socket, reached by "
            "pyrelayd.protocol.fake -> pyrelayd.netaddr") in found


@pytest.mark.parametrize(("source", "expected"), [
    ("import struct", "pyrelayd.server.fake:1: imports struct"),
    ("from pyrelayd.protocol.relayd import Command",
     "pyrelayd.server.fake:1: imports Command from pyrelayd.protocol.relayd"),
    ("from pyrelayd.protocol import relayd as wire\nwire.Command.CONNECT",
     "pyrelayd.server.fake:2: uses Command from pyrelayd.protocol.relayd"),
    ("import pyrelayd.protocol.viewer as v\nv.decode_request(b'')",
     "pyrelayd.server.fake:2: uses decode_request from pyrelayd.protocol.viewer"),
    ("from pyrelayd.protocol import relayd\nf(relayd)",
     "pyrelayd.server.fake:2: uses the codec module pyrelayd.protocol.relayd as a whole (relayd)"),
    ("from pyrelayd.protocol.index import HEADER",
     "pyrelayd.server.fake:1: imports HEADER from pyrelayd.protocol.index"),
    ("import pyrelayd.protocol.relayd\npyrelayd.protocol.relayd.ReturnCode.OK",
     "pyrelayd.server.fake:2: uses ReturnCode from pyrelayd.protocol.relayd"),
    ("from pyrelayd import protocol\nprotocol.viewer.Command",
     "pyrelayd.server.fake:2: uses Command from pyrelayd.protocol.viewer"),
    ("from pyrelayd.protocol.health import REPLY",
     "pyrelayd.server.fake:1: imports REPLY from pyrelayd.protocol.health"),
    ("from pyrelayd.protocol import health\nhealth.HEALTH_CMD_CHECK",
     "pyrelayd.server.fake:2: uses HEALTH_CMD_CHECK from pyrelayd.protocol.health"),
    ("from pyrelayd.protocol.http import METHODS",
     "pyrelayd.server.fake:1: imports METHODS from pyrelayd.protocol.http"),
])
def test_the_server_check_catches(source: str, expected: str) -> None:
    assert expected in _check("server", source, "pyrelayd.server.fake")


@pytest.mark.parametrize("source", [
    "from pyrelayd.protocol import relayd as wire\nframer = wire.ControlFramer()\n"
    "try:\n    pass\nexcept wire.ProtocolError as e:\n    pass",
    "from pyrelayd.protocol.live import LiveFramer, LiveHandler",
    "from pyrelayd.protocol.http import encode_response",
    "from pyrelayd.protocol.http import Exchange, HttpError, RequestReader",
    "from pyrelayd.protocol.health import Check, Close, HealthRequestReader, encode_reply",
    "import pyrelayd.protocol.live\nimport pyrelayd.config\n"
    "pyrelayd.protocol.live.LiveHandler\npyrelayd.config.ListenAddress",
])
def test_the_server_check_allows(source: str) -> None:
    assert _check("server", source, "pyrelayd.server.fake") == []
