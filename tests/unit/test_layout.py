"""The layout's import rules, checked in fresh interpreters: what each kind of user loads."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ENGINE_LIBRARIES = ("rq", "redis", "sqlalchemy")


def loaded_after(statement: str) -> list[str]:
    """The modules a fresh interpreter has loaded after running `statement` in the repository."""
    script = f"import json, sys\n{statement}\nprint(json.dumps(sorted(sys.modules)))"
    output = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=True)
    return list(json.loads(output.stdout))


def top_level(modules: list[str]) -> set[str]:
    return {name.split(".")[0] for name in modules}


@pytest.mark.parametrize("statement", [
    "from runner import function, progress",
    "from runner import PermanentError, UploadId, current_attempt, save_artifact, upload_path",
])
def test_what_function_authors_import_loads_no_engine_library(statement: str) -> None:
    assert top_level(loaded_after(statement)).isdisjoint(ENGINE_LIBRARIES)


def test_the_http_client_loads_no_engine_code() -> None:
    modules = loaded_after("import runner.client.http_client")
    ours = {name for name in modules if name.split(".")[0] == "runner"}
    assert ours == {"runner", "runner.client", "runner.client.http_client", "runner.errors", "runner.status"}
    assert top_level(modules).isdisjoint({*ENGINE_LIBRARIES, "pydantic", "flask"})


def test_the_api_loads_no_worker_code() -> None:
    modules = loaded_after("import api; api.create_app")
    assert [name for name in modules if name.startswith(("runner.worker", "runner.dev", "runner.cli"))] == []
