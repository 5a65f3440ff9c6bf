"""The layout's import rules, checked in fresh interpreters: what each kind of user loads."""

from __future__ import annotations

import ast
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
    assert {name for name in ours if not name.startswith("runner.client")} == {"runner", "runner.errors",
                                                                               "runner.status"}
    assert top_level(modules).isdisjoint({*ENGINE_LIBRARIES, "pydantic", "flask"})


def test_the_api_loads_no_worker_code() -> None:
    modules = loaded_after("import api; api.create_app")
    assert [name for name in modules if name.startswith(("runner.worker", "runner.dev", "runner.cli"))] == []


def runner_imports() -> dict[str, set[str]]:
    """Each runner module and the runner modules it imports when it runs (typing-only imports left out)."""
    graph: dict[str, set[str]] = {}
    for path in (ROOT / "runner").rglob("*.py"):
        module = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        tree = ast.parse(path.read_text())
        typing_only = {id(node) for block in ast.walk(tree) if isinstance(block, ast.If)
                       and "TYPE_CHECKING" in ast.unparse(block.test) for node in ast.walk(block)}
        found: set[str] = set()
        for node in ast.walk(tree):
            if id(node) in typing_only:
                continue
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("runner"):
                found.add(node.module)
            elif isinstance(node, ast.Import):
                found |= {alias.name for alias in node.names if alias.name.startswith("runner")}
        graph[module] = found - {module}
    return graph


def cycle_in(graph: dict[str, set[str]]) -> list[str]:
    """One cycle of `graph`, or []."""
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(node: str) -> list[str]:
        state[node] = 1
        path.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                return path[path.index(target):] + [target]
            if target not in state and (found := visit(target)):
                return found
        state[node] = 2
        path.pop()
        return []

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return []


def test_no_module_of_runner_imports_itself_through_others() -> None:
    assert cycle_in(runner_imports()) == []


def test_the_subpackages_import_each_other_one_way() -> None:
    packages: dict[str, set[str]] = {}
    for module, targets in runner_imports().items():
        source = module.split(".")[1] if module.count(".") >= 1 else module
        packages.setdefault(source, set()).update(
            target.split(".")[1] for target in targets if target.count(".") >= 1 and target.split(".")[1] != source)
    assert cycle_in(packages) == []


def test_no_module_of_runner_or_api_is_long() -> None:
    lengths = {str(path.relative_to(ROOT)): len(path.read_text().splitlines())
               for folder in ("runner", "api") for path in (ROOT / folder).rglob("*.py")}
    assert {name: length for name, length in lengths.items() if length > 320} == {}
