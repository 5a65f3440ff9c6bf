"""How the projector consumes the journal: one reader under a lease vs a Redis consumer group.

The journal needs one applier at a time (entries of one job apply in order) and must survive the
applier's death. Two ways to get that from a stream:
- ours: the lease holder reads a batch from the head (XRANGE) and deletes it once committed (XDEL);
  a successor re-reads from the head, and the rows' journal positions make a second apply a no-op;
- a consumer group: XREADGROUP, then XACK, then XDEL (acknowledging does not delete, and the stream
  is the backlog readers of history apply from); a dead consumer's pending entries are claimed back.

Both take two round trips per batch. This prints what each costs Redis per entry, the figure that
grows with the load, on a throwaway redis-server. Usage: python -m bench.journal_consumers [--entries N]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import redis

from runner.dev.embedded_redis import EmbeddedRedis
from runner.journal.entries import ENTRY_FIELD, JOURNAL_KEY, encode

BATCH = 500  # the projector's MAX_BATCH
GROUP = "projector"


def fill(connection: redis.Redis, entries: int) -> None:
    """A journal of `entries` typical end entries (a finished job with a small result)."""
    connection.delete(JOURNAL_KEY)
    now = datetime.now(UTC)
    values = {"status": "finished", "progress": 100, "result": {"value": 14}, "started_at": now,
              "ended_at": now, "attempts": 1}
    entry = encode("0f8fad5b-d9cb-469f-a165-70867728950e", values, fence=1)
    pipeline = connection.pipeline(transaction=False)
    for count in range(1, entries + 1):
        pipeline.xadd(JOURNAL_KEY, {ENTRY_FIELD: entry})
        if count % 1000 == 0:
            pipeline.execute()
    pipeline.execute()


def under_lease(connection: redis.Redis) -> None:
    while batch := connection.xrange(JOURNAL_KEY, "-", "+", count=BATCH):
        connection.xdel(JOURNAL_KEY, *[stream_id for stream_id, _fields in batch])


def consumer_group(connection: redis.Redis) -> None:
    connection.xgroup_create(JOURNAL_KEY, GROUP, id="0")
    while (reply := connection.xreadgroup(GROUP, "one", {JOURNAL_KEY: ">"}, count=BATCH)) and reply[0][1]:
        ids = [stream_id for stream_id, _fields in reply[0][1]]
        pipeline = connection.pipeline(transaction=False)
        pipeline.xack(JOURNAL_KEY, GROUP, *ids)
        pipeline.xdel(JOURNAL_KEY, *ids)
        pipeline.execute()


def redis_microseconds(connection: redis.Redis) -> int:
    """Time Redis spent in stream commands since the last reset."""
    stats = connection.info("commandstats")
    return sum(int(stat["usec"]) for name, stat in stats.items() if name.startswith("cmdstat_x"))


def measure(connection: redis.Redis, consume: Callable[[redis.Redis], None], entries: int) -> tuple[float, float]:
    fill(connection, entries)
    connection.config_resetstat()
    started = time.perf_counter()
    consume(connection)
    wall = time.perf_counter() - started
    return redis_microseconds(connection) / entries, wall * 1e6 / entries


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--entries", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    ways: dict[str, Callable[[redis.Redis], None]] = {"under a lease (XRANGE, XDEL)": under_lease,
                                                      "consumer group (XREADGROUP, XACK, XDEL)": consumer_group}
    figures: dict[str, list[tuple[float, float]]] = {name: [] for name in ways}
    with tempfile.TemporaryDirectory(prefix="runner-bench-journal-") as workdir, \
            EmbeddedRedis(Path(workdir) / "redis", appendonly=False) as server:
        connection = redis.Redis.from_url(server.url)
        for _ in range(args.rounds):  # alternate, so a noisy moment spoils both alike
            for name, consume in ways.items():
                figures[name].append(measure(connection, consume, args.entries))
    print(f"{args.entries} entries, batches of {BATCH}, median of {args.rounds} rounds")
    print(f"{'':42s} {'Redis CPU µs/entry':>20s} {'wall µs/entry':>15s}")
    for name, rounds in figures.items():
        print(f"{name:42s} {statistics.median(cpu for cpu, _ in rounds):20.2f} "
              f"{statistics.median(wall for _, wall in rounds):15.2f}")


if __name__ == "__main__":
    main()
