"""Benchmarks of pyrelayd against the C lttng-relayd; `python bench/run.py` runs them all."""
