"""deploy/kubernetes/: every manifest parses, and agrees with the Procfile, the README and the code.

Not run against a cluster here: these checks are what can be known without one.
"""

from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest
import yaml

from runner.authoring.registry import Registry
from runner.services.fleet import default_queues
from runner.services.scaling import QueueLoad
from tests.unit.test_compose import procfile

ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = ROOT / "deploy" / "kubernetes"
KINDS = {"Deployment": 2, "Service": 1, "Secret": 1, "ScaledObject": 1, "TriggerAuthentication": 1}
# Variables Kubernetes itself, not the runner, reads: none so far.
PLATFORM_VARIABLES: frozenset[str] = frozenset()


@pytest.fixture(scope="module")
def documents() -> list[dict[str, Any]]:
    found = []
    for path in sorted(MANIFESTS.glob("*.yaml")):
        found += [document for document in yaml.safe_load_all(path.read_text()) if document]
    return found


def of_kind(documents: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [document for document in documents if document["kind"] == kind]


def deployment(documents: list[dict[str, Any]], component: str) -> dict[str, Any]:
    return next(document for document in of_kind(documents, "Deployment")
                if document["metadata"]["labels"]["app.kubernetes.io/component"] == component)


def container(document: dict[str, Any]) -> dict[str, Any]:
    (found,) = document["spec"]["template"]["spec"]["containers"]
    return dict(found)


def readme_variables() -> set[str]:
    """Every variable named in the first column of the README's configuration table."""
    text = (ROOT / "README.md").read_text()
    table = text[text.index("## Configuration\n"):text.index("## Running in production\n")]
    return {name for line in table.splitlines() if line.startswith("| `")
            for name in re.findall(r"`([A-Z][A-Z0-9_]+)`", line.split("|")[1])}


def test_every_manifest_parses_into_the_expected_kinds(documents: list[dict[str, Any]]) -> None:
    counted = {kind: len(of_kind(documents, kind)) for kind in KINDS}
    assert counted == KINDS
    assert {document["kind"] for document in documents} == set(KINDS)
    assert all(document["metadata"]["name"] for document in documents)


def test_the_commands_are_the_procfiles(documents: list[dict[str, Any]]) -> None:
    lines = procfile()
    web = container(deployment(documents, "web"))["command"]
    assert web[:2] == ["sh", "-c"] and web[2] == lines["web"]
    assert " ".join(container(deployment(documents, "worker"))["command"]) == lines["worker"]


def test_deployments_select_their_pods_and_the_service_reaches_the_web_port(documents: list[dict[str, Any]]) -> None:
    for document in of_kind(documents, "Deployment"):
        assert document["spec"]["selector"]["matchLabels"].items() <= document["spec"]["template"]["metadata"][
            "labels"].items()
    (service,) = of_kind(documents, "Service")
    web = deployment(documents, "web")
    assert service["spec"]["selector"].items() <= web["spec"]["template"]["metadata"]["labels"].items()
    ports = {port["name"]: port["containerPort"] for port in container(web)["ports"]}
    assert service["spec"]["ports"][0]["targetPort"] in ports
    port_variable = next(item["value"] for item in container(web)["env"] if item["name"] == "PORT")
    assert int(port_variable) == ports["http"]


def test_the_web_probes_use_the_health_routes(documents: list[dict[str, Any]]) -> None:
    web = container(deployment(documents, "web"))
    assert web["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    readiness = " ".join(web["readinessProbe"]["exec"]["command"])
    port = next(item["value"] for item in web["env"] if item["name"] == "PORT")
    assert f"http://127.0.0.1:{port}/readyz" in readiness and "RUNNER_API_KEYS" in readiness
    assert "livenessProbe" not in container(deployment(documents, "worker"))  # no HTTP in a worker


def test_env_names_are_the_readmes_and_secrets_are_the_secrets(documents: list[dict[str, Any]]) -> None:
    documented = readme_variables()
    (secret,) = of_kind(documents, "Secret")
    keys = set(secret["stringData"])
    assert keys - {"scaling-token"} <= documented
    for document in of_kind(documents, "Deployment"):
        spec = container(document)
        assert {item["name"] for item in spec.get("env", [])} <= documented | PLATFORM_VARIABLES
        assert [source["secretRef"]["name"] for source in spec["envFrom"]] == [secret["metadata"]["name"]]
    worker = deployment(documents, "worker")
    grace = next(item["value"] for item in container(worker)["env"] if item["name"] == "RUNNER_WORKER_GRACE_SECONDS")
    assert worker["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > float(grace)


def test_keda_scales_the_workers_from_zero_on_the_scaling_endpoint(documents: list[dict[str, Any]]) -> None:
    (scaled,) = of_kind(documents, "ScaledObject")
    (auth,) = of_kind(documents, "TriggerAuthentication")
    (secret,) = of_kind(documents, "Secret")
    (service,) = of_kind(documents, "Service")
    assert scaled["spec"]["scaleTargetRef"]["name"] == deployment(documents, "worker")["metadata"]["name"]
    assert scaled["spec"]["minReplicaCount"] == 0
    figures = {field.name for field in fields(QueueLoad)}
    queues = []
    for trigger in scaled["spec"]["triggers"]:
        assert trigger["type"] == "metrics-api"
        assert trigger["metadata"]["url"] == f"http://{service['metadata']['name']}/scaling"
        assert trigger["authenticationRef"]["name"] == auth["metadata"]["name"]
        found = re.fullmatch(r'queues\.#\(queue=="([a-z_]+)"\)\.([a-z_]+)', trigger["metadata"]["valueLocation"])
        assert found is not None and found.group(2) == "desired_workers" in figures
        queues.append(found.group(1))
    # The worker pods serve every queue (the Procfile's `worker` line): one trigger per queue.
    assert queues == default_queues(Registry.discover("functions"))
    assert {ref["name"] for ref in auth["spec"]["secretTargetRef"]} == {secret["metadata"]["name"]}
    assert {ref["key"] for ref in auth["spec"]["secretTargetRef"]} <= set(secret["stringData"])


def test_the_readme_says_it_was_not_run_against_a_cluster() -> None:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("### Kubernetes\n"):]
    assert "not run against a cluster" in section[:section.find("\n## ")]
