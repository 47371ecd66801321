"""Copies the console's front-end libraries from the npm registry into the package:
python scripts/console_vendor.py [--update]   (what `make console-vendor` runs)

For each package of src/taskflow/console/vendor-lock.json: `npm pack name@version` into a
temporary folder, the tarball checked against the lock's sha512 `integrity` (the
registry's), then the listed files copied to src/taskflow/console/static/vendor/. Each
copy's sha256 must equal the lock's; `--update` writes them instead (after a version bump:
set `version` and `integrity` from `npm view <name>@<version> dist.integrity`). The copies
are committed, so `pip install` and `make dev` need no npm; tests/unit/test_console_vendor.py
holds them to the lock.
"""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONSOLE = ROOT / "src" / "taskflow" / "console"
LOCK = CONSOLE / "vendor-lock.json"
VENDOR = CONSOLE / "static" / "vendor"


def _pack(name: str, version: str, folder: Path) -> Path:
    out = subprocess.run(["npm", "pack", "--silent", "--pack-destination", str(folder),
                          f"{name}@{version}"], check=True, capture_output=True, text=True)
    return folder / out.stdout.strip().splitlines()[-1]


def _integrity(path: Path) -> str:
    return "sha512-" + base64.b64encode(hashlib.sha512(path.read_bytes()).digest()).decode()


def main(update: bool) -> int:
    lock = json.loads(LOCK.read_text())
    VENDOR.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        for pkg in lock["packages"]:
            tarball = _pack(pkg["name"], pkg["version"], Path(tmp))
            if _integrity(tarball) != pkg["integrity"]:
                print(f"{pkg['name']}@{pkg['version']}: tarball integrity "
                      f"{_integrity(tarball)} is not the lock's {pkg['integrity']}")
                return 1
            with tarfile.open(tarball) as tar:
                for member, entry in pkg["files"].items():
                    data = tar.extractfile(member).read()
                    digest = hashlib.sha256(data).hexdigest()
                    if update:
                        entry["sha256"] = digest
                    elif digest != entry["sha256"]:
                        print(f"{pkg['name']}: {member} has sha256 {digest}, the lock says "
                              f"{entry['sha256']} (run with --update after a version bump)")
                        return 1
                    (VENDOR / entry["to"]).write_bytes(data)
                    print(f"{pkg['name']}@{pkg['version']}: {member} -> vendor/{entry['to']}")
    if update:
        LOCK.write_text(json.dumps(lock, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main("--update" in sys.argv[1:]))
