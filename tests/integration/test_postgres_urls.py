"""DATABASE_URL as Procfile platforms set it: `postgres://` and `postgresql://` must reach PostgreSQL via psycopg2."""

from __future__ import annotations

import subprocess
import uuid
from pathlib import Path

import psycopg2
import pytest

from tests.integration.conftest import PYTHON, REPO_ROOT, run_migrate, stack_environment
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


def test_a_password_with_url_characters_goes_in_pgpassword(postgres_server: PostgresServer, tmp_path: Path) -> None:
    # docker-compose.yml's way: the URL without a password, libpq reads PGPASSWORD. Pasted into the
    # URL unescaped (as the compose file did), '@' and '/' cut the URL in the wrong places.
    user, password = f"pw_{uuid.uuid4().hex[:10]}", "p@ss/word:1"
    postgres_server.add_password_user(user, password)
    postgres_server.execute(f"CREATE DATABASE {user} OWNER {user}")
    where = f"127.0.0.1:{postgres_server.port}/{user}"
    env = stack_environment(redis_url="redis://127.0.0.1:1/0", database_url=f"postgresql://{user}@{where}",
                            data_dir=tmp_path)
    run_migrate({**env, "PGPASSWORD": password})

    pasted = {**env, "DATABASE_URL": f"postgresql://{user}:{password}@{where}"}
    result = subprocess.run([PYTHON, "-m", "runner", "migrate"], cwd=REPO_ROOT, env=pasted, capture_output=True,
                            text=True, timeout=60, check=False)
    assert result.returncode != 0
    assert password not in result.stdout + result.stderr  # whatever went wrong, the password is not shown
