"""The compose stack and the two images, checked without a Docker engine: the structure of
docker-compose.yml, that every `hpsearch` command in it and in the Dockerfiles is one the real
CLI parser accepts, that the settings it passes validate, that no secret is written in it, and
that each Dockerfile refers to files that exist."""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import subprocess
import tomllib
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

from cli.main import build_parser
from service.settings import Settings
from tests.deploy.manifests import (
    COMPOSE_FILE,
    ENV_EXAMPLE,
    REPO,
    Image,
    copy_sources,
    dockerignore_patterns,
    environment,
    gpu_requests,
    interpolate,
    is_ignored,
    load_compose,
    mounts,
    parse_dockerfile,
    read_env_file,
    references,
    under_a_mount,
)

SECRET_NAME = re.compile(r"PASSWORD|TOKEN|SECRET|CREDENTIAL|_KEY$", re.IGNORECASE)
TORCH = {"torch", "torchvision"}
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())


# --- loading ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Stack:
    raw: dict[str, Any]  # as written, variables not substituted
    services: dict[str, dict[str, Any]]  # substituted with the values of .env.example
    env_example: dict[str, str]
    env_comments: dict[str, list[str]]

    def image(self, name: str) -> Image | None:
        build = self.services[name].get("build")
        if build is None:
            return None
        if isinstance(build, str):
            build = {"context": build}
        context = (REPO / build.get("context", ".")).resolve()
        path = context / build.get("dockerfile", "Dockerfile")
        assert path.is_file(), f"{name}: build.dockerfile {path} does not exist"
        return Image(path, context, parse_dockerfile(path))

    def argv(self, name: str) -> list[str]:
        """What the container runs: compose's entrypoint/command over the image's."""
        service, image = self.services[name], self.image(name)
        entrypoint = _words(service.get("entrypoint"))
        command = _words(service.get("command"))
        if entrypoint is None:
            entrypoint = image.exec_form("ENTRYPOINT") if image else None
            if command is None:
                command = image.exec_form("CMD") if image else None
        return [*(entrypoint or []), *(command or [])]

    def hpsearch_args(self, name: str) -> argparse.Namespace | None:
        argv = self.argv(name)
        if not argv or PurePosixPath(argv[0]).name != "hpsearch":
            return None
        return parse_cli(argv[1:], f"service {name}")

    def with_command(self, command: str) -> dict[str, argparse.Namespace]:
        out = {}
        for name in self.services:
            args = self.hpsearch_args(name)
            if args is not None and args.command == command:
                out[name] = args
        return out


def mounts_of(stack: Stack, service: dict[str, Any]) -> list[tuple[str, str, bool]]:
    return mounts(service, stack.raw.get("volumes") or {})


def _words(value: str | list[str] | None) -> list[str] | None:
    if value is None or isinstance(value, list):
        return value
    return shlex.split(value)


def strict_parser() -> argparse.ArgumentParser:
    """The CLI's parser, refusing abbreviated flags: a file must spell each flag in full."""
    parser = build_parser()
    parsers = [parser]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            parsers += action.choices.values()
    for each in parsers:
        each.allow_abbrev = False
    return parser


def parse_cli(argv: list[str], where: str) -> argparse.Namespace:
    try:
        return strict_parser().parse_args(argv)
    except SystemExit:
        pytest.fail(f"{where}: `hpsearch {shlex.join(argv)}` is not a valid hpsearch command")


@pytest.fixture(scope="module")
def stack() -> Stack:
    raw = load_compose()
    env_example, comments = read_env_file(ENV_EXAMPLE)
    return Stack(raw, interpolate(raw, env_example)["services"], env_example, comments)


# --- the services -------------------------------------------------------------------------


def test_the_three_services_start_by_default(stack: Stack) -> None:
    for name in ("postgres", "api", "worker"):
        assert name in stack.services, f"docker-compose.yml has no {name} service"
        assert not stack.services[name].get("profiles"), f"{name} must start without a profile"


def test_postgres_is_pinned_persistent_and_checked(stack: Stack) -> None:
    postgres = stack.services["postgres"]
    image, _, tag = postgres["image"].partition(":")
    assert image in ("postgres", "docker.io/library/postgres"), postgres["image"]
    assert re.match(r"\d+\.\d+", tag), f"pin postgres to a version (major.minor), not {tag!r}"
    data = [m for m in mounts_of(stack, postgres) if m[1] == "/var/lib/postgresql/data"]
    assert data and data[0][2], "postgres data must live on a named volume"
    test = postgres["healthcheck"]["test"]
    assert "pg_isready" in (test if isinstance(test, str) else " ".join(test))


def test_dependencies_wait_for_healthy_services(stack: Stack) -> None:
    assert stack.services["api"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name in stack.with_command("worker"):
        assert stack.services[name]["depends_on"]["api"]["condition"] == "service_healthy", name
    for name, service in stack.services.items():
        depends = service.get("depends_on") or {}
        for target, rule in depends.items() if isinstance(depends, dict) else []:
            if rule.get("condition") == "service_healthy":
                image = stack.image(target)
                assert stack.services[target].get("healthcheck") or (
                    image and image.last("HEALTHCHECK")
                ), f"{name} waits for {target} to be healthy, but {target} has no healthcheck"


def test_the_api_serves_on_the_published_port_and_is_checked_there(stack: Stack) -> None:
    servers = stack.with_command("serve")
    assert list(servers) == ["api"], f"exactly the api service runs `hpsearch serve`: {servers}"
    args = servers["api"]
    assert args.host == "0.0.0.0", "inside a container the server must listen on all interfaces"
    published = [str(p).rsplit(":", 1)[-1].split("/")[0] for p in stack.services["api"]["ports"]]
    assert str(args.port) in published, f"--port {args.port} is not published: {published}"
    test = " ".join(stack.services["api"]["healthcheck"]["test"])
    assert f":{args.port}/healthz" in test, f"the healthcheck must ask /healthz on {args.port}"


def test_workers_reach_the_api_by_its_service_name(stack: Stack) -> None:
    workers = stack.with_command("worker")
    assert "worker" in workers, "the worker service must run `hpsearch worker`"
    port = stack.with_command("serve")["api"].port
    for name, args in workers.items():
        url = urlsplit(args.server)
        assert (url.scheme, url.hostname, url.port) == ("http", "api", port), (
            f"{name}: --server {args.server} is not the api service"
        )


def test_workers_reserve_nvidia_gpus_and_use_what_they_reserve(stack: Stack) -> None:
    pinned: dict[str, str] = {}
    for name, args in stack.with_command("worker").items():
        requests = gpu_requests(stack.services[name])
        assert len(requests) == 1, f"{name}: reserve GPUs with one deploy.resources device request"
        request = requests[0]
        assert request.get("driver") == "nvidia", name
        assert "gpu" in request.get("capabilities", []), name
        count, ids = request.get("count"), request.get("device_ids")
        assert (count is None) != (ids is None), f"{name}: give count or device_ids, not both"
        if ids is not None:
            assert ids and all(isinstance(i, str) for i in ids), f"{name}: device_ids as strings"
            for gpu in ids:
                assert gpu not in pinned, f"GPU {gpu} is pinned by {pinned.get(gpu)} and {name}"
                pinned[gpu] = name
            visible: int | None = len(ids)
        else:
            assert count == "all" or (isinstance(count, int) and count >= 1), f"{name}: {count=}"
            visible = None if count == "all" else count
        # A GPU container must train on the GPU: `--device auto` would fall back to the CPU.
        assert args.gpus is not None or args.device.startswith("cuda:"), (
            f"{name}: pass --gpus or --device cuda:N, not --device {args.device}"
        )
        if visible is not None:  # inside the container the reserved GPUs are cuda:0..visible-1
            used = (
                [int(args.device.split(":")[1])]
                if args.gpus is None
                else ([] if args.gpus == "all" else [int(g) for g in args.gpus.split(",")])
            )
            assert all(i < visible for i in used), f"{name} sees {visible} GPUs but uses {used}"
    assert pinned, "give an example of a worker pinned to given GPU ids (device_ids)"


def test_the_worker_service_can_be_scaled(stack: Stack) -> None:
    worker = stack.services["worker"]
    assert "container_name" not in worker, "a fixed container_name prevents --scale worker=N"
    assert not worker.get("ports"), "published ports clash between scaled workers"
    replicas = str((worker.get("deploy") or {}).get("replicas", 1))
    assert replicas.isdigit(), f"deploy.replicas must be a count, not {replicas!r}"


def test_volumes_keep_artifacts_and_pretrained_weights(stack: Stack) -> None:
    api = stack.services["api"]
    api_volumes = [target for _, target, named in mounts_of(stack, api) if named]
    settings = api_settings(stack)
    assert under_a_mount(str(settings.data_dir), api_volumes), "HPSEARCH_DATA_DIR is on no volume"
    if not (settings.artifacts or "").startswith("s3://"):
        assert settings.artifacts and under_a_mount(settings.artifacts, api_volumes), (
            f"artifacts {settings.artifacts} are not on a volume: {api_volumes}"
        )
    for name in stack.with_command("worker"):
        image = stack.image(name)
        assert image is not None
        torch_home = image.env.get("TORCH_HOME")
        assert torch_home, f"{image.path.name} must set TORCH_HOME"
        volumes = mounts_of(stack, stack.services[name])
        named = [target for _, target, is_named in volumes if is_named]
        assert torch_home in named, f"{name}: no named volume at TORCH_HOME {torch_home}"
        targets = [target for _, target, _ in volumes]
        for root in settings.allowed_roots:
            assert under_a_mount(str(root), targets), f"{name} does not mount allowed root {root}"


# --- settings and secrets -----------------------------------------------------------------


def api_settings(stack: Stack) -> Settings:
    """Settings as the api container builds them: the image's ENV, then compose's environment."""
    image = stack.image("api")
    assert image is not None
    env = {**image.env, **environment(stack.services["api"])}
    with pytest.MonkeyPatch.context() as patch:
        for key in [k for k in os.environ if k.startswith("HPSEARCH_")]:
            patch.delenv(key)
        for key, value in env.items():
            if key.startswith("HPSEARCH_"):
                patch.setenv(key, value)
        return Settings()


def test_the_api_settings_validate_and_point_at_postgres(stack: Stack) -> None:
    settings = api_settings(stack)
    postgres = environment(stack.services["postgres"])
    url = urlsplit(settings.storage_url)
    assert url.scheme == "postgresql+psycopg" and url.hostname == "postgres", settings.storage_url
    assert url.port in (None, 5432)
    assert (url.username, url.password, url.path.lstrip("/")) == (
        postgres["POSTGRES_USER"],
        postgres["POSTGRES_PASSWORD"],
        postgres["POSTGRES_DB"],
    ), "HPSEARCH_STORAGE must use the postgres service's user, password and database"
    assert settings.tokens_enabled, "a deployment on the network must have tokens on"
    image = stack.image("api")
    assert image is not None
    spaces = [
        ins
        for ins in image.final_stage
        if ins.keyword == "COPY" and (copy_sources(ins) or []) == ["search_spaces/"]
    ]
    assert spaces, "the server image must copy search_spaces/"
    target = (spaces[0].exec_form() or shlex.split(spaces[0].arguments))[-1]
    assert PurePosixPath(settings.search_spaces_dir) == PurePosixPath(target), (
        f"HPSEARCH_SEARCH_SPACES_DIR {settings.search_spaces_dir} is not where the image copies "
        f"search_spaces/ ({target})"
    )


def test_every_hpsearch_variable_is_read_by_someone(stack: Stack) -> None:
    prefix = Settings.model_config["env_prefix"]
    setting_names = {prefix + name.upper() for name in Settings.model_fields}
    for name, service in stack.services.items():
        args = stack.hpsearch_args(name)
        image = stack.image(name)
        env = {**(image.env if image else {}), **environment(service)}
        for key in (k for k in env if k.startswith("HPSEARCH_")):
            if args is not None and args.command == "serve" and key in setting_names:
                continue
            assert args is not None and cli_reads(key, args.command), (
                f"{name}: nothing reads {key} (not a setting, not a CLI default)"
            )


def cli_reads(key: str, command: str) -> bool:
    """Whether the parser takes a default for `hpsearch COMMAND` from this variable."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(key, "sentinel-4d1f")
        return "sentinel-4d1f" in vars(build_parser().parse_args([command])).values()


def test_no_secret_is_written_in_the_compose_file(stack: Stack) -> None:
    for name, service in stack.raw["services"].items():
        for key, value in environment(service).items():
            if SECRET_NAME.search(key):
                assert_secret_reference(value, f"{name}.{key}")
            userinfo = re.search(r"://[^/@\s]*:([^/@\s]*)@", value)
            if userinfo:
                assert_secret_reference(userinfo.group(1), f"the password in {name}.{key}")
    text = COMPOSE_FILE.read_text()
    for key, value in stack.env_example.items():
        if SECRET_NAME.search(key):
            assert value not in text, f"the value of {key} is written in docker-compose.yml"


def assert_secret_reference(value: str, where: str) -> None:
    refs = references(value)
    assert len(refs) == 1 and re.fullmatch(r"\$\{[^}]*\}|\$\w+", value), (
        f"{where} must be exactly one ${{VAR}} reference, not {value!r}"
    )
    assert refs[0].op in (None, "?", ":?"), f"{where}: a secret cannot have a default ({value})"


def test_compose_defaults_are_the_documented_values(stack: Stack) -> None:
    """Leaving a variable out of .env gives what .env.example shows."""
    for ref in references(COMPOSE_FILE.read_text()):
        if ref.op in ("-", ":-"):
            assert ref.arg == stack.env_example.get(ref.name), (
                f"${{{ref.name}}} defaults to {ref.arg!r} in docker-compose.yml but "
                f".env.example says {stack.env_example.get(ref.name)!r}"
            )


def test_env_example_documents_exactly_the_variables_used(stack: Stack) -> None:
    used = {ref.name for ref in references(COMPOSE_FILE.read_text())}
    listed = set(stack.env_example)
    assert not used - listed, f"used in docker-compose.yml, not in .env.example: {used - listed}"
    assert not listed - used, f"in .env.example, used nowhere: {listed - used}"
    for key in listed:
        assert stack.env_comments[key], f".env.example: document {key} in a comment above it"
        if SECRET_NAME.search(key):
            assert stack.env_example[key].startswith("change-me"), (
                f".env.example: {key} must be a change-me placeholder, not a real value"
            )


# --- the images ---------------------------------------------------------------------------


def images(stack: Stack) -> dict[str, Image]:
    out: dict[str, Image] = {}
    for name in stack.services:
        image = stack.image(name)
        if image is not None:
            out.setdefault(image.path.name, image)
    assert set(out) == {"server.Dockerfile", "worker.Dockerfile"}, set(out)
    return out


def test_dockerfiles_copy_files_that_exist_and_are_in_the_context(stack: Stack) -> None:
    patterns = dockerignore_patterns()
    for image in images(stack).values():
        copies = [ins for ins in image.instructions if ins.keyword in ("COPY", "ADD")]
        assert copies, image.path.name
        for ins in copies:
            for source in copy_sources(ins) or []:
                assert not re.match(r"[a-z]+://", source), f"{image.path.name}: ADD of a URL"
                assert (image.context / source).exists(), (
                    f"{image.path.name}:{ins.line}: {source} does not exist in the build context"
                )
                assert not is_ignored(source, patterns), (
                    f"{image.path.name}:{ins.line}: .dockerignore leaves {source} out"
                )
    for secret_or_bulk in (".env", ".git", ".venv"):
        assert is_ignored(secret_or_bulk, patterns), f".dockerignore must exclude {secret_or_bulk}"


def test_image_commands_are_real_hpsearch_commands(stack: Stack) -> None:
    for image in images(stack).values():
        argv = [*(image.exec_form("ENTRYPOINT") or []), *(image.exec_form("CMD") or [])]
        assert argv[:1] == ["hpsearch"], f"{image.path.name} must run hpsearch: {argv}"
        parse_cli(argv[1:], image.path.name)
        user = image.last("USER")
        assert user and user.arguments not in ("root", "0"), f"{image.path.name} runs as root"


def test_the_server_image_has_no_torch(stack: Stack) -> None:
    image = images(stack)["server.Dockerfile"]
    assert re.fullmatch(r"python:3\.1[1-9][\w.-]*-slim[\w.-]*", image.base), image.base
    assert image.exec_form("CMD")[:2] == ["hpsearch", "serve"]
    assert image.last("EXPOSE") and "8000" in image.last("EXPOSE").arguments.split()
    assert image.last("HEALTHCHECK") and "/healthz" in image.last("HEALTHCHECK").arguments
    extras = PYPROJECT["project"]["optional-dependencies"]
    installs = image.pip_installs()
    installed = [extra for words in installs for extra in project_extras(words)]
    assert "server" in installed, f"the server image must install .[server]: {installs}"
    for extra in installed:
        names = {Requirement(r).name.lower() for r in extras[extra]}
        assert not names & TORCH, f"the server image installs extra {extra}: {names & TORCH}"
    for words in installs:
        named = {Requirement(w).name.lower() for w in words if not w.startswith(("-", ".", "/"))}
        assert not named & TORCH, f"the server image installs {named & TORCH}"
    copied = [
        s
        for ins in image.instructions
        if ins.keyword in ("COPY", "ADD")
        for s in copy_sources(ins) or []
    ]
    assert not any(s.rstrip("/") == "worker" or s in (".", "./") for s in copied), (
        f"the server image needs no worker code: {copied}"
    )


def test_the_worker_image_keeps_the_official_pytorch(stack: Stack) -> None:
    image = images(stack)["worker.Dockerfile"]
    match = re.fullmatch(
        r"pytorch/pytorch:(?P<torch>\d+\.\d+\.\d+)-cuda(?P<cuda>\d+\.\d+)-cudnn\d+-runtime",
        image.base,
    )
    assert match, f"the worker image must be FROM a pytorch/pytorch runtime tag: {image.base}"
    torch_req = next(
        Requirement(r)
        for r in PYPROJECT["project"]["optional-dependencies"]["worker"]
        if Requirement(r).name == "torch"
    )
    assert Version(match["torch"]) in torch_req.specifier, (
        f"the image's torch {match['torch']} is outside the worker extra's {torch_req}"
    )
    installs = [words for words in image.pip_installs() if "worker" in project_extras(words)]
    assert installs, "the worker image must install .[worker]"
    for words in installs:
        assert {"--no-deps", "-c", "--constraint"} & set(words) or any(
            w.startswith("--constraint=") for w in words
        ), f"pip would be free to replace the image's torch: pip install {shlex.join(words)}"
    assert image.exec_form("ENTRYPOINT") == ["hpsearch"]


def project_extras(words: list[str]) -> list[str]:
    """The extras of the project itself (`.[a,b]`) in pip install arguments."""
    out = []
    for word in words:
        match = re.fullmatch(r"\.\[([\w,\s-]+)\]", word)
        if match:
            out += [extra.strip() for extra in match.group(1).split(",")]
    return out


# --- with Docker Compose, where it is installed ---------------------------------------------


def test_docker_compose_accepts_the_file() -> None:
    docker = shutil.which("docker")
    if not docker or subprocess.run([docker, "compose", "version"], capture_output=True).returncode:
        pytest.skip("the Docker Compose v2 plugin is not installed (`docker compose`)")
    result = subprocess.run(
        [docker, "compose", "--env-file", ENV_EXAMPLE, "-f", COMPOSE_FILE, "config", "-q"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
