"""ray_cluster.yaml is a config Ray's own launcher accepts."""

from __future__ import annotations

import json
import re
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


def _commands(config: dict) -> list[str]:
    return [*config["setup_commands"], *config["head_setup_commands"],
            *config["head_start_ray_commands"], *config["worker_start_ray_commands"]]


PASSWORD_FILE = "~/.llmcam-db-password"


def test_no_fixed_database_password() -> None:
    """The PostgreSQL password is made on the head at set-up, once, readable by its user only;
    the role and the gateway's LLMCAM_DB both take it from that file."""
    text = (ROOT / "ray_cluster.yaml").read_text()
    assert "change-me" not in text
    config = load()
    setup = config["head_setup_commands"]
    made = [c for c in setup if "openssl rand" in c and PASSWORD_FILE in c]
    assert made and all("test -s" in c and "umask 077" in c for c in made)
    assert any(c.strip() == f"chmod 600 {PASSWORD_FILE}" for c in setup)
    roles = [c for c in setup if "ROLE llmcam" in c]
    assert roles and all(f"$(cat {PASSWORD_FILE})" in c for c in roles)
    assert not any("PASSWORD '" in c and "%s" not in c for c in setup)  # no literal one
    starts = [c for c in config["head_start_ray_commands"] if "LLMCAM_DB=" in c]
    assert starts and all(f"postgresql://llmcam:$(cat {PASSWORD_FILE})@" in c for c in starts)


def test_the_password_file_is_made_once_and_private(tmp_path: Path) -> None:
    """The set-up commands themselves, run by bash with HOME elsewhere: a 48-hex-digit
    password, mode 600, kept on a second run; the start command's LLMCAM_DB carries it and is
    a URL the store accepts."""
    import os
    import stat
    import subprocess

    from actors.store.postgres import validate

    env = {**os.environ, "HOME": str(tmp_path)}
    setup = [c for c in load()["head_setup_commands"] if PASSWORD_FILE in c and "ROLE" not in c]
    path = tmp_path / ".llmcam-db-password"
    passwords = []
    for _ in range(2):
        for command in setup:
            subprocess.run(["bash", "-c", command], env=env, check=True, timeout=30)
        passwords.append(path.read_text().strip())
    password, first = passwords
    assert re.fullmatch(r"[0-9a-f]{48}", password) and password == first  # made once
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    start = next(c for c in load()["head_start_ray_commands"] if "LLMCAM_DB=" in c)
    default = re.search(r"LLMCAM_DB=(\$\{LLMCAM_DB:-.*?llmcam\})", start)
    assert default, start
    env.pop("LLMCAM_DB", None)
    url = subprocess.run(["bash", "-c", f'echo "{default.group(1)}"'], env=env, check=True,
                         capture_output=True, text=True, timeout=30).stdout.strip()
    params = validate(url)
    assert params["password"] == password and params["user"] == params["dbname"] == "llmcam"
    assert params["port"] == "5432" and params["host"] not in ("", "localhost")


def test_postgres_listens_on_the_private_address_only() -> None:
    """Not every interface: the head's private address and localhost; pg_hba lets in the
    llmcam role to the llmcam database only, with scram-sha-256."""
    setup = load()["head_setup_commands"]
    listens = [c for c in setup if "listen_addresses" in c]
    assert listens
    for command in listens:
        assert "listen_addresses = '*'" not in command and "'*'" not in command
        assert "listen_addresses = 'localhost,$HEAD_IP'" in command
        assert "HEAD_IP=$(hostname -I | awk '{print $1}')" in command
    hba = [c for c in setup if "pg_hba.conf" in c and "tee -a" in c]
    assert hba
    for command in hba:
        assert 'echo "host llmcam llmcam $NET scram-sha-256"' in command
        assert "vpc-ipv4-cidr-block" in command
        assert not re.search(r"host\s+all", command)
    assert not any("trust" in c or " md5" in c for c in _commands(load()))
