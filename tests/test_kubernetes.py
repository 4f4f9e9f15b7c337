"""deploy/kubernetes checked offline: schemas, agreement with the image, compose and CLI, and a worker pod's command run for real."""

import re
import shutil
from urllib.parse import urlsplit

import kubernetes_validate
import optuna
import pytest
import yaml
from optuna.trial import TrialState

from conftest import ROOT, fer_opt, tiny_study
from fer_optuna.search import shipped

K8S = ROOT / "deploy" / "kubernetes"
KUSTOMIZATION = yaml.safe_load((K8S / "kustomization.yaml").read_text())
SCHEMA_VERSION = "1.37.0"  # the newest schemas bundled with kubernetes-validate
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
SECRET_KEYS = ("FER_OPT_STORAGE", "FER_OPT_ARTIFACTS", "AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
SECRET_EXAMPLE = dict(line.split("=", 1) for line in (K8S / "secret.env.example").read_text().splitlines()
                      if line and not line.startswith("#"))


def _resources() -> list[dict]:
    docs = []
    for name in KUSTOMIZATION["resources"]:
        docs += [d for d in yaml.safe_load_all((K8S / name).read_text()) if d]
    return docs


def _by_kind_name() -> dict[tuple[str, str], dict]:
    return {(d["kind"], d["metadata"]["name"]): d for d in _resources()}


def _generated_secret() -> dict:
    [generator] = KUSTOMIZATION["secretGenerator"]
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": generator["name"], "namespace": KUSTOMIZATION["namespace"]},
            "stringData": SECRET_EXAMPLE}


def _container(kind: str, name: str) -> dict:
    [container] = _by_kind_name()[(kind, name)]["spec"]["template"]["spec"]["containers"]
    return container


def test_every_manifest_validates_against_the_kubernetes_schemas():
    assert kubernetes_validate.latest_version() >= SCHEMA_VERSION
    listed = set(KUSTOMIZATION["resources"])
    assert listed == {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}, "every manifest belongs in kustomization.yaml"
    resources = _resources() + [_generated_secret()]
    for resource in resources:
        kubernetes_validate.validate(resource, SCHEMA_VERSION, strict=True)
    kinds = sorted(d["kind"] for d in resources)
    assert kinds == sorted(["Namespace", "Service", "StatefulSet", "Service", "Deployment", "PersistentVolumeClaim",
                            "Job", "Job", "Deployment", "Service", "Secret"])
    claims = [d for d in resources if d["kind"] == "PersistentVolumeClaim"]
    assert [c["metadata"]["name"] for c in claims] == ["fer-data"], "no ReadWriteMany checkpoint volume: trial files go to S3"


def test_the_export_pod_validates_and_runs_real_commands():
    sub = yaml.safe_load((K8S / "export" / "kustomization.yaml").read_text())
    assert sub["images"] == KUSTOMIZATION["images"] and sub["namespace"] == KUSTOMIZATION["namespace"]
    [pod] = [d for d in yaml.safe_load_all((K8S / "export" / "pod.yaml").read_text()) if d]
    kubernetes_validate.validate(pod, SCHEMA_VERSION, strict=True)
    script = pod["spec"]["containers"][0]["args"][0]
    export_help = fer_opt("export", "--help").stdout
    for flag in ("-o", "--model", "--onnx"):
        assert f" {flag} /out/" in script and flag in export_help
    [volume] = pod["spec"]["volumes"]
    assert volume == {"name": "out", "emptyDir": {}}, "the model comes from the artifact store, not a shared volume"
    keys = {e["valueFrom"]["secretKeyRef"]["key"] for e in pod["spec"]["containers"][0]["env"]}
    assert keys == {"FER_OPT_STORAGE", "AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}


def test_a_bad_manifest_is_refused():
    job = _by_kind_name()[("Job", "workers")]
    for change in ({"paralellism": 4}, {"parallelism": "four"}):  # a misspelt field, a wrong type
        with pytest.raises(kubernetes_validate.ValidationError):
            kubernetes_validate.validate({**job, "spec": {**job["spec"], **change}}, SCHEMA_VERSION, strict=True)


def test_workers_take_one_gpu_each_and_retry_instead_of_losing_trials():
    job = _by_kind_name()[("Job", "workers")]["spec"]
    assert job["completionMode"] == "Indexed" and job["parallelism"] == job["completions"]
    pod = job["template"]["spec"]
    assert pod["restartPolicy"] == "OnFailure" and job["backoffLimit"] >= job["parallelism"]
    worker = _container("Job", "workers")
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert worker["args"] == COMPOSE["worker"]["command"], "the pod runs what the compose worker runs"
    mounts = {m["mountPath"]: m for m in worker["volumeMounts"]}
    assert list(mounts) == ["/data"] and mounts["/data"]["readOnly"]
    data_dir = dict((e["name"], e.get("value")) for e in worker["env"])["FER_OPT_DATA"]
    assert data_dir.startswith("/data/")


def test_images_commands_and_secrets_agree_with_compose_the_dockerfile_and_the_cli():
    assert 'ENTRYPOINT ["fer-opt"]' in (ROOT / "Dockerfile").read_text(), "manifests pass args to the fer-opt entrypoint"
    assert _container("StatefulSet", "postgres")["image"] == COMPOSE["postgres"]["image"]
    pooler = _container("Deployment", "pgbouncer")
    assert pooler["image"] == COMPOSE["pgbouncer"]["image"]
    settings = {e["name"]: e.get("value", e.get("valueFrom", {}).get("secretKeyRef", {}).get("key")) for e in pooler["env"]}
    compose_settings = {k: str(v) for k, v in COMPOSE["pgbouncer"]["environment"].items()}
    assert settings == {**compose_settings, "DB_USER": "POSTGRES_USER", "DB_PASSWORD": "POSTGRES_PASSWORD", "DB_NAME": "POSTGRES_DB"}
    storage = urlsplit(SECRET_EXAMPLE["FER_OPT_STORAGE"])
    assert (storage.hostname, storage.port) == ("pgbouncer", _by_kind_name()[("Service", "pgbouncer")]["spec"]["ports"][0]["port"])
    assert (storage.hostname, storage.port) == ("pgbouncer", int(settings["LISTEN_PORT"])), "the pods reach the database through the pooler"
    [image] = KUSTOMIZATION["images"]
    for kind, name, service in (("Job", "create-study", "create-study"), ("Job", "workers", "worker"),
                                ("Deployment", "dashboard", "dashboard")):
        container = _container(kind, name)
        assert container["image"] == image["name"] and "command" not in container
        assert container["args"][0] == COMPOSE[service]["command"][0]
    assert _container("Deployment", "dashboard")["args"] == COMPOSE["dashboard"]["command"]
    create = _container("Job", "create-study")["args"]
    assert "--skip-if-exists" in create and shipped.find(create[create.index("--config") + 1]).is_file()
    help_text = {cmd: fer_opt(cmd, "--help").stdout for cmd in ("worker", "create-study", "dashboard")}
    for kind, name in (("Job", "create-study"), ("Job", "workers"), ("Deployment", "dashboard")):
        container = _container(kind, name)
        for flag in (a for a in container["args"] if a.startswith("--")):
            assert flag in help_text[container["args"][0]], f"{flag} is not an option of fer-opt {container['args'][0]}"
        for env in container["env"]:
            assert env["name"] in ("FER_OPT_DATA", *SECRET_KEYS)
            if env["name"] != "FER_OPT_DATA":
                assert env["valueFrom"]["secretKeyRef"] == {"name": "fer-optuna", "key": env["name"]}
        names = {e["name"] for e in container["env"]}
        assert {"AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= names, "every pod reaches the store"
    assert "FER_OPT_ARTIFACTS" in {e["name"] for e in _container("Job", "create-study")["env"]}
    postgres = _container("StatefulSet", "postgres")
    assert postgres["envFrom"] == [{"secretRef": {"name": "fer-optuna"}}] and "pg_isready" in str(postgres["readinessProbe"])
    assert set(SECRET_EXAMPLE) == {"POSTGRES_USER", "POSTGRES_PASSWORD", "POSTGRES_DB", *SECRET_KEYS}
    for path in K8S.glob("*.yaml"):
        assert not re.search(r"postgres(ql)?(\+\w+)?://", path.read_text()), f"{path.name}: a storage URL belongs in the Secret"
    assert _by_kind_name()[("Service", "dashboard")]["spec"]["type"] == "ClusterIP"
    assert "/deploy/kubernetes/secret.env" in (ROOT / ".gitignore").read_text()


@pytest.mark.slow
@pytest.mark.postgres
def test_a_worker_pods_command_and_environment_run_a_trial(postgres, pgbouncer, s3, tmp_path, sample_csv):
    # As in the cluster, through PgBouncer in transaction mode.
    url, bucket = pgbouncer.url(postgres.new_database()), s3.new_bucket()
    worker = _container("Job", "workers")
    # The pod's volumes, mounted here as folders: /data holds the data.
    mounts = {m["mountPath"]: tmp_path / m["name"] for m in worker["volumeMounts"]}
    for folder in mounts.values():
        folder.mkdir()
    # The Secret as a user fills it in: this machine's PostgreSQL and S3 server.
    secret = {**SECRET_EXAMPLE, **s3.env(), "FER_OPT_STORAGE": url, "FER_OPT_ARTIFACTS": f"s3://{bucket}/k8s"}

    def pod_env(container: dict) -> dict:
        env = {}
        for item in container["env"]:
            value = secret[item["valueFrom"]["secretKeyRef"]["key"]] if "valueFrom" in item else item["value"]
            for mount, folder in mounts.items():
                if value.startswith(mount + "/"):
                    value = f"{folder}/{value.removeprefix(mount + '/')}"
            env[item["name"]] = value
        return env

    env = pod_env(worker)
    shutil.copy(sample_csv, env["FER_OPT_DATA"])
    one = tiny_study(tmp_path / "one.yaml", n_trials=1)
    create = _container("Job", "create-study")["args"]
    fer_opt(*create[:create.index("--config") + 1], one, *create[create.index("--config") + 2:],
            env=pod_env(_container("Job", "create-study")))
    # The pod's exact arguments; the one change: no GPU here, so its device is the CPU.
    args = [str(mounts.get(a, a)) for a in worker["args"]]
    args[args.index("--gpu") + 1] = "cpu"
    proc = fer_opt(*args, env=env)
    assert "budget reached" in proc.stdout or "complete" in proc.stdout, proc.stdout
    [trial] = optuna.load_study(study_name="tiny", storage=url).get_trials()
    assert trial.state == TrialState.COMPLETE
    stored = {o["Key"] for o in s3.client().list_objects_v2(Bucket=bucket)["Contents"]}
    assert f"k8s/{trial.user_attrs['checkpoint_artifact']}" in stored, "the trial's model is in the store, for any pod"
