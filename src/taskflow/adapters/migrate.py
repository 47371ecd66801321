"""Apply the numbered SQL files in ``migrations/`` once each, in order."""

from __future__ import annotations

import hashlib
import logging
import re
from pathlib import Path

import asyncpg

from taskflow.adapters.sql import QUERIES

log = logging.getLogger(__name__)

# Any constant works; it only has to be the same in every process that migrates.
_ADVISORY_LOCK_KEY = 0x7A5C_F10E

_NAME = re.compile(r"^(\d{4})_[\w-]+\.sql$")


class MigrationChanged(RuntimeError):
    """A migration file no longer matches what the database applied."""


def migration_files(folder: Path) -> list[tuple[int, Path]]:
    files = []
    for path in sorted(folder.iterdir()):
        match = _NAME.match(path.name)
        if match:
            files.append((int(match.group(1)), path))
    numbers = [n for n, _ in files]
    if len(set(numbers)) != len(numbers):
        raise RuntimeError(f"two migrations in {folder} share a number")
    return files


async def migrate(conn: asyncpg.Connection, folder: Path) -> list[str]:
    """Apply pending migrations; returns the names applied.

    Safe when several processes start at once: a session advisory lock serialises them and
    each migration commits together with its row in ``schema_migrations``.
    """
    applied_now: list[str] = []
    await conn.execute(QUERIES["migrations_lock"], _ADVISORY_LOCK_KEY)
    try:
        await conn.execute(QUERIES["migrations_table"])
        done = {r["version"]: r for r in await conn.fetch(QUERIES["migrations_applied"])}
        for number, path in migration_files(folder):
            text = path.read_text()
            digest = hashlib.sha256(text.encode()).hexdigest()
            if number in done:
                if done[number]["sha256"] != digest:
                    raise MigrationChanged(
                        f"{path.name} differs from the {done[number]['name']} this database "
                        "applied; a released migration must not change: add a new one")
                continue
            async with conn.transaction():
                await conn.execute(text)
                await conn.execute(QUERIES["migrations_record"], number, path.name, digest)
            log.info("applied migration %s", path.name)
            applied_now.append(path.name)
    finally:
        await conn.execute(QUERIES["migrations_unlock"], _ADVISORY_LOCK_KEY)
    return applied_now
