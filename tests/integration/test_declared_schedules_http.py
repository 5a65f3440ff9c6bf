"""A schedule declared in code (tests/integration/probe_functions/ticks.py) is registered by the workers,
on SQLite and on PostgreSQL (its own module: the `stack` fixture runs both, and no other stack may run
at the same time on the shared Redis)."""

from __future__ import annotations

import sqlalchemy as sa

from tests.integration.conftest import Stack, wait_until


def test_the_declared_schedule_is_registered_by_the_workers_and_kept_in_sql(stack: Stack) -> None:
    def registered() -> bool:
        return stack.get("/schedules/fn-nightly_probe").status_code == 200

    wait_until(registered, 10, "the workers registered nightly_probe's schedule")
    schedule = stack.get("/schedules/fn-nightly_probe").json()
    assert (schedule["function"], schedule["cron"], schedule["timezone"], schedule["input"], schedule["declared"]) == (
        "nightly_probe", "0 3 * * *", "Europe/Paris", {"note": "nightly"}, True)
    assert schedule["next_run_at"] is not None
    with stack.store.session() as session:  # SQLite and PostgreSQL alike
        rows = session.execute(sa.text("SELECT id, function, declared FROM schedules")).all()
    assert ("fn-nightly_probe", "nightly_probe", True) in [tuple(row) for row in rows]
