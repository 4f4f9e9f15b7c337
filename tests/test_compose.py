"""docker-compose.yml checked for what makes it work, without a Docker engine: each service's command is a
real `fer-opt` command that click parses (its required values coming from the environment the file gives it),
every setting named is one the product reads, and services, volumes, ports and hosts point at each other."""

import re
from urllib.parse import urlsplit

import click
import pytest
import yaml

from conftest import ROOT
from fer_optuna.cli import main

TEXT = (ROOT / "docker-compose.yml").read_text()
EXAMPLE = dict(re.findall(r"^(\w+)=(.*)$", (ROOT / ".env.example").read_text(), re.M))


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's variable substitution: ${VAR}, ${VAR:-default}, and $$ for a literal $."""
    def value(m: re.Match) -> str:
        name, default = m.group(1), m.group(2)
        assert name in env or default is not None, f"${{{name}}} has no default and no line in .env.example"
        return env.get(name) or default or ""

    return re.sub(r"(?<!\$)\$\{(\w+)(?::-([^}]*))?\}", value, text).replace("$$", "$")


COMPOSE = yaml.safe_load(interpolate(TEXT, EXAMPLE))
SERVICES = COMPOSE["services"]
FER_OPT = sorted(name for name, s in SERVICES.items() if s.get("build") == ".")
PRODUCT_SOURCE = "\n".join(p.read_text() for p in (ROOT / "fer_optuna").rglob("*.py"))


def parse(service: str, monkeypatch) -> tuple[click.Command, dict]:
    """The service's command as the image's entrypoint (`fer-opt`) receives it, parsed by the real CLI with
    the service's environment: an unknown command or flag, or a required value missing, fails here."""
    for key, value in SERVICES[service].get("environment", {}).items():
        monkeypatch.setenv(key, str(value))
    words = list(SERVICES[service]["command"])
    command = main
    while isinstance(command, click.Group):
        assert words and words[0] in command.commands, f"{service}: fer-opt has no command {words[:1]}"
        command, words = command.commands[words[0]], words[1:]
    try:
        ctx = command.make_context(f"fer-opt {command.name}", words)
    except click.UsageError as e:
        raise AssertionError(f"{service}: `fer-opt {' '.join(SERVICES[service]['command'])}`: {e.format_message()}")
    return command, ctx.params


def test_every_variable_used_has_an_example_and_secrets_come_only_from_it():
    used = set(re.findall(r"(?<!\$)\$\{(\w+)", TEXT))
    assert used <= set(EXAMPLE), f"no example in .env.example for {used - set(EXAMPLE)}"
    for secret in ("POSTGRES_PASSWORD", "S3_SECRET_KEY"):
        assert EXAMPLE[secret] not in TEXT, f"{secret}'s value is written into the compose file"
    assert not re.search(r"(PASSWORD|SECRET\w*):\s*[^$\s]", TEXT), "a secret must come from .env"


@pytest.mark.parametrize("service", FER_OPT)
def test_each_fer_opt_service_runs_a_real_command_with_real_flags(service, monkeypatch):
    command, params = parse(service, monkeypatch)
    assert params["storage"] == SERVICES[service]["environment"]["FER_OPT_STORAGE"], "the storage comes from the env"
    if command.name == "create-study":
        assert params["skip_if_exists"], "run again on every `up`, it must not fail on the study it made"
        assert (ROOT / params["spec_path"]).exists(), "the default study file is one the image copies"
        assert params["artifacts"].startswith("s3://"), "the trials' files go to the store, not a container's disk"
    if command.name == "worker":
        assert params["gpu"] == "0", "each worker container sees one GPU, its own, as device 0"


def test_every_fer_opt_setting_named_is_one_the_product_reads():
    for name in FER_OPT:
        for key in SERVICES[name].get("environment", {}):
            if key.startswith("FER_OPT_"):
                assert f'"{key}"' in PRODUCT_SOURCE, f"{name}: fer-optuna never reads {key}"


def test_hosts_and_ports_name_the_services_that_serve_them():
    for name in FER_OPT:
        env = SERVICES[name]["environment"]
        db = urlsplit(env["FER_OPT_STORAGE"])
        # Every fer-opt service reaches the database through the pooler, which reaches PostgreSQL.
        assert (db.hostname, db.port) == ("pgbouncer", 6432) and db.path.lstrip("/") == EXAMPLE["POSTGRES_DB"]
        assert (db.username, db.password) == (EXAMPLE["POSTGRES_USER"], EXAMPLE["POSTGRES_PASSWORD"])
        store = urlsplit(env["AWS_ENDPOINT_URL"])
        assert store.hostname in SERVICES and store.port == 8333, "SeaweedFS serves S3 on 8333"
        assert env["AWS_ACCESS_KEY_ID"] == EXAMPLE["S3_ACCESS_KEY"] and env["AWS_SECRET_ACCESS_KEY"] == EXAMPLE["S3_SECRET_KEY"]
        for dependency in SERVICES[name].get("depends_on", {}):
            assert dependency in SERVICES
    pooler = SERVICES["pgbouncer"]["environment"]
    assert (pooler["DB_HOST"], pooler["DB_PORT"], pooler["LISTEN_PORT"]) == ("postgres", 5432, 6432)
    assert (pooler["DB_USER"], pooler["DB_PASSWORD"], pooler["DB_NAME"]) == (db.username, db.password, EXAMPLE["POSTGRES_DB"])
    # Transaction pooling: a server connection per transaction, so the server's slots do not grow with the fleet.
    assert pooler["POOL_MODE"] == "transaction" and pooler["MAX_CLIENT_CONN"] >= 1000
    assert SERVICES["pgbouncer"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert f"-ip={store.hostname}" in SERVICES["s3"]["command"], "the store answers to the name the clients use"
    check = " ".join(SERVICES["postgres"]["healthcheck"]["test"])
    assert "pg_isready" in check and f"-U {EXAMPLE['POSTGRES_USER']}" in interpolate(check, SERVICES["postgres"]["environment"])


def test_the_dashboard_is_published_on_loopback_at_the_port_it_listens_on(monkeypatch):
    _, params = parse("dashboard", monkeypatch)
    [published] = SERVICES["dashboard"]["ports"]
    host_ip, host_port, container_port = published.split(":")
    assert host_ip == "127.0.0.1" and int(host_port) == int(EXAMPLE["DASHBOARD_PORT"])
    assert int(container_port) == params["port"] and params["host"] == "0.0.0.0", "reachable from outside its container"


def test_volumes_are_declared_and_the_workers_find_the_data_in_theirs():
    named = {v.split(":")[0] for s in SERVICES.values() for v in s.get("volumes", []) if not v.startswith((".", "/"))}
    assert named == set(COMPOSE["volumes"]), "a named volume used but not declared, or declared and unused"
    assert any(v.endswith(":/var/lib/postgresql/data") for v in SERVICES["postgres"]["volumes"]), "the database survives"
    worker = SERVICES["worker"]
    mounts = [v.split(":")[1] for v in worker["volumes"]]
    assert any(worker["environment"]["FER_OPT_DATA"].startswith(m + "/") for m in mounts), "FER_OPT_DATA is in a mount"


def test_workers_scale_order_after_the_study_and_stop_gracefully():
    worker = SERVICES["worker"]
    assert "container_name" not in worker and not worker.get("ports"), "either would prevent --scale"
    [device] = worker["deploy"]["resources"]["reservations"]["devices"]
    assert device["capabilities"] == ["gpu"] and device["count"] == 1
    assert worker["depends_on"]["create-study"]["condition"] == "service_completed_successfully"
    assert SERVICES["create-study"]["restart"] == "no", "a one-shot job"
    # SIGTERM is what the worker turns into a re-queued trial (tests/test_workers.py), within the grace period.
    assert worker["stop_signal"] == "SIGTERM" and worker["stop_grace_period"]


def test_dockerfile_builds_the_cli_with_postgres_support_and_the_study_files():
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "-c constraints.txt" in dockerfile and "[postgres]" in dockerfile
    # The study files are package data (fer_optuna/studies), so the package's copy brings them.
    assert 'ENTRYPOINT ["fer-opt"]' in dockerfile and "COPY fer_optuna ./fer_optuna" in dockerfile
    assert list((ROOT / "fer_optuna" / "studies").glob("*.yaml"))
