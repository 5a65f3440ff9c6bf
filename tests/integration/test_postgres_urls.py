"""DATABASE_URL as Procfile platforms set it: `postgres://` and `postgresql://` must reach PostgreSQL via psycopg2."""

from __future__ import annotations

import uuid
from pathlib import Path

import psycopg2
import pytest

from tests.integration.conftest import run_migrate, stack_environment
from tests.servers import PostgresServer


@pytest.mark.parametrize("scheme", ["postgres", "postgresql", "postgresql+psycopg2"])
def test_migrate_accepts_platform_database_urls(postgres_server: PostgresServer, tmp_path: Path, scheme: str) -> None:
    url = postgres_server.create_database(f"runner_url_{uuid.uuid4().hex[:12]}")
    env = stack_environment(
        redis_url="redis://127.0.0.1:1/0",  # migrate does not touch Redis
        database_url=url.replace("postgresql://", f"{scheme}://", 1),
        data_dir=tmp_path,
    )
    run_migrate(env)
    connection = psycopg2.connect(url, connect_timeout=5)
    try:
        with connection.cursor() as cursor:
            cursor.execute("select to_regclass('invocations')")
            assert cursor.fetchone()[0] == "invocations"
    finally:
        connection.close()
