"""Schedules: create, list, show, pause, resume and delete them (runner.services.schedules)."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from flask import Blueprint, Response, request

from api.payload import read_json_object
from api.state import runner_state
from runner.services import schedules
from runner.services.callbacks import HEADER as CALLBACK_HEADER

blueprint = Blueprint("schedules", __name__)


@blueprint.post("/schedules")
def create_schedule() -> tuple[dict[str, Any], int, dict[str, str]]:
    state = runner_state()
    view = schedules.create_schedule(read_json_object(request), state.registry, state.backends,
                                     callback_url=request.headers.get(CALLBACK_HEADER))
    return asdict(view), 201, {"Location": f"{request.script_root}/schedules/{view.id}"}


@blueprint.get("/schedules")
def list_schedules() -> dict[str, Any]:
    return {"schedules": [asdict(view) for view in schedules.list_schedules(runner_state().backends)]}


@blueprint.get("/schedules/<schedule_id>")
def get_schedule(schedule_id: str) -> dict[str, Any]:
    return asdict(schedules.get_schedule(schedule_id, runner_state().backends))


@blueprint.delete("/schedules/<schedule_id>")
def delete_schedule(schedule_id: str) -> Response:
    schedules.delete_schedule(schedule_id, runner_state().backends)
    return Response(status=204)


@blueprint.post("/schedules/<schedule_id>/pause")
def pause_schedule(schedule_id: str) -> dict[str, Any]:
    return asdict(schedules.set_paused(schedule_id, True, runner_state().backends))


@blueprint.post("/schedules/<schedule_id>/resume")
def resume_schedule(schedule_id: str) -> dict[str, Any]:
    return asdict(schedules.set_paused(schedule_id, False, runner_state().backends))
