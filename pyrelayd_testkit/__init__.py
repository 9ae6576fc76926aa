"""What the tests and the benchmarks share: the one relay launcher and the LTTng peers.

* `relays`: `start_relay` starts pyrelayd or the C lttng-relayd (ports without races, CPU
  pinning and open-file limits for benchmarks), `Relay` measures and stops it.
* `lttng`: the real LTTng peers (session daemons in private namespaces, the Debian sid chroot
  with LTTng 2.16, traced applications, babeltrace2, live viewers) and trace-reading helpers.
* `processes`: waiting for, running, stopping and measuring processes by pid.
* `ports`: TCP ports for peers that cannot take port 0, and reading back the ones that can.

It lives beside `tests/` and `bench/` (not in `src/`): it is not part of pyrelayd, and it
needs this checkout (the traced applications' sources, `scripts/peers-sid`'s chroot).
"""
