"""pyrelayd: a Python implementation of the LTTng relay daemon."""

__version__ = "0.1.0"
