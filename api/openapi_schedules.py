"""What the OpenAPI document says of the schedules' routes (api.schedules)."""

from __future__ import annotations

from typing import Any

from api.openapi_schemas import documented_error, documented_errors, header, json_response, ref

SCHEDULE_DESCRIPTION = (
    "Runs `function` with `input` on `cron` (five fields, read in `timezone`, UTC by default) or "
    "`every` S seconds (S >= 1; ticks on whole multiples of S since the Unix epoch). The input is checked "
    "now as an invocation's is (422 with the same details). Each tick is one ordinary job, however many "
    "workers run, whose view says `schedule`; `GET /jobs?schedule=<id>` lists them. A tick missed while no "
    "worker ran runs once, late (`catch_up: once`, the default), or is skipped (`catch_up: skip`). An "
    "`X-Callback-Url` header is checked as an invocation's and each run calls it back."
)


def schedule_operations(callback_header: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    """The operations of /schedules, keyed as api.openapi_operations keys them; `callback_header` is the
    invocations' X-Callback-Url parameter, which a schedule takes for each of its runs."""
    not_found = documented_error(404, "No schedule has that id.", ("schedule_not_found",))
    return {
        ("POST", "/schedules"): {
            "summary": "Create a schedule", "tags": ["schedules"], "description": SCHEDULE_DESCRIPTION,
            "parameters": callback_header,
            "requestBody": {"required": True, "content": {"application/json": {"schema": ref("NewSchedule")}}},
            "responses": {
                "201": json_response("The schedule, with its `next_run_at`.", ref("Schedule"),
                                     {"Location": header("The schedule's URL.", {"type": "string"})}),
                **documented_errors(400),
                "404": documented_error(404, "No function has that name.", ("function_not_found",)),
                **documented_errors(415),
                "422": documented_error(422, "A field of the schedule (`cron`, `timezone`, `every`, `catch_up`, "
                                             "...) or its input fails; `details` names each field."),
                **documented_errors(503),
            },
        },
        ("GET", "/schedules"): {
            "summary": "List the schedules", "tags": ["schedules"],
            "responses": {"200": json_response("Every schedule, oldest first.", ref("ScheduleList")),
                          **documented_errors(503)},
        },
        ("GET", "/schedules/{schedule_id}"): {
            "summary": "A schedule and its next run", "tags": ["schedules"],
            "responses": {"200": json_response("The schedule.", ref("Schedule")), "404": not_found,
                          **documented_errors(503)},
        },
        ("DELETE", "/schedules/{schedule_id}"): {
            "summary": "Delete a schedule (its jobs stay in history)", "tags": ["schedules"],
            "description": "No tick runs after the answer. A schedule declared in code comes back when a worker "
                           "starts; pause it instead.",
            "responses": {"204": {"description": "Deleted."}, "404": not_found, **documented_errors(503)},
        },
        ("POST", "/schedules/{schedule_id}/pause"): {
            "summary": "Pause a schedule: no tick runs until it is resumed", "tags": ["schedules"],
            "responses": {"200": json_response("The schedule (`next_run_at` null).", ref("Schedule")),
                          "404": not_found, **documented_errors(503)},
        },
        ("POST", "/schedules/{schedule_id}/resume"): {
            "summary": "Resume a schedule from its next tick after now", "tags": ["schedules"],
            "responses": {"200": json_response("The schedule.", ref("Schedule")), "404": not_found,
                          **documented_errors(503)},
        },
    }
