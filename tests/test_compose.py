"""docker-compose.yml: no Docker engine runs here, so check the file's shape."""

from __future__ import annotations

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def test_compose_services_share_database_and_worker_reserves_a_gpu() -> None:
    spec = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = spec["services"]
    assert {"postgres", "app", "worker"} <= set(services)
    assert "healthcheck" in services["postgres"]
    assert any(v.startswith("pgdata:") for v in services["postgres"]["volumes"])
    urls = {services[s]["environment"]["RLHF_DATABASE_URL"] for s in ("app", "worker")}
    assert len(urls) == 1 and next(iter(urls)).startswith("postgresql+psycopg://")
    assert "rlhf db upgrade" in " ".join(services["app"]["command"])
    devices = services["worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["capabilities"] == ["gpu"]
    assert (ROOT / "Dockerfile").exists()
