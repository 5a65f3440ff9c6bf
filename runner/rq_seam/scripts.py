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

# A pseudo-command (see `skip_rest_if`): when hash field KEY FIELD holds VALUE, stop there.
SKIP_REST_IF = "RUNNER-SKIP-REST-IF"

# Runs the commands encoded in ARGV from position `from` on (see `encode_commands`); returns 0 when
# a SKIP_REST_IF stopped it, 1 when all ran. For scripts.
RUN_COMMANDS_LUA = """
local function run_commands(from)
  local unpack = unpack or table.unpack
  local i = from
  while i <= #ARGV do
    local n = tonumber(ARGV[i])
    if ARGV[i + 1] == '""" + SKIP_REST_IF + """' then
      if redis.call('HGET', ARGV[i + 2], ARGV[i + 3]) == ARGV[i + 4] then
        return 0
      end
    else
      redis.call(unpack(ARGV, i + 1, i + n))
    end
    i = i + n + 1
  end
  return 1
end
"""
_RUN_COMMANDS = RUN_COMMANDS_LUA + "return run_commands(1)\n"


def skip_rest_if(pipeline: Pipeline, key: str, field: str, value: str) -> None:
    """Queue a condition: when run by `execute_as_script`, the commands after it run only unless
    hash field `key` `field` holds `value` (those before it run either way)."""
    pipeline.command_stack.append(((SKIP_REST_IF, key, field, value), {}))


EncodedCommands = list[bytes | str | int | float]


def encode_commands(pipeline: Pipeline | None) -> EncodedCommands:
    """The commands queued in `pipeline` as script arguments: for each, its argument count, then it."""
    arguments: EncodedCommands = []
    for args, _options in pipeline.command_stack if pipeline is not None else ():
        arguments.append(len(args))
        arguments.extend(args)
    return arguments

_scripts: WeakKeyDictionary[redis.Redis, Script] = WeakKeyDictionary()


def execute_as_script(connection: redis.Redis, pipeline: Pipeline) -> bool:
    """Run the commands queued in `pipeline` as one script on `connection`, then empty the pipeline.

    False when a `skip_rest_if` condition held and the commands after it did not run.
    """
    try:
        if not pipeline.command_stack:
            return True
        return bool(_script(connection)(args=encode_commands(pipeline)))
    finally:
        pipeline.reset()


def run_encoded(connection: redis.Redis, batches: list[EncodedCommands]) -> None:
    """Run the commands of several `encode_commands` results, one after the other, as one script call
    (none may hold a `skip_rest_if`: it would skip the commands of the results after its own)."""
    arguments = [argument for batch in batches for argument in batch]
    if arguments:
        _script(connection)(args=arguments)


def _script(connection: redis.Redis) -> Script:
    script = _scripts.get(connection)
    if script is None:
        script = _scripts[connection] = connection.register_script(_RUN_COMMANDS)
    return script
