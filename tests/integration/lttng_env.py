"""The integration tests' view of the shared test kit (`pyrelayd_testkit`, at the repository
root, shared with `bench/`): the real LTTng peers in their sandboxes, the relay launcher, and
the process and port helpers, all under one name the tests import from."""

from pyrelayd_testkit.lttng import *  # noqa: F403
from pyrelayd_testkit.ports import *  # noqa: F403
from pyrelayd_testkit.processes import *  # noqa: F403
from pyrelayd_testkit.relays import *  # noqa: F403
