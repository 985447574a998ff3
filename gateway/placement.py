"""Where session actors run: decided once, when the gateway starts.

With a shared store (PostgreSQL) session actors spread over the cluster's nodes; with the
embedded SQLite store they stay on the gateway's node, where the file is. (How many may be live
is the registry's: `actors.session.registry.live_cap`.)
"""

from __future__ import annotations

import logging
from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from actors.settings import Settings
from actors.store import is_shared

log = logging.getLogger(__name__)


def scheduling(settings: Settings) -> Any:
    """The scheduling strategy for session actors (and their spares)."""
    if is_shared(settings.db_url):
        return "SPREAD"
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    if len(nodes) > 1:
        log.info("the cluster has %d nodes, but session actors stay on this gateway's node: "
                 "the SQLite store is a file here (set LLMCAM_DB to a postgresql:// URL that "
                 "every node reaches to spread them)", len(nodes))
    return NodeAffinitySchedulingStrategy(node_id=ray.get_runtime_context().get_node_id(),
                                          soft=False)
