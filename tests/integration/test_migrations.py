import asyncio

import asyncpg

from taskflow.adapters.migrate import migrate, migration_files
from taskflow.models import Job


async def _fresh_database(servers, name):
    admin = await asyncpg.connect(servers.database_url)
    await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    await admin.execute(f'CREATE DATABASE "{name}"')
    await admin.close()
    base, sep, query = servers.database_url.partition("?")
    return f"{base.rpartition('/')[0]}/{name}{sep}{query}"


async def test_concurrent_migrations_from_empty_apply_each_file_once(servers, settings):
    url = await _fresh_database(servers, "taskflow_migrate_test")
    conns = [await asyncpg.connect(url) for _ in range(3)]
    try:
        applied = await asyncio.gather(*(migrate(c, settings.migrations_path) for c in conns))
        names = [p.name for _, p in migration_files(settings.migrations_path)]
        assert sorted(sum(applied, [])) == names  # each applied exactly once in all
        assert await migrate(conns[0], settings.migrations_path) == []
        # The schema is the one the code expects: the jobs row maps onto Job exactly.
        columns = await conns[0].fetch(
            "SELECT column_name FROM information_schema.columns WHERE table_name = 'jobs'")
        assert {r["column_name"] for r in columns} == set(Job.__struct_fields__)
        versions = await conns[0].fetch("SELECT version FROM schema_migrations ORDER BY 1")
        assert [r["version"] for r in versions] == [n for n, _ in
                                                    migration_files(settings.migrations_path)]
    finally:
        for c in conns:
            await c.close()
        admin = await asyncpg.connect(servers.database_url)
        await admin.execute('DROP DATABASE IF EXISTS "taskflow_migrate_test" WITH (FORCE)')
        await admin.close()


async def test_a_changed_migration_is_refused(servers, settings, tmp_path):
    import shutil

    import pytest

    from taskflow.adapters.migrate import MigrationChanged

    folder = tmp_path / "migrations"
    shutil.copytree(settings.migrations_path, folder)
    url = await _fresh_database(servers, "taskflow_migrate_changed")
    conn = await asyncpg.connect(url)
    try:
        assert await migrate(conn, folder)
        first = sorted(folder.iterdir())[0]
        first.write_text(first.read_text() + "\n-- edited after release\n")
        with pytest.raises(MigrationChanged, match=f"{first.name} differs"):
            await migrate(conn, folder)
    finally:
        await conn.close()
        admin = await asyncpg.connect(servers.database_url)
        await admin.execute('DROP DATABASE IF EXISTS "taskflow_migrate_changed" WITH (FORCE)')
        await admin.close()
