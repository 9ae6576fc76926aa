"""Stand-ins for what the event loop gives protocol objects in unit tests (shared with
`bench/hotpath.py`, hence kept in `pyrelayd_testkit.fakes`)."""

from pyrelayd_testkit.fakes import FakeTransport as FakeTransport
