"""`hpsearch serve`: flags override HPSEARCH_* settings, validated once here, then uvicorn runs
the app built from exactly these settings (in each of --workers processes)."""

from __future__ import annotations

import argparse
import os

from pydantic import ValidationError

from cli.errors import CliError

FLAGS = (
    "storage",
    "data_dir",
    "artifacts",
    "heartbeat_interval",
    "lease_grace",
    "max_retries",
    "public_url",
)


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from service.app import SETTINGS_ENV, create_app
    from service.artifact_store import ArtifactStoreError
    from service.settings import Settings
    from service.storage import open_artifact_store

    given = {flag: getattr(args, flag) for flag in FLAGS if getattr(args, flag) is not None}
    try:
        settings = Settings(**given)  # flags over the environment; a bad one is one clear line
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise CliError(f"invalid settings: {problems}") from None
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    try:  # a missing or refused bucket is one line here, not a 500 at the first upload
        open_artifact_store(settings)
    except ArtifactStoreError as exc:
        raise CliError(str(exc)) from None
    common = dict(
        host=args.host,
        port=args.port,
        log_level=args.log_level.lower(),
        timeout_graceful_shutdown=10,
    )
    if args.workers == 1:
        uvicorn.run(create_app(settings), **common)
        return 0
    # Server processes are started by uvicorn from an import string: they get the validated
    # settings as one JSON document (secrets included: they came from this environment).
    os.environ[SETTINGS_ENV] = settings.model_dump_json(context={"secrets": True})
    uvicorn.run("service.app:create_app_from_serve", factory=True, workers=args.workers, **common)
    return 0
