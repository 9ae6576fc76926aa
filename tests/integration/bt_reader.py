"""Print every event of the CTF trace(s) under a path as JSON lines, using the bt2 bindings.

usage: /usr/bin/python3 bt_reader.py PATH

Run as a child process by `lttng_env.read_trace` so that a trace which crashes or hangs
babeltrace2 cannot take the test process with it. Each line: {"name", "timestamp_ns", "fields"}.
"""

from __future__ import annotations

import json
import sys

import bt2  # type: ignore[import-untyped]


def to_python(field: object) -> object:
    if isinstance(field, bt2._StringFieldConst):
        return str(field)
    if isinstance(field, bt2._BoolFieldConst):
        return bool(field)
    if isinstance(field, bt2._IntegerFieldConst | bt2._EnumerationFieldConst):
        return int(field)
    if isinstance(field, bt2._RealFieldConst):
        return float(field)
    if isinstance(field, bt2._StructureFieldConst):
        return {name: to_python(value) for name, value in field.items()}
    if isinstance(field, bt2._ArrayFieldConst):
        return [to_python(value) for value in field]
    if isinstance(field, bt2._OptionFieldConst | bt2._VariantFieldConst):
        return to_python(field.field) if field.field is not None else None
    return repr(field)


def main() -> None:
    iterator = bt2.TraceCollectionMessageIterator(sys.argv[1])
    out = sys.stdout
    for message in iterator:
        if type(message) is not bt2._EventMessageConst:
            continue
        event = message.event
        try:
            timestamp = message.default_clock_snapshot.ns_from_origin
        except Exception:
            timestamp = None
        payload = event.payload_field
        fields = to_python(payload) if payload is not None else {}
        json.dump({"name": event.name, "timestamp_ns": timestamp, "fields": fields}, out)
        out.write("\n")


if __name__ == "__main__":
    main()
