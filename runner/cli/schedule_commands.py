"""`runner schedules`: list, create, show, pause, resume and delete schedules over HTTP."""

from __future__ import annotations

from typing import Any

import click

from runner.cli.client_commands import api_client, as_json_option, handles_client_errors, read_payload, url_option
from runner.cli.output import print_json, print_table, when


@click.group(invoke_without_command=True)
@as_json_option
@url_option
@click.pass_context
@handles_client_errors
def schedules(ctx: click.Context, as_json: bool) -> None:
    """List the schedules (or run one of the commands below)."""
    if ctx.invoked_subcommand is not None:
        return
    listed = api_client().schedules()
    if as_json:
        print_json(listed)
        return
    if not listed:
        click.echo("No schedules yet: `runner schedules create FUNCTION --every 60` makes one.")
        return
    rows = [[s["id"], s["function"], _timing(s), s["catch_up"], "paused" if s["paused"] else "active",
             when(s.get("next_run_at"))] for s in listed]
    print_table("Schedules", ["id", "function", "when", "catch up", "state", "next run (UTC)"], rows)


def _timing(schedule: dict[str, Any]) -> str:
    if schedule.get("every") is not None:
        return f"every {schedule['every']} s"
    return f"{schedule['cron']} ({schedule['timezone']})"


@schedules.command()
@click.argument("function_name", metavar="FUNCTION")
@click.option("--cron", help="A cron expression, e.g. '*/5 * * * *'.")
@click.option("--timezone", help="The IANA time zone of --cron (UTC by default), e.g. Europe/Paris.")
@click.option("--every", type=int, help="Seconds between runs, instead of --cron.")
@click.option("--catch-up", type=click.Choice(["once", "skip"]), default="once", show_default=True,
              help="A tick missed while no worker ran: run it once, late, or skip it.")
@click.option("--data", help="The input, as a JSON object.")
@click.option("--data-file", help="Read the input JSON from this file ('-' for stdin).")
@url_option
@handles_client_errors
def create(function_name: str, cron: str | None, timezone: str | None, every: int | None, catch_up: str,
           data: str | None, data_file: str | None) -> None:
    """Run FUNCTION with the input on a cron expression or every N seconds; prints the schedule."""
    definition = {"function": function_name, "input": read_payload(data, data_file), "cron": cron,
                  "timezone": timezone, "every": every, "catch_up": catch_up}
    print_json(api_client().create_schedule({key: value for key, value in definition.items() if value is not None}))


def _action(name: str, summary: str) -> click.Command:
    @click.argument("schedule_id")
    @url_option
    @handles_client_errors
    def command(schedule_id: str) -> None:
        view = api_client().schedule_action(schedule_id, name)
        if view is None:
            click.echo(f"Deleted schedule {schedule_id}.")
        else:
            print_json(view)

    command.__doc__ = summary
    return click.command(name)(command)


for _name, _summary in (("show", "Show schedule SCHEDULE_ID and its next run."),
                        ("pause", "Pause schedule SCHEDULE_ID: no run until it is resumed."),
                        ("resume", "Resume schedule SCHEDULE_ID from its next tick."),
                        ("delete", "Delete schedule SCHEDULE_ID (its jobs stay in the history).")):
    schedules.add_command(_action(_name, _summary))
