"""lttng's INI files (`lttng.conf`), read the way lttng's bundled reader (inih) reads them.

Pure text in, entries out: `pyrelayd.options` picks the `[relayd]` section and applies it.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Iterator

_log = logging.getLogger(__name__)


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
