"""Operations: the workers, the queue depths, and requeueing failed jobs."""

from __future__ import annotations

from typing import Annotated, Any

import pydantic
from flask import Blueprint, request

from api.payload import read_json_object
from api.state import runner_state
from runner.authoring.spec import field_errors
from runner.errors import InvalidInput
from runner.services.fleet import list_workers, queue_depths, requeue_failed

blueprint = Blueprint("ops", __name__)

Name = Annotated[str, pydantic.Field(min_length=1, max_length=128)]


class RequeueFilter(pydantic.BaseModel):
    """Which failed jobs to requeue: all of them, or those of one queue and/or one function."""

    model_config = pydantic.ConfigDict(extra="forbid")

    queue: Name | None = None
    function: Name | None = None


def read_requeue_filter() -> RequeueFilter:
    """The body of a requeue request (an empty body requeues every failed job)."""
    try:
        return RequeueFilter.model_validate(read_json_object(request))
    except pydantic.ValidationError as exc:
        raise InvalidInput("The requeue filter is invalid.", details=field_errors(exc)) from None


@blueprint.get("/workers")
def get_workers() -> dict[str, Any]:
    return {"workers": [worker.to_dict() for worker in list_workers(runner_state().backends)]}


@blueprint.get("/queues")
def get_queues() -> dict[str, Any]:
    state = runner_state()
    return {"queues": [depths.to_dict() for depths in queue_depths(state.backends, state.registry)]}


@blueprint.post("/queues/failed/requeue")
def requeue_failed_jobs() -> dict[str, Any]:
    state = runner_state()
    selection = read_requeue_filter()
    outcome = requeue_failed(state.backends, state.registry, queue=selection.queue, function=selection.function)
    return outcome.to_dict()
