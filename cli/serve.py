"""`hpsearch serve`: flags become HPSEARCH_* settings, then uvicorn runs the app factory (in
each of --workers processes)."""

from __future__ import annotations

import argparse
import os

from pydantic import ValidationError

from cli.errors import CliError

FLAG_TO_ENV = {
    "storage": "HPSEARCH_STORAGE",
    "data_dir": "HPSEARCH_DATA_DIR",
    "artifacts": "HPSEARCH_ARTIFACTS",
    "heartbeat_interval": "HPSEARCH_HEARTBEAT_INTERVAL",
    "lease_grace": "HPSEARCH_LEASE_GRACE",
    "max_retries": "HPSEARCH_MAX_RETRIES",
    "public_url": "HPSEARCH_PUBLIC_URL",
}


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from service.artifact_store import ArtifactStoreError
    from service.settings import Settings
    from service.storage import open_artifact_store

    for flag, env in FLAG_TO_ENV.items():
        value = getattr(args, flag)
        if value is not None:
            os.environ[env] = str(value)
    try:
        settings = Settings()  # validate once here, so a bad setting is one clear line
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise CliError(f"invalid settings: {problems}") from None
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    try:  # a missing or refused bucket is one line here, not a 500 at the first upload
        open_artifact_store(settings)
    except ArtifactStoreError as exc:
        raise CliError(str(exc)) from None
    uvicorn.run(
        "service.app:create_app",
        factory=True,
        host=args.host,
        port=args.port,
        workers=args.workers,
        log_level=args.log_level.lower(),
        timeout_graceful_shutdown=10,
    )
    return 0
