"""Opening the artifact store: a local folder, or S3-compatible object storage.

S3: `s3://bucket/prefix` keeps each artifact at `prefix/<artifact_id>`. The endpoint comes from
HPSEARCH_S3_ENDPOINT_URL or AWS_ENDPOINT_URL (for non-AWS stores), region and credentials from
the usual AWS_* variables. The bucket is checked when the store opens, so a missing bucket or a
refused access is one clear error at server start rather than a 500 at the first upload.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any, BinaryIO

from optuna.artifacts import FileSystemArtifactStore
from optuna.artifacts._protocol import ArtifactStore
from optuna.artifacts.exceptions import ArtifactNotFound


class ArtifactStoreError(Exception):
    """The artifact store cannot be used; the message names the location and the reason."""


class _NoClose(io.RawIOBase):
    """A read-only view of a stream that upload_fileobj may close without closing the stream
    (boto/boto3#929), so uploads stream instead of being copied into memory first."""

    def __init__(self, raw: BinaryIO) -> None:
        self._raw = raw

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        return self._raw.read(size)

    def readinto(self, buffer: Any) -> int:
        data = self._raw.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


class S3ArtifactStore:
    """Optuna's ArtifactStore protocol on one bucket under one key prefix."""

    def __init__(self, client: Any, bucket: str, prefix: str = "") -> None:
        self.client = client
        self.bucket = bucket
        self.prefix = prefix.strip("/")

    def key(self, artifact_id: str) -> str:
        return f"{self.prefix}/{artifact_id}" if self.prefix else artifact_id

    def open_reader(self, artifact_id: str) -> BinaryIO:
        from botocore.exceptions import ClientError

        try:
            return self.client.get_object(Bucket=self.bucket, Key=self.key(artifact_id))["Body"]
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                raise ArtifactNotFound(f"artifact {artifact_id} is not in {self}") from exc
            raise

    def write(self, artifact_id: str, content_body: BinaryIO) -> None:
        # upload_fileobj sends large bodies as a multipart upload, part by part.
        self.client.upload_fileobj(_NoClose(content_body), self.bucket, self.key(artifact_id))

    def remove(self, artifact_id: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self.key(artifact_id))

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}".rstrip("/")


def open_s3(location: str) -> S3ArtifactStore:
    """The store at s3://bucket[/prefix], after checking that the bucket is there and ours."""
    try:
        import boto3
        from botocore.exceptions import BotoCoreError, ClientError
    except ImportError:
        raise ArtifactStoreError(
            f"{location}: S3 artifacts need boto3 (pip install 'hpsearch[s3]')"
        ) from None
    bucket, _, prefix = location.removeprefix("s3://").partition("/")
    if not bucket:
        raise ArtifactStoreError(f"{location}: no bucket; use s3://bucket/prefix")
    endpoint = os.environ.get("HPSEARCH_S3_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT_URL")
    try:
        client = boto3.client("s3", endpoint_url=endpoint or None)
        client.head_bucket(Bucket=bucket)
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        reason = {
            "404": "the bucket does not exist",
            "NoSuchBucket": "the bucket does not exist",
            "403": "access is refused (check the AWS_* credentials)",
        }.get(code, str(exc))
        raise ArtifactStoreError(f"artifact bucket {bucket!r}: {reason}") from None
    except BotoCoreError as exc:  # no credentials, endpoint unreachable, bad region...
        raise ArtifactStoreError(f"artifact bucket {bucket!r}: {exc}") from None
    return S3ArtifactStore(client, bucket, prefix)


def open_location(location: str) -> ArtifactStore:
    """A folder path or s3://bucket/prefix."""
    if location.startswith("s3://"):
        return open_s3(location)
    Path(location).mkdir(parents=True, exist_ok=True)
    return FileSystemArtifactStore(location)
