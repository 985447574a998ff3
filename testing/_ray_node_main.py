"""The process behind `testing.ray_node.RayNode`: start one non-head Ray node, then wait.

Run as ``python _ray_node_main.py '<json>'`` by RayNode, in a new session (so its process group
holds the raylet and everything the raylet starts). It builds the node exactly the way
`ray.cluster_utils.Cluster.add_node` does, via `ray._private.node.Node(head=False)`, because
`ray start --address` refuses to add a node while RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, the
switch that keeps Ray on 127.0.0.1. It prints one JSON line (``{"node_id": ...}``) on stdout when
the node is up, then blocks reading stdin: when RayNode's process goes away (stdin closes), it
SIGKILLs its whole process group so that no stray node outlives a crashed test run.
"""

from __future__ import annotations

import json
import os
import signal
import sys


def main() -> None:
    params = json.loads(sys.argv[1])
    import ray._private.node
    import ray._private.parameter

    ray_params = ray._private.parameter.RayParams(**params)
    node = ray._private.node.Node(ray_params, head=False, shutdown_at_exit=False,
                                  spawn_reaper=False)
    sys.stdout.write(json.dumps({"node_id": node.node_id, "pid": os.getpid()}) + "\n")
    sys.stdout.flush()
    sys.stdin.read()  # returns at EOF: our parent is gone (or closed the pipe on purpose)
    os.killpg(os.getpgrp(), signal.SIGKILL)


if __name__ == "__main__":
    main()
