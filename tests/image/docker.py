"""A Docker engine of the tests' own (``dockerd`` with its own data root, socket and
pidfile, stopped at the end) and the taskflow image built on it without a registry."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.helpers import stop_process

REPO = Path(__file__).resolve().parents[2]
# Built once and kept (gitignored): debootstrap takes a minute or two.
CACHE = REPO / "build" / "image-test"
# A stand-in for python:3.x-slim, which no registry here can serve: Debian's Python.
DEBOOTSTRAP = ["debootstrap", "--variant=minbase",
               "--include=python3,python3-venv,python3-pip,ca-certificates", "bookworm"]
BASE_TAG = "taskflow-test-base:bookworm"


class Unavailable(Exception):
    """No Docker engine can be had here; the message says why."""


def _docker_cli() -> str:
    # Debian's client drives BuildKit; a newer one without buildx cannot.
    for path in ("/usr/bin/docker", shutil.which("docker")):
        if path and os.path.exists(path):
            return path
    raise Unavailable("no docker client (apt-get install docker.io iptables)")


class Docker:
    """A private ``dockerd``; ``run`` calls the client against it."""

    def __init__(self) -> None:
        self.cli = _docker_cli()
        dockerd = shutil.which("dockerd")
        if dockerd is None:
            raise Unavailable("no dockerd (apt-get install docker.io iptables)")
        if os.geteuid() != 0:
            raise Unavailable("dockerd needs root here (no rootless setup)")
        # A short path: the exec root holds unix sockets (108-byte limit).
        self.root = Path(tempfile.mkdtemp(prefix="tfd-"))
        self.socket = self.root / "docker.sock"
        self.pidfile = self.root / "dockerd.pid"
        self.env = {**os.environ, "DOCKER_HOST": f"unix://{self.socket}",
                    "DOCKER_BUILDKIT": "1", "DOCKER_CONFIG": str(self.root / "config")}
        self.log = open(self.root / "dockerd.log", "wb")
        # No bridge and no iptables rules: every container here uses the host's network
        # (and its loopback), so several engines on one machine do not collide.
        self.process = subprocess.Popen(
            [dockerd, "--data-root", str(self.root / "data"), "--exec-root",
             str(self.root / "exec"), "--pidfile", str(self.pidfile), "--host",
             f"unix://{self.socket}", "--bridge", "none", "--iptables=false",
             "--ip6tables=false"],
            stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise Unavailable(f"dockerd exited with {self.process.returncode}: "
                                  f"{self.log_tail()}")
            if self.run("info", check=False, timeout=10).returncode == 0:
                return
            time.sleep(0.2)
        raise Unavailable(f"dockerd did not answer within {timeout:.0f}s: {self.log_tail()}")

    def log_tail(self, lines: int = 20) -> str:
        self.log.flush()
        text = (self.root / "dockerd.log").read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def run(self, *args: str, check: bool = True, timeout: float = 120,
            input: bytes | None = None) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([self.cli, *args], env=self.env, capture_output=True,
                                timeout=timeout, input=input.decode() if input else None,
                                text=True)
        if check and result.returncode != 0:
            raise AssertionError(f"docker {' '.join(args)} failed ({result.returncode}):\n"
                                 f"{result.stdout}\n{result.stderr}")
        return result

    def stop(self) -> None:
        """Stop every container, then the daemon (by its own pid), then remove its data."""
        try:
            if self.process.poll() is None:
                ids = self.run("ps", "-aq", check=False, timeout=30).stdout.split()
                if ids:
                    self.run("rm", "-f", *ids, check=False, timeout=60)
                stop_process(self.process, timeout=30)
        finally:
            self.log.close()
            # dockerd leaves its network namespace bind-mounted in the exec root.
            with open("/proc/self/mounts") as mounts:
                points = [line.split()[1] for line in mounts
                          if line.split()[1].startswith(f"{self.root}/")]
            for point in sorted(points, reverse=True):
                subprocess.run(["umount", "--lazy", point], check=False, capture_output=True)
            shutil.rmtree(self.root, ignore_errors=True)


def base_rootfs() -> Path:
    """The debootstrapped stand-in base as a tarball, cached by the command that made it."""
    key = hashlib.sha256(" ".join(DEBOOTSTRAP).encode()).hexdigest()[:12]
    tarball = CACHE / f"base-rootfs-{key}.tar"
    if tarball.exists():
        return tarball
    if shutil.which("debootstrap") is None:
        raise Unavailable("no debootstrap to build a stand-in base image "
                          "(apt-get install debootstrap), and no registry to pull one")
    CACHE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
        rootfs = Path(tmp) / "rootfs"
        subprocess.run([*DEBOOTSTRAP, str(rootfs), "http://deb.debian.org/debian"],
                       check=True, capture_output=True, timeout=900)
        partial = Path(tmp) / "rootfs.tar"
        subprocess.run(["tar", "-C", str(rootfs), "-cf", str(partial), "."], check=True)
        partial.rename(tarball)
    return tarball


def build_context(dest: Path) -> Path:
    """The files the Dockerfile copies, plus a wheelhouse built on the host, so that the
    build needs no network (none is reachable from inside it here)."""
    for name in ("Dockerfile", ".dockerignore", "pyproject.toml", "README.md",
                 "settings.toml"):
        shutil.copy2(REPO / name, dest / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for name in ("src", "migrations"):
        shutil.copytree(REPO / name, dest / name, ignore=ignore)
    wheelhouse = dest / "wheelhouse"
    wheelhouse.mkdir()
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--wheel-dir", str(wheelhouse),
         f"{REPO}[aws]", "dumb-init>=1.2", "setuptools>=68"],
        check=True, capture_output=True, timeout=900)
    for own in wheelhouse.glob("taskflow-*.whl"):
        own.unlink()  # the build stage builds taskflow from source itself
    return dest


def build_image(docker: Docker, tag: str) -> dict:
    """Import the stand-in base, build the image offline on it, return its inspect data."""
    with open(base_rootfs(), "rb") as tar:
        imported = subprocess.run([docker.cli, "import", "-", BASE_TAG], stdin=tar,
                                  env=docker.env, capture_output=True, text=True, timeout=600)
    if imported.returncode != 0:
        raise AssertionError(f"docker import failed: {imported.stderr}")
    with tempfile.TemporaryDirectory(prefix="tf-context-") as tmp:
        context = build_context(Path(tmp))
        docker.run("build", "--network", "host", "--tag", tag,
                   "--build-arg", f"BASE_IMAGE={BASE_TAG}", "--build-arg", "PIP_NO_INDEX=1",
                   "--build-arg", "VERSION=0.0.0-test", "--build-arg", "REVISION=test",
                   str(context), timeout=1200)
    return json.loads(docker.run("image", "inspect", tag).stdout)[0]

