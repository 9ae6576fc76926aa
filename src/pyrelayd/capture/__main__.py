"""`python -m pyrelayd.capture`: the same as the `pyrelayd-capture` console script."""

import sys

from pyrelayd.capture.cli import main

sys.exit(main())
