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


async def test_open_jobs_are_backfilled_from_a_database_with_jobs(servers, settings, tmp_path):
    # Migration 0010 over a database already holding unfinished and finished jobs: each
    # unfinished one gets its open_jobs row, each finished one its job_ends row.
    import shutil

    folder = tmp_path / "migrations"
    folder.mkdir()
    for number, path in migration_files(settings.migrations_path):
        if number < 10:
            shutil.copy(path, folder)
    url = await _fresh_database(servers, "taskflow_migrate_backfill")
    conn = await asyncpg.connect(url)
    try:
        await migrate(conn, folder)
        await conn.execute("""
            INSERT INTO jobs (id, tenant, task, queue, run_at, state, max_attempts,
                              finished_at, workflow_id)
            SELECT gen_random_uuid(), 't' || (i % 2), 'noop', 'q', now(),
                   CASE WHEN i % 3 = 0 THEN 'succeeded' ELSE 'queued' END::job_state, 1,
                   CASE WHEN i % 3 = 0 THEN now() - i * interval '1 second' END,
                   CASE WHEN i % 5 = 0 THEN gen_random_uuid() END
            FROM generate_series(1, 30) AS i""")
        shutil.copy(settings.migrations_path / "0010_open_jobs.sql", folder)
        assert await migrate(conn, folder) == ["0010_open_jobs.sql"]
        assert await conn.fetchval("""
            SELECT (SELECT array_agg((id, tenant, queue, workflow_id) ORDER BY id)
                    FROM jobs WHERE finished_at IS NULL)
                   = (SELECT array_agg((id, tenant, queue, workflow_id) ORDER BY id)
                      FROM open_jobs)""")
        assert await conn.fetchval("""
            SELECT (SELECT array_agg((id, tenant, finished_at) ORDER BY id)
                    FROM jobs WHERE finished_at IS NOT NULL)
                   = (SELECT array_agg((job_id, tenant, finished_at) ORDER BY job_id)
                      FROM job_ends)""")
        assert await conn.fetchval("SELECT count(*) FROM open_jobs") == 20
    finally:
        await conn.close()
        admin = await asyncpg.connect(servers.database_url)
        await admin.execute('DROP DATABASE IF EXISTS "taskflow_migrate_backfill" WITH (FORCE)')
        await admin.close()
