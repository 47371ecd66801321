"""The vendored front-end libraries are the files the lock names, byte for byte (the lock
holds the registry's sha512 of each tarball and the sha256 of each file copied from it:
scripts/console_vendor.py), and each library ships with its license."""

import hashlib
import json
from pathlib import Path

from taskflow.console import static_dir

LOCK = Path(static_dir()).parent / "vendor-lock.json"


def test_vendored_files_match_the_lock():
    lock = json.loads(LOCK.read_text())
    vendor = static_dir() / "vendor"
    expected = set()
    for pkg in lock["packages"]:
        assert pkg["integrity"].startswith("sha512-"), pkg["name"]
        assert any(e["to"].endswith("LICENSE") for e in pkg["files"].values()), pkg["name"]
        for member, entry in pkg["files"].items():
            data = (vendor / entry["to"]).read_bytes()
            assert hashlib.sha256(data).hexdigest() == entry["sha256"], (pkg["name"], member)
            expected.add(entry["to"])
    # Nothing in vendor/ that the lock does not account for.
    assert {p.name for p in vendor.iterdir()} == expected
