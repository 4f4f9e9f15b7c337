"""docker-compose.yml checked against what the README and the Compose spec promise (no Docker engine here)."""

import re

import yaml

from conftest import ROOT

COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]


def test_services_and_their_order():
    assert set(SERVICES) == {"postgres", "s3", "dashboard", "create-study", "worker"}
    for name in ("dashboard", "create-study", "worker"):
        assert SERVICES[name]["depends_on"]["postgres"]["condition"] == "service_healthy"
        assert SERVICES[name]["depends_on"]["s3"]["condition"] == "service_started"
    assert SERVICES["worker"]["depends_on"]["create-study"]["condition"] == "service_completed_successfully"
    assert SERVICES["create-study"]["restart"] == "no" and "--skip-if-exists" in SERVICES["create-study"]["command"]


def test_postgres_has_a_volume_and_a_health_check():
    pg = SERVICES["postgres"]
    assert pg["image"].startswith("postgres:")
    assert any(v.startswith("pgdata:") for v in pg["volumes"]) and "pgdata" in COMPOSE["volumes"]
    check = pg["healthcheck"]
    assert "pg_isready" in " ".join(check["test"]) and check["retries"] >= 1


def test_trial_files_go_to_the_s3_service_not_a_shared_volume():
    s3 = SERVICES["s3"]
    assert s3["image"].startswith("chrislusf/seaweedfs:") and s3["command"][0] == "mini"
    assert "-master.telemetry=false" in s3["command"] and any(v.startswith("s3data:") for v in s3["volumes"])
    assert "ports" not in s3, "the store is reached inside the compose network only"
    create = SERVICES["create-study"]["environment"]
    assert create["FER_OPT_ARTIFACTS"].startswith("s3://")
    for name in ("dashboard", "create-study", "worker"):
        env = SERVICES[name]["environment"]
        assert env["AWS_ENDPOINT_URL"] == "http://s3:8333" and env["AWS_SECRET_ACCESS_KEY"] == "${S3_SECRET_KEY}"
    assert "volumes" not in SERVICES["worker"] or all(":/data" in v for v in SERVICES["worker"]["volumes"])
    assert set(COMPOSE["volumes"]) == {"pgdata", "s3data"}


def test_worker_reserves_a_gpu_and_scales():
    worker = SERVICES["worker"]
    [device] = worker["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"] and device["count"] == 1
    assert "container_name" not in worker, "a fixed container name would prevent --scale"
    assert not any(":" in str(p) for p in worker.get("ports", [])), "published ports would prevent --scale"
    assert worker["command"][:3] == ["worker", "--gpu", "0"] and worker["stop_signal"] == "SIGTERM"


def test_dashboard_and_storage_use_env_credentials_only():
    text = (ROOT / "docker-compose.yml").read_text()
    assert "${POSTGRES_PASSWORD}" in text
    assert not re.search(r"POSTGRES_PASSWORD:\s*[^$\s]", text), "the password must come from .env"
    for name in ("dashboard", "create-study", "worker"):
        assert SERVICES[name]["environment"]["FER_OPT_STORAGE"].startswith("postgresql+psycopg://")
    assert SERVICES["dashboard"]["ports"] == ["127.0.0.1:${DASHBOARD_PORT:-8080}:8080"]
    example = (ROOT / ".env.example").read_text()
    used = set(re.findall(r"\$\{(\w+)", text))
    assert used <= set(re.findall(r"^(\w+)=", example, re.M)), "every variable needs an example in .env.example"


def test_dockerfile_builds_the_cli_with_postgres_support():
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "-c constraints.txt" in dockerfile and "[postgres]" in dockerfile
    assert 'ENTRYPOINT ["fer-opt"]' in dockerfile
    for service in SERVICES.values():
        if "build" in service:
            assert service["build"] == "."
