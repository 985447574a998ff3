"""ray_cluster.yaml is a config Ray's own launcher accepts."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import ray
import yaml

ROOT = Path(__file__).resolve().parent.parent


def load() -> dict:
    return yaml.safe_load((ROOT / "ray_cluster.yaml").read_text())


def test_schema_valid() -> None:
    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    jsonschema.validate(load(), schema)


def test_launcher_validation_and_shape() -> None:
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = load()
    validate_config(prepare_config(config))  # Ray's own checks, after its own defaults
    types = config["available_node_types"]
    assert config["head_node_type"] in types
    assert types["head"]["resources"] == {"CPU": 0}
    assert any(t["resources"].get("GPU", 0) >= 1 for t in types.values())
    assert any("llmcam serve" in c and "--ray-address auto" in c
               for c in config["head_start_ray_commands"])
    # every node reaches the store: PostgreSQL on the head's private address, not a local file
    assert any("LLMCAM_DB=${LLMCAM_DB:-postgresql://" in c and "hostname -I" in c
               for c in config["head_start_ray_commands"])
    assert any("postgresql" in c for c in config["head_setup_commands"])
