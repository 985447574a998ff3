"""Helpers shared by tests/ and benchmarks/ that start real servers on 127.0.0.1.

- `testing.postgres.PostgresServer`: a throwaway PostgreSQL 15 in a temp directory.
- `testing.ray_node.RayNode`: a second Ray node (raylet) that can be killed hard to simulate node
  death.

- `testing.free_port()`: a TCP port of 127.0.0.1 that was free a moment ago.

Nothing here is imported by the application itself.
"""

import socket


def free_port() -> int:
    """A TCP port of 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
