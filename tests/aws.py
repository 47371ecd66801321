"""A real moto server (AWS emulated over HTTP) on a free loopback port, for the tests."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from taskflow.adapters.embedded import free_port
from tests.helpers import stop_process

MOTO_SERVER = shutil.which("moto_server", path=str(Path(sys.executable).parent))

REGION = "eu-west-1"
AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_CONFIG_FILE": os.devnull,
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
}


class Moto:
    def __init__(self, url: str) -> None:
        self.url = url

    def client(self, service: str, **kwargs: str):
        import boto3

        return boto3.client(service, endpoint_url=self.url, region_name=REGION,
                            **({"aws_access_key_id": "testing",
                                "aws_secret_access_key": "testing"} | kwargs))


@contextlib.contextmanager
def moto_server(tmp: Path, **env: str) -> Iterator[Moto]:
    """``moto_server`` on a free loopback port (log in ``tmp``), stopped on leaving."""
    port = free_port()
    log = open(tmp / f"moto-{port}.log", "wb")
    process = subprocess.Popen([MOTO_SERVER, "-H", "127.0.0.1", "-p", str(port)],
                               stdout=log, stderr=subprocess.STDOUT,
                               env={**os.environ, **AWS_ENV, **env})
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"{url}/moto-api/", timeout=1).close()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"moto_server did not start: {log.name}") from None
                time.sleep(0.1)
        yield Moto(url)
    finally:
        stop_process(process)
        log.close()
