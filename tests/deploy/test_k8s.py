"""The Kubernetes manifests (deploy/k8s), checked without a cluster: every object validates
against the Kubernetes 1.30 schema, in the base and in the gpu overlay as kustomize would build
it; every `hpsearch` command is one the real CLI parser accepts; images, ports, probes, the
Secret and the storage URL fit together."""

from __future__ import annotations

import argparse
import copy
import os
import re
from pathlib import PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import yaml

from service.settings import Settings
from tests.deploy.manifests import REPO, Image, load_compose, parse_dockerfile
from tests.deploy.test_compose import parse_cli

K8S = REPO / "deploy" / "k8s"
BASE = K8S / "base"
GPU = K8S / "overlays" / "gpu"
KUBERNETES = "1.30"  # older than any cluster one would deploy to now; kubernetes-validate>=1.30
SECRET = "hpsearch-secrets"

Obj = dict[str, Any]


# --- loading and building -----------------------------------------------------------------


def load_all(path) -> list[Obj]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def kustomization(folder) -> Obj:
    (doc,) = load_all(folder / "kustomization.yaml")
    assert doc["kind"] == "Kustomization", folder
    return doc


def key(obj: Obj) -> tuple[str, str]:
    return obj["kind"], obj["metadata"]["name"]


def build_base() -> list[Obj]:
    """The base's objects with the kustomization's common labels on metadata, as kustomize does
    for `labels` without includeSelectors."""
    kust = kustomization(BASE)
    objects = [obj for path in kust["resources"] for obj in load_all(BASE / path)]
    for entry in kust.get("labels", []):
        for obj in objects:
            obj["metadata"].setdefault("labels", {}).update(entry["pairs"])
    return objects


def merge(base: Any, patch: Any) -> Any:
    """A strategic merge patch, as far as these patches need it: maps merge, lists of named
    objects (containers, env, volumes) merge by name, other lists are replaced."""
    if isinstance(base, dict) and isinstance(patch, dict):
        out = dict(base)
        for k, v in patch.items():
            out[k] = merge(base[k], v) if k in base else copy.deepcopy(v)
        return out
    if _named(base) and _named(patch):
        out = list(base)
        names = [item["name"] for item in out]
        for item in patch:
            if item["name"] in names:
                i = names.index(item["name"])
                out[i] = merge(out[i], item)
            else:
                out.append(copy.deepcopy(item))
        return out
    return copy.deepcopy(patch)


def _named(value: Any) -> bool:
    return (
        isinstance(value, list)
        and bool(value)
        and all(isinstance(item, dict) and "name" in item for item in value)
    )


def build_gpu() -> list[Obj]:
    kust = kustomization(GPU)
    assert kust["resources"] == ["../../base"], "the gpu overlay builds on the base"
    objects = {key(obj): obj for obj in build_base()}
    for entry in kust["patches"]:
        for patch in load_all(GPU / entry["path"]):
            assert key(patch) in objects, f"{entry['path']} patches no base object {key(patch)}"
            assert patch["apiVersion"] == objects[key(patch)]["apiVersion"]
            objects[key(patch)] = merge(objects[key(patch)], patch)
    return list(objects.values())


def find(objects: list[Obj], kind: str, name: str) -> Obj:
    found = [obj for obj in objects if key(obj) == (kind, name)]
    assert len(found) == 1, f"want one {kind} {name}, found {len(found)}"
    return found[0]


def containers(obj: Obj) -> list[Obj]:
    return obj.get("spec", {}).get("template", {}).get("spec", {}).get("containers", [])


def workloads(objects: list[Obj]) -> list[Obj]:
    return [obj for obj in objects if obj["kind"] in ("Deployment", "StatefulSet")]


def compose_images() -> dict[str, Image]:
    """The images docker-compose.yml builds, by the name it gives them."""
    out = {}
    for service in load_compose()["services"].values():
        if "build" in service:
            path = REPO / service["build"].get("context", ".") / service["build"]["dockerfile"]
            out[service["image"]] = Image(path, path.parent, parse_dockerfile(path))
    assert set(out) == {"hpsearch-server", "hpsearch-worker"}, set(out)
    return out


def argv(container: Obj) -> list[str]:
    """What the container runs: command replaces the image's ENTRYPOINT, args its CMD."""
    image = compose_images().get(container["image"])
    command, args = container.get("command"), container.get("args")
    if command is None:
        command = (image.exec_form("ENTRYPOINT") if image else None) or []
        if args is None:
            args = (image.exec_form("CMD") if image else None) or []
    return [*command, *(args or [])]


def hpsearch_args(container: Obj, where: str) -> argparse.Namespace:
    words = argv(container)
    assert words and PurePosixPath(words[0]).name == "hpsearch", f"{where} must run hpsearch"
    return parse_cli(words[1:], where)


def resolve_env(container: Obj, objects: list[Obj]) -> dict[str, str]:
    """The container's environment as the kubelet builds it: envFrom, then env in order, with
    $(NAME) expanded from what is defined before it."""
    secret = find(objects, "Secret", SECRET)["stringData"]
    config = {obj["metadata"]["name"]: obj["data"] for obj in objects if obj["kind"] == "ConfigMap"}
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        env.update(config[source["configMapRef"]["name"]])
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = re.sub(r"\$\((\w+)\)", lambda m: env.get(m[1], m[0]), var["value"])
            continue
        ref = var["valueFrom"]
        if "secretKeyRef" in ref:
            assert ref["secretKeyRef"]["name"] == SECRET, var
            env[var["name"]] = secret[ref["secretKeyRef"]["key"]]
        else:
            cm = ref["configMapKeyRef"]
            env[var["name"]] = config[cm["name"]][cm["key"]]
    return env


@pytest.fixture(scope="module")
def base() -> list[Obj]:
    return build_base()


@pytest.fixture(scope="module")
def gpu() -> list[Obj]:
    return build_gpu()


# --- files and schemas --------------------------------------------------------------------


def test_every_yaml_file_parses() -> None:
    files = sorted(K8S.rglob("*.yaml"))
    assert len(files) >= 8, files
    for path in files:
        assert load_all(path), f"{path} is empty"


def test_the_kustomization_lists_every_base_file() -> None:
    listed = set(kustomization(BASE)["resources"])
    present = {p.name for p in BASE.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == present, f"listed {sorted(listed)}, in base/ {sorted(present)}"
    patches = {entry["path"] for entry in kustomization(GPU)["patches"]}
    assert patches == {p.name for p in GPU.glob("*.yaml")} - {"kustomization.yaml"}


@pytest.mark.parametrize("build", [build_base, build_gpu], ids=["base", "gpu"])
def test_every_object_validates_against_the_kubernetes_schema(build) -> None:
    for obj in build():
        try:
            version = kubernetes_validate.validate(obj, KUBERNETES, strict=True)
        except kubernetes_validate.ValidationError as error:
            pytest.fail(f"{key(obj)}: {error.message}")
        assert version == KUBERNETES


def test_selectors_match_their_pods(base: list[Obj]) -> None:
    pods = {}
    for obj in workloads(base):
        labels = obj["spec"]["template"]["metadata"]["labels"]
        selector = obj["spec"]["selector"]["matchLabels"]
        assert selector.items() <= labels.items(), f"{key(obj)} selects none of its own pods"
        pods[key(obj)] = labels
    for service in (obj for obj in base if obj["kind"] == "Service"):
        chosen = [
            k for k, labels in pods.items() if service["spec"]["selector"].items() <= labels.items()
        ]
        assert len(chosen) == 1, f"Service {service['metadata']['name']} selects {chosen}"


# --- images and commands ------------------------------------------------------------------


@pytest.mark.parametrize("build", [build_base, build_gpu], ids=["base", "gpu"])
def test_images_are_the_ones_compose_builds(build) -> None:
    built = compose_images()
    postgres = load_compose()["services"]["postgres"]["image"]
    for obj in workloads(build()):
        for container in containers(obj):
            where = f"{key(obj)} container {container['name']}"
            if obj["metadata"]["name"] == "postgres":
                assert container["image"] == postgres, f"{where}: compose runs {postgres}"
                continue
            assert container["image"] in built, f"{where}: {container['image']} is not built"
            hpsearch_args(container, where)


def test_the_api_serves_on_its_port_with_health_probes(base: list[Obj]) -> None:
    api = find(base, "Deployment", "hpsearch-api")
    assert api["spec"]["replicas"] == 2
    (container,) = containers(api)
    assert container["image"] == "hpsearch-server"
    args = hpsearch_args(container, "the api")
    assert args.command == "serve" and args.host == "0.0.0.0"
    ports = {p.get("name"): p["containerPort"] for p in container["ports"]}
    assert args.port in ports.values(), f"--port {args.port} is not a container port: {ports}"
    for probe in ("readinessProbe", "livenessProbe"):
        get = container[probe]["httpGet"]
        assert get["path"] == "/healthz", probe
        assert ports.get(get["port"], get["port"]) == args.port, f"{probe} asks another port"
    service = find(base, "Service", "hpsearch-api")
    (port,) = service["spec"]["ports"]
    assert ports.get(port["targetPort"], port["targetPort"]) == args.port


@pytest.mark.parametrize("build", [build_base, build_gpu], ids=["base", "gpu"])
def test_workers_reach_the_api_service_with_the_worker_token(build) -> None:
    objects = build()
    worker = find(objects, "Deployment", "hpsearch-worker")
    api_port = hpsearch_args(containers(find(objects, "Deployment", "hpsearch-api"))[0], "api").port
    service = find(objects, "Service", "hpsearch-api")
    assert api_port in [p["port"] for p in service["spec"]["ports"]]
    assert worker["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] >= 60, (
        "a worker needs time to hand its trial back after SIGTERM"
    )
    for container in containers(worker):
        args = hpsearch_args(container, "the worker")
        assert args.command == "worker"
        url = urlsplit(args.server)
        assert (url.scheme, url.hostname, url.port) == ("http", "hpsearch-api", api_port)
        (token,) = [var for var in container["env"] if var["name"] == "HPSEARCH_TOKEN"]
        assert token["valueFrom"]["secretKeyRef"] == {
            "name": SECRET,
            "key": "HPSEARCH_WORKER_TOKEN",
        }, "the worker token must come from the Secret"
        mounts = {m["mountPath"] for m in container.get("volumeMounts", [])}
        torch_home = compose_images()[container["image"]].env["TORCH_HOME"]
        assert torch_home in mounts, f"mount a volume at TORCH_HOME {torch_home}"


def test_the_base_worker_runs_on_the_cpu(base: list[Obj]) -> None:
    (container,) = containers(find(base, "Deployment", "hpsearch-worker"))
    args = hpsearch_args(container, "the base worker")
    assert args.device == "cpu" and args.gpus is None
    assert "nvidia.com/gpu" not in str(container.get("resources"))


def test_the_gpu_overlay_gives_each_worker_one_gpu(gpu: list[Obj]) -> None:
    worker = find(gpu, "Deployment", "hpsearch-worker")
    (container,) = containers(worker)
    assert container["image"] == "hpsearch-worker"
    assert compose_images()["hpsearch-worker"].base.startswith("pytorch/pytorch:")
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert container["resources"]["requests"]["cpu"], "the patch must keep the base's requests"
    args = hpsearch_args(container, "the gpu worker")
    assert args.gpus == "all", "use every GPU the pod is given"
    assert worker["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] >= 60
    # The rest of the base is untouched.
    api = ("Deployment", "hpsearch-api")
    assert find(gpu, *api) == find(build_base(), *api)


# --- settings and secrets -----------------------------------------------------------------


def api_settings(objects: list[Obj]) -> Settings:
    (container,) = containers(find(objects, "Deployment", "hpsearch-api"))
    env = {**compose_images()[container["image"]].env, **resolve_env(container, objects)}
    with pytest.MonkeyPatch.context() as patch:
        for name in [k for k in os.environ if k.startswith(("HPSEARCH_", "AWS_"))]:
            patch.delenv(name)
        for name, value in env.items():
            patch.setenv(name, value)
        return Settings()


def test_the_api_settings_point_at_postgres_and_the_bucket(base: list[Obj]) -> None:
    settings = api_settings(base)
    postgres = find(base, "StatefulSet", "postgres")
    (db,) = containers(postgres)
    db_env = resolve_env(db, base)
    service = find(base, "Service", postgres["spec"]["serviceName"])
    assert service["spec"]["clusterIP"] == "None", "the StatefulSet's Service must be headless"
    url = urlsplit(settings.storage_url)
    assert url.scheme == "postgresql+psycopg", settings.storage_url
    assert url.hostname == service["metadata"]["name"]
    assert url.port in [p["port"] for p in service["spec"]["ports"]]
    assert (url.username, url.password, url.path.lstrip("/")) == (
        db_env["POSTGRES_USER"],
        db_env["POSTGRES_PASSWORD"],
        db_env["POSTGRES_DB"],
    ), "HPSEARCH_STORAGE must use the database's user, password and name"
    assert postgres["spec"]["volumeClaimTemplates"], "PostgreSQL needs a volume of its own"
    for claim in postgres["spec"]["volumeClaimTemplates"]:  # the schema has no enum for these
        modes = set(claim["spec"]["accessModes"])
        assert modes and modes <= {"ReadWriteOnce", "ReadWriteOncePod"}, modes
    mounts = {m["name"] for m in db["volumeMounts"]}
    assert {t["metadata"]["name"] for t in postgres["spec"]["volumeClaimTemplates"]} <= mounts
    assert settings.tokens_enabled and settings.worker_token
    # Two replicas share artifacts only through object storage.
    assert (settings.artifacts or "").startswith("s3://"), settings.artifacts
    (api,) = containers(find(base, "Deployment", "hpsearch-api"))
    env = resolve_env(api, base)
    assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "HPSEARCH_S3_ENDPOINT_URL"} <= set(env)


def test_secrets_come_only_from_the_secret(base: list[Obj]) -> None:
    secret = find(base, "Secret", SECRET)
    assert {
        "HPSEARCH_ADMIN_TOKEN",
        "HPSEARCH_WORKER_TOKEN",
        "POSTGRES_PASSWORD",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
    } <= set(secret["stringData"])
    for name, value in secret["stringData"].items():
        assert value.startswith("change-me"), f"{name} must be a change-me placeholder"
    for obj in workloads(base):
        for container in containers(obj):
            for var in container.get("env", []):
                if re.search(r"PASSWORD|TOKEN|SECRET", var["name"]):
                    ref = var.get("valueFrom", {}).get("secretKeyRef")
                    assert ref and ref["name"] == SECRET, f"{var['name']} not from the Secret"
    for cm in (obj for obj in base if obj["kind"] == "ConfigMap"):
        assert not set(cm["data"]) & set(secret["stringData"]), "a secret in a ConfigMap"
