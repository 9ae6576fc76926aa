"""Run one fuzz target under atheris (libFuzzer): `python fuzz/run.py TARGET [libFuzzer args]`.

    python fuzz/run.py relayd_request -runs=100000 fuzz/corpus/relayd_request
    python fuzz/run.py --list

pyrelayd's modules are instrumented for coverage as they are imported. A crash (an exception
the target does not expect, or a failed check) stops the run with libFuzzer's report and the
input saved as `crash-*`; `-rss_limit_mb` and `-timeout` catch unbounded allocation and hangs.
"""

from __future__ import annotations

import resource
import signal
import sys
from pathlib import Path

import atheris  # type: ignore[import-untyped]

sys.path.insert(0, str(Path(__file__).resolve().parent))

# A peer's padding sizes are u32s the relay writes out as zeros (as lttng-relayd does): one
# 45-byte SEND_METADATA writes 4 GiB. The handler targets write into /dev/shm, where file
# bytes are memory, so a few such requests exhausted the machine's RAM (the kernel's OOM
# killer, not -rss_limit_mb, stopped the run). Files stop at 16 MiB here: beyond, a write
# fails with EFBIG, which the relay handles as it does a full disk (-handle_xfsz=0 keeps
# libFuzzer from calling that a crash).
FILE_SIZE_LIMIT = 16 << 20
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (FILE_SIZE_LIMIT, FILE_SIZE_LIMIT))

with atheris.instrument_imports(include=["pyrelayd"]):
    import targets

    from pyrelayd.protocol import viewer

# The viewer codec writes each fixed message's encode/decode at import time (as dataclasses
# writes __init__): instrument those functions too, or the fuzzer would not see their branches.
for _kind in vars(viewer).values():
    if isinstance(_kind, type) and issubclass(_kind, viewer.FixedMessage):
        for _name in ("encode", "decode"):
            _function = getattr(_kind.__dict__.get(_name), "__func__", _kind.__dict__.get(_name))
            if _function is not None and _function.__code__.co_filename == "<string>":
                atheris.instrument_func(_function)


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in targets.TARGETS:
        if len(sys.argv) >= 2 and sys.argv[1] == "--list":
            print("\n".join(targets.TARGETS))
            return
        sys.exit(f"usage: {sys.argv[0]} TARGET [libFuzzer args]; targets: "
                 + ", ".join(targets.TARGETS))
    target = targets.TARGETS[sys.argv[1]]
    atheris.Setup([sys.argv[0], "-handle_xfsz=0", *sys.argv[2:]], target)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
