"""Python-agent test application: logs COUNT records `seq=N` on logger `pyrelayd.test`.

usage: /usr/bin/python3 agent_app.py COUNT [FIRST_SEQ]

Importing `lttngust` registers the agent with the session daemon (waiting up to
LTTNG_UST_PYTHON_REGISTER_TIMEOUT ms), after which enabled loggers reach the `lttng_python`
domain as `lttng_python:event` events.
"""

import logging
import sys

import lttngust  # type: ignore[import-untyped]  # noqa: F401  (registers the agent)


def main() -> None:
    count = int(sys.argv[1])
    first_seq = int(sys.argv[2]) if len(sys.argv) > 2 else 0
    logger = logging.getLogger("pyrelayd.test")
    logger.setLevel(logging.DEBUG)
    for seq in range(first_seq, first_seq + count):
        logger.info("seq=%d", seq)


if __name__ == "__main__":
    main()
