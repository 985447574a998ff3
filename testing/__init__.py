"""Helpers shared by tests/ and benchmarks/ that start real servers on 127.0.0.1.

- `testing.postgres.PostgresServer`: a throwaway PostgreSQL 15 in a temp directory.
- `testing.ray_node.RayNode`: a second Ray node (raylet) that can be killed hard to simulate node
  death.

Nothing here is imported by the application itself.
"""
