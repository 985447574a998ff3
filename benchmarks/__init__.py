"""The benchmarks (README.md): each runs as `python -m benchmarks.<name>`, and every one of them
takes its ports, servers, meters and results writer from `benchmarks/_harness.py`.

Importing the package sets, before any script imports Ray or ultralytics (both read it at import
time), the environment our Ray workers get: ultralytics never goes online, Ray stays on loopback.
The servers a benchmark starts inherit it."""

import os

from actors.settings import worker_env

os.environ.update(worker_env())
