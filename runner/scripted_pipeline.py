"""Send a pipeline's queued commands as one Lua script call: one command to pack, one reply to parse.

A job's start or end is some forty Redis commands (RQ's bookkeeping, ours, metrics). As a
MULTI/EXEC pipeline, redis-py packs each and parses forty-two replies, which costs the worker
more CPU than the job. Run from a script, the same commands, in the same order, run atomically
in Redis (as a transaction would), and the client handles a single call. Only for pipelines
whose replies nobody reads.
"""

from __future__ import annotations

from weakref import WeakKeyDictionary

import redis
from redis.client import Pipeline
from redis.commands.core import Script

# Runs the commands encoded in ARGV from position `from` on (see `encode_commands`); for scripts.
RUN_COMMANDS_LUA = """
local function run_commands(from)
  local unpack = unpack or table.unpack
  local i = from
  while i <= #ARGV do
    local n = tonumber(ARGV[i])
    redis.call(unpack(ARGV, i + 1, i + n))
    i = i + n + 1
  end
end
"""
_RUN_COMMANDS = RUN_COMMANDS_LUA + "run_commands(1)\nreturn 1\n"


def encode_commands(pipeline: Pipeline | None) -> list[bytes | str | int | float]:
    """The commands queued in `pipeline` as script arguments: for each, its argument count, then it."""
    arguments: list[bytes | str | int | float] = []
    for args, _options in pipeline.command_stack if pipeline is not None else ():
        arguments.append(len(args))
        arguments.extend(args)
    return arguments

_scripts: WeakKeyDictionary[redis.Redis, Script] = WeakKeyDictionary()


def execute_as_script(connection: redis.Redis, pipeline: Pipeline) -> None:
    """Run the commands queued in `pipeline` as one script on `connection`, then empty the pipeline."""
    try:
        if not pipeline.command_stack:
            return
        arguments = encode_commands(pipeline)
        script = _scripts.get(connection)
        if script is None:
            script = _scripts[connection] = connection.register_script(_RUN_COMMANDS)
        script(args=arguments)
    finally:
        pipeline.reset()
