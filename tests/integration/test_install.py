"""The project as a distribution: built into a wheel, installed into fresh virtualenvs, used from another folder.

The base install is the command line client (click and rich, nothing of the server); the
`server` extra brings the server's pinned requirements. The server install is checked without
fetching those again: its virtualenv sees the test run's packages, and the wheel goes in alone.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from runner.store.schema import head_revision
from tests.integration.conftest import REPO_ROOT, Stack

SERVER_LIBRARIES = ("rq", "redis", "sqlalchemy", "flask", "gunicorn", "alembic")
INSTALL_TIMEOUT = 300


def run(argv: list[str], cwd: Path, **options: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=INSTALL_TIMEOUT, check=False,
                          **options)  # type: ignore[call-overload]


def checked(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert result.returncode == 0, f"{result.args} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
    return result


# What a build never needs; copied, it would only slow the copy down.
NOT_SOURCES = (".git", ".venv", ".runner", ".*_cache", "__pycache__", "build", "dist", "*.egg-info", "test-artifacts")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project's wheel, built from a copy of the checkout (a build leaves build/ and *.egg-info behind)."""
    source = tmp_path_factory.mktemp("source") / "checkout"
    shutil.copytree(REPO_ROOT, source, ignore=shutil.ignore_patterns(*NOT_SOURCES))
    out = tmp_path_factory.mktemp("wheel")
    checked(run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(out), str(source)], out))
    (built,) = out.glob("async_task_runner-*.whl")
    return built


def make_venv(path: Path, *, see_test_packages: bool = False) -> Path:
    """A fresh virtualenv; with `see_test_packages`, the test run's site-packages are on its path too."""
    checked(run([sys.executable, "-m", "venv", str(path)], path.parent))
    if see_test_packages:
        site = Path(checked(run([str(path / "bin" / "python"), "-c", "import sysconfig; "
                                 "print(sysconfig.get_paths()['purelib'])"], path.parent)).stdout.strip())
        # A plain path line: the test run's own .pth files (its editable install of this checkout) stay out.
        (site / "test-run-packages.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return path / "bin"


def test_the_wheel_holds_the_three_packages_and_their_data(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    assert {name.split("/")[0] for name in names if not name.startswith("async_task_runner")} == {
        "runner", "api", "functions"}
    for needed in ("runner/store/migrations/env.py", "runner/store/migrations/script.py.mako",
                   "runner/store/migrations/versions/0001_create_invocations.py",
                   "functions/_corpus/public_domain.txt", "api/gunicorn_config.py"):
        assert needed in names
    assert not [name for name in names if name.startswith(("tests/", "bench/"))]
    metadata = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("METADATA"))).decode()
    base = re.findall(r"^Requires-Dist: ([^;\n]+)$", metadata, re.MULTILINE)
    assert sorted(base) == ["click>=8.1", "rich>=13"]
    server = set(re.findall(r"^Requires-Dist: (.+); extra == \"server\"$", metadata, re.MULTILINE))
    pinned = {line.split("#")[0].strip() for line in (REPO_ROOT / "requirements.txt").read_text().splitlines()}
    assert server == pinned - {""}
    assert "runner = runner.cli.main:main" in zipfile.ZipFile(wheel).read(
        next(n for n in names if n.endswith("entry_points.txt"))).decode()


def test_the_client_install_has_no_server_and_works_from_anywhere(
    wheel: Path, tmp_path: Path, sqlite_stack: Stack
) -> None:
    bin_dir = make_venv(tmp_path / "client")
    checked(run([str(bin_dir / "pip"), "install", "--quiet", str(wheel)], tmp_path))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    probe = "import importlib.util, json; print(json.dumps([m for m in %r if importlib.util.find_spec(m)]))"
    installed = json.loads(checked(run([str(bin_dir / "python"), "-c", probe % (SERVER_LIBRARIES,)], elsewhere)).stdout)
    assert installed == []

    assert "invoke" in checked(run([str(bin_dir / "runner"), "--help"], elsewhere)).stdout
    listing = checked(run([str(bin_dir / "runner"), "functions", "--json", "--url", sqlite_stack.url], elsewhere))
    assert "simple_calculation" in {spec["name"] for spec in json.loads(listing.stdout)}
    invoked = checked(run([str(bin_dir / "runner"), "invoke", "simple_calculation", "--data", '{"expression": "6*7"}',
                           "--wait", "--url", sqlite_stack.url], elsewhere))
    assert json.loads(invoked.stdout)["result"] == 42

    # A server command says what is missing instead of a traceback.
    refused = run([str(bin_dir / "runner"), "worker"], elsewhere)
    assert refused.returncode == 1 and "Traceback" not in refused.stderr, refused.stderr
    assert "pip install 'async-task-runner[server]'" in refused.stderr


def test_the_server_install_migrates_and_finds_its_functions_from_anywhere(wheel: Path, tmp_path: Path) -> None:
    bin_dir = make_venv(tmp_path / "server", see_test_packages=True)
    checked(run([str(bin_dir / "pip"), "install", "--quiet", "--no-deps", str(wheel)], tmp_path))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "DATABASE_URL": f"sqlite:///{tmp_path / 'runner.db'}",
           "RUNNER_DATA_DIR": str(tmp_path / "data")}
    migrated = checked(run([str(bin_dir / "runner"), "migrate"], elsewhere, env=env))
    assert f"up to date (revision {head_revision()})" in migrated.stdout
    probe = (
        "import json, api, api.gunicorn_config, functions._markov as markov, runner; "
        "from runner.authoring.registry import Registry; "
        "print(json.dumps({'files': [runner.__file__, api.__file__, markov.__file__], "
        "'corpus': sorted(p.name for p in markov.CORPUS_DIR.iterdir()), "
        "'functions': sorted(spec.name for spec in Registry.discover('functions'))}))"
    )
    found = json.loads(checked(run([str(bin_dir / "python"), "-c", probe], elsewhere, env=env)).stdout)
    venv = str(tmp_path / "server")
    assert all(path.startswith(venv) for path in found["files"]), found["files"]  # not the checkout's
    assert found["corpus"] == ["public_domain.txt"]
    assert "simple_calculation" in found["functions"] and "generate_report" in found["functions"]
