"""Flows over real HTTP with real workers: `?after=` (success, failure, retry, fan-in), per-key
`concurrency` under a flood, and `?expires=` while no worker runs."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import Stack, wait_until
from tests.receiver import CallbackReceiver

RECORDS = [{"region": "eu", "amount": 3}, {"region": "us", "amount": 5}, {"region": "eu", "amount": 10}]
# How soon a deferred job must be settled once its last parent ended: a flows pass every 0.5 s, a
# loaded machine (the measured figure is printed).
SETTLE_SECONDS = 5.0
# How soon another tenant's job must start while one tenant floods the function (0.01 to 0.2 s measured;
# generous for a loaded machine: with one slot for all tenants it would wait for the flood's gate).
OTHER_TENANT_STARTS_WITHIN = 5.0
FLOOD = 20


@pytest.fixture(scope="module")
def flows_stack(stack_factory: Callable[..., Stack]) -> Stack:
    return stack_factory(extra_env={"RUNNER_CALLBACK_ALLOW_PRIVATE": "1"})


@pytest.fixture
def receiver() -> Iterator[CallbackReceiver]:
    with CallbackReceiver() as running:
        yield running


def accepted(response: Any) -> dict[str, Any]:
    assert response.status_code == 202, response.text
    view: dict[str, Any] = response.json()
    return view


def test_a_chain_and_a_fan_in_run_in_order_with_their_parents_results(flows_stack: Stack, tmp_path: Path) -> None:
    gate = tmp_path / "gate-a"
    held = accepted(flows_stack.invoke("gated_progress", {"gate": str(gate)}))["id"]
    profiles = [accepted(flows_stack.invoke("data_processing", {"records": RECORDS[:n]}))["id"] for n in (1, 2)]
    # A chain: this profile waits for the gated job.
    chained = accepted(flows_stack.invoke("data_processing", {"records": RECORDS}, after=held))["id"]
    flows_stack.wait_until_terminal(profiles[0])
    after = [*profiles, chained]
    combined = accepted(flows_stack.invoke("combine_profiles", {"columns": ["amount", "nope"]},
                                           after=",".join(after)))
    assert (combined["status"], combined["after"]) == ("deferred", after)
    view = flows_stack.wait_for(combined["id"], lambda v: v["waiting_for"] == [chained])
    assert view["status"] == "deferred"
    assert flows_stack.job(chained)["waiting_for"] == [held]
    time.sleep(1.0)  # several flows passes: both still wait for the gated job
    assert [flows_stack.job(job_id)["status"] for job_id in (chained, combined["id"])] == ["deferred", "deferred"]

    gate.touch()
    opened = time.monotonic()
    flows_stack.wait_until_terminal(held)
    done = flows_stack.wait_until_terminal(combined["id"], timeout=15)
    print(f"\nchain + fan-in finished {time.monotonic() - opened:.2f} s after the gate opened")
    assert done["status"] == "finished", done
    result = done["result"]
    assert [part["job_id"] for part in result["parts"]] == after
    assert result["rows"] == 6 and result["missing_columns"] == ["nope"]
    assert result["columns"]["amount"] == {"count": 6, "missing": 0, "parts": 3, "min": 3, "max": 10,
                                           "mean": round((3 + 3 + 5 + 3 + 5 + 10) / 6, 6)}
    assert flows_stack.job(chained)["started_at"] >= flows_stack.job(held)["ended_at"]
    assert done["started_at"] >= flows_stack.job(chained)["ended_at"]
    row = flows_stack.wait_for_row(combined["id"], lambda r: r.status == "finished")
    assert row.after_ids == after


def test_a_job_after_a_failed_one_is_canceled_and_its_callback_fires(
    flows_stack: Stack, tmp_path: Path, receiver: CallbackReceiver
) -> None:
    gate = tmp_path / "gate-b"
    held = accepted(flows_stack.invoke("gated_progress", {"gate": str(gate)}))["id"]
    failing = accepted(flows_stack.invoke("permanent_failure", {"reason": "no"}))["id"]
    child = accepted(flows_stack.post(f"/functions/simple_calculation/invocations?after={held},{failing}",
                                      json={"expression": "1+1"},
                                      headers={"X-Callback-Url": f"{receiver.url}/hooks"}))
    view = flows_stack.wait_until_terminal(child["id"], timeout=SETTLE_SECONDS + 5)
    assert (view["status"], view["attempts"], view["started_at"]) == ("canceled", 0, None)
    assert view["error"]["type"] == "DependencyFailed" and view["error"]["dependency"] == failing, view
    [delivery] = receiver.wait_for(1, timeout=15)
    assert delivery.headers["X-Runner-Event"] == "canceled"
    assert flows_stack.job(held)["status"] == "started"  # the other parent goes on
    gate.touch()
    flows_stack.wait_until_terminal(held)
    row = flows_stack.wait_for_row(child["id"], lambda r: r.status == "canceled")
    assert row.error["type"] == "DependencyFailed"


def test_a_job_after_a_retried_one_runs_once_it_finally_succeeds(flows_stack: Stack) -> None:
    flaky = accepted(flows_stack.invoke("unreliable_task", {"fail_times": 1}))["id"]
    child = accepted(flows_stack.invoke("simple_calculation", {"expression": "2*21"}, after=flaky))["id"]
    done = flows_stack.wait_until_terminal(child, timeout=20)
    parent = flows_stack.job(flaky)
    assert (parent["status"], parent["attempts"]) == ("finished", 2)
    assert (done["status"], done["result"]["result"]) == ("finished", 42), done


def at_the_gate(stack: Stack, job_ids: list[str]) -> list[str]:
    """The jobs among `job_ids` whose attempt runs (holds its slot) now."""
    return [job_id for job_id in job_ids if stack.job(job_id)["progress"]["message"] == "at the gate"]


def test_one_tenants_flood_does_not_delay_another_tenant(flows_stack: Stack, tmp_path: Path) -> None:
    gates = {name: tmp_path / f"gate-{name}" for name in ("flood", "other")}
    flood = [accepted(flows_stack.invoke("tenant_gate", {"tenant": "a", "gate": str(gates["flood"])}))["id"]
             for _ in range(FLOOD)]
    # Whichever of them took tenant a's one slot first (two workers race for it).
    wait_until(lambda: len(at_the_gate(flows_stack, flood)) == 1, 15, "one job of tenant a at the gate")
    sent = time.monotonic()
    other = accepted(flows_stack.invoke("tenant_gate", {"tenant": "b", "gate": str(gates["other"])}))["id"]
    flows_stack.wait_for(other, lambda v: v["progress"]["message"] == "at the gate",
                         timeout=OTHER_TENANT_STARTS_WITHIN)
    started_after = time.monotonic() - sent
    print(f"\ntenant b's job held its slot {started_after:.2f} s after it was sent, behind {FLOOD} of tenant a")
    # Tenant a still runs one job at a time, however many workers are free.
    assert len(at_the_gate(flows_stack, flood)) == 1
    for gate in gates.values():
        gate.touch()
    views = [flows_stack.wait_until_terminal(job_id, timeout=60) for job_id in [*flood, other]]
    assert {view["status"] for view in views} == {"finished"}
    spans = sorted((view["result"]["started"], view["result"]["ended"]) for view in views[:-1])
    for (_, ended), (next_started, _) in zip(spans, spans[1:], strict=False):
        assert ended <= next_started, "two jobs of tenant a overlapped"


def test_a_job_that_expired_while_no_worker_ran_never_runs(
    stack_factory: Callable[..., Stack], receiver: CallbackReceiver
) -> None:
    stack = stack_factory(extra_env={"RUNNER_CALLBACK_ALLOW_PRIVATE": "1"}, workers=0)
    expiring = accepted(stack.post("/functions/simple_calculation/invocations?expires=1",
                                   json={"expression": "6*7"}, headers={"X-Callback-Url": f"{receiver.url}/x"}))
    lasting = accepted(stack.invoke("simple_calculation", {"expression": "1+1"}, expires=600))
    assert expiring["status"] == "queued"
    time.sleep(1.2)  # the deadline passes while nothing could have started the job
    stack.processes.start_worker(stack.env, "worker.late")
    wait_until(lambda: stack.worker_count() == 1, 20, "the late worker to register")
    view = stack.wait_until_terminal(expiring["id"], timeout=15)
    assert (view["status"], view["attempts"], view["result"], view["started_at"]) == ("canceled", 0, None, None)
    assert view["error"]["type"] == "Expired", view
    assert stack.wait_until_terminal(lasting["id"])["status"] == "finished"
    [delivery] = receiver.wait_for(1, timeout=15)
    assert (delivery.headers["X-Runner-Job-Id"], delivery.headers["X-Runner-Event"]) == (expiring["id"], "canceled")
    row = stack.wait_for_row(expiring["id"], lambda r: r.status == "canceled")
    assert (row.error["type"], row.attempts, row.result) == ("Expired", 0, None)
