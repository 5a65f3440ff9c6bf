"""Send a pipeline's queued commands as one Lua script call: one command to pack, one reply to parse.

A job's start or end is some forty Redis commands (RQ's bookkeeping, ours, metrics, the journal).
As a MULTI/EXEC pipeline, redis-py packs each and parses forty-two replies, which costs the worker
more CPU than the job. Run from a script, the same commands, in the same order, run atomically in
Redis (as a transaction would), and the client handles a single call. Only for pipelines whose
replies nobody reads.

Every key a command touches is passed in KEYS, as Redis's script contract asks; the arguments
say, for each command, how many of the next keys it takes (`KEY_COUNTS`). A command whose keys
are not known here is refused when it is queued for a script, not sent with a key hidden in ARGV.

Encoding, per command, in ARGV: the number of its other arguments, the number of its keys, its
name, then its other arguments; its keys follow each other in KEYS.

A pseudo-command of runner.rq_seam.macros (RQ's start, success, an execution's removal) is encoded as a
command and spelled out by the script; it exists in script calls only.

A `guard` makes the commands queued inside it conditional on hash fields (a job not canceled, an
attempt still the job's latest): when a condition fails, they are skipped, and the commands
after the block run as usual. The script reports each guard's outcome, in order.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from weakref import WeakKeyDictionary

import redis
from redis.client import Pipeline
from redis.commands.core import Script

from runner.rq_seam import macros

# A pseudo-command opening a guarded block (see `guard`).
GUARD = "RUNNER-GUARD"
EQUALS, DIFFERS = "=", "!"

# How many leading arguments of each command are keys. Commands that take every argument as a
# key are listed with -1.
KEY_COUNTS: dict[str, int] = {
    **dict.fromkeys((
        "HSET", "HMSET", "HSETNX", "HDEL", "HINCRBY", "HINCRBYFLOAT", "SADD", "SREM", "ZADD", "ZREM",
        "ZREMRANGEBYSCORE", "ZINCRBY", "LPUSH", "RPUSH", "LREM", "LTRIM", "EXPIRE", "PEXPIRE", "EXPIREAT",
        "PERSIST", "SET", "SETEX", "PSETEX", "INCR", "INCRBY", "INCRBYFLOAT", "XADD", "XTRIM", "XDEL",
    ), 1),
    **dict.fromkeys(("DEL", "UNLINK", "TOUCH"), -1),
    "PUBLISH": 0,
    **macros.KEY_COUNTS,
}

# Runs the commands encoded in ARGV from position `argv_from` on, their keys taken from KEYS from
# `key_from` on; returns each guard's outcome (1 when its conditions held), in order. For scripts.
RUN_COMMANDS_LUA = macros.MACROS_LUA + """
local function run_commands(argv_from, key_from)
  local unpack = unpack or table.unpack
  local i, k, guards = argv_from, key_from, {}
  while i <= #ARGV do
    local nargs, nkeys, name = tonumber(ARGV[i]), tonumber(ARGV[i + 1]), ARGV[i + 2]
    if name == '""" + GUARD + """' then
      local held = true
      for c = 0, nkeys - 1 do
        local op, field, want = ARGV[i + 4 + 3 * c], ARGV[i + 5 + 3 * c], ARGV[i + 6 + 3 * c]
        local have = redis.call('HGET', KEYS[k + c], field) or '0'
        if (op == '""" + EQUALS + """') ~= (have == want) then held = false end
      end
      guards[#guards + 1] = held and 1 or 0
      local skip = held and 0 or tonumber(ARGV[i + 3])
      i, k = i + 3 + nargs, k + nkeys
      for _ = 1, skip do
        i, k = i + 3 + tonumber(ARGV[i]), k + tonumber(ARGV[i + 1])
      end
    elseif macros[name] then
      macros[name](k, i + 3)
      i, k = i + 3 + nargs, k + nkeys
    else
      if nkeys == 1 then
        redis.call(name, KEYS[k], unpack(ARGV, i + 3, i + 2 + nargs))
      else
        local args = {}
        for j = 0, nkeys - 1 do args[#args + 1] = KEYS[k + j] end
        for j = 1, nargs do args[#args + 1] = ARGV[i + 2 + j] end
        redis.call(name, unpack(args))
      end
      i, k = i + 3 + nargs, k + nkeys
    end
  end
  return guards
end
"""
_RUN_COMMANDS = RUN_COMMANDS_LUA + "return run_commands(1, 1)\n"

Argument = bytes | str | int | float


@dataclass
class EncodedCommands:
    """Commands as script arguments: their keys (for KEYS) and the rest (for ARGV)."""

    keys: list[str | bytes] = field(default_factory=list)
    args: list[Argument] = field(default_factory=list)

    def extend(self, other: EncodedCommands) -> None:
        """Append `other`'s commands after these."""
        self.keys.extend(other.keys)
        self.args.extend(other.args)

    def __bool__(self) -> bool:
        return bool(self.args)


def script_pipeline(connection: redis.Redis) -> Pipeline:
    """A pipeline that collects commands for `execute_as_script`, already in transaction mode (RQ's
    calls that take a pipeline expect one)."""
    pipeline = connection.pipeline()
    pipeline.multi()
    return pipeline


Condition = tuple[str, str, str, str]  # key, field, EQUALS or DIFFERS, value


@contextmanager
def guard(pipeline: Pipeline, *conditions: Condition) -> Iterator[None]:
    """The commands queued inside this block run only if every condition holds (field values as
    text; a missing field reads "0"); run by `execute_as_script` or a claim."""
    opening = len(pipeline.command_stack)
    pipeline.command_stack.append(((GUARD, conditions, 0), {}))
    yield
    pipeline.command_stack[opening] = ((GUARD, conditions, len(pipeline.command_stack) - opening - 1), {})


def encode_commands(pipeline: Pipeline | None) -> EncodedCommands:
    """The commands queued in `pipeline`, as script arguments; ValueError for a command whose keys are unknown."""
    encoded = EncodedCommands()
    for command, _options in pipeline.command_stack if pipeline is not None else ():
        name = str(command[0]).upper()
        if name == GUARD:
            _name, conditions, skip = command
            encoded.keys.extend(key for key, _field, _op, _value in conditions)
            rest = [skip, *(part for _key, field, op, value in conditions for part in (op, field, value))]
            encoded.args.extend((len(rest), len(conditions), GUARD, *rest))
            continue
        if name not in KEY_COUNTS:
            raise ValueError(f"{name} is not known to runner.rq_seam.scripts: add its key count to KEY_COUNTS")
        count = KEY_COUNTS[name]
        count = len(command) - 1 if count < 0 else count
        encoded.keys.extend(command[1:1 + count])
        rest = command[1 + count:]
        encoded.args.extend((len(rest), count, name, *rest))
    return encoded


_registered: WeakKeyDictionary[redis.Redis, dict[str, Script]] = WeakKeyDictionary()


def registered_script(connection: redis.Redis, source: str, *, preload: bool = False) -> Script:
    """The Lua `source` registered on `connection`, once per connection; `preload` also loads it into
    Redis then, for a pipelined EVALSHA that cannot load it itself."""
    scripts = _registered.setdefault(connection, {})
    script = scripts.get(source)
    if script is None:
        script = scripts[source] = connection.register_script(source)
        if preload:
            connection.script_load(source)
    return script


def execute_as_script(connection: redis.Redis, pipeline: Pipeline) -> list[bool]:
    """Run the commands queued in `pipeline` as one script on `connection`, then empty the pipeline;
    whether each `guard` of it held, in order."""
    try:
        if not pipeline.command_stack:
            return []
        encoded = encode_commands(pipeline)
        return [bool(held) for held in registered_script(connection, _RUN_COMMANDS)(keys=encoded.keys,
                                                                                   args=encoded.args)]
    finally:
        pipeline.reset()


def run_encoded(connection: redis.Redis, batches: list[EncodedCommands]) -> None:
    """Run the commands of several `encode_commands` results, one after the other, as one script call."""
    merged = EncodedCommands()
    for batch in batches:
        merged.extend(batch)
    if merged:
        registered_script(connection, _RUN_COMMANDS)(keys=merged.keys, args=merged.args)

