"""The waiting-jobs section of `make bench` (issue 21), alone as `make bench-waiting`.

`python -m bench.waiting [--jobs N] [--waiting-jobs N] [--rounds N] [--quick]`. 2 processes per
engine, 16 jobs in flight in all (bench/waiting_engines.py): ours `async def` and `threads=True`
against Dramatiq `-p 2 -t 8` and Celery `--pool threads`, on no-op jobs and on jobs that wait 100 ms,
and our plain sync worker on the waiting job (one at a time per process: the gain's baseline, given
1/8 of the jobs so its turn lasts as long). Two figures per engine and kind, as in the main table:
*end to end* (one producer enqueues while the workers run, after a warm-up batch) and *drain*
(queued first, clock from the first job taken to the last result), each the median of the rounds,
the engines taking turns. Our figures include the history rows: a batch is done when every row
says finished. The targets are stated on drain, the workers' own rate. Starts its own Redis
when run alone and writes bench/results/<date>-waiting.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.engines import ROOT, Engine
from bench.run import RESULTS_DIR, drain_rate, median_round, ratio, with_engine
from bench.waiting_engines import THREADS, WAITING_JOBS, CeleryThreadsEngine, DramatiqEngine, StyleRunnerEngine
from runner.dev.embedded_redis import EmbeddedRedis

MEASURES = ("end_to_end", "drain")
KINDS = ("noop", "wait")
# (ratio name, ours, theirs, kind); each is computed for both measures.
COMPARISONS = [
    ("waiting_async_vs_dramatiq", "runner-async", "dramatiq-threads", "wait"),
    ("waiting_threads_vs_dramatiq", "runner-threads", "dramatiq-threads", "wait"),
    ("noop_async_vs_dramatiq", "runner-async", "dramatiq-threads", "noop"),
    ("noop_threads_vs_dramatiq", "runner-threads", "dramatiq-threads", "noop"),
    ("waiting_async_vs_celery_threads", "runner-async", "celery-threads", "wait"),
    ("waiting_threads_vs_celery_threads", "runner-threads", "celery-threads", "wait"),
    ("noop_async_vs_celery_threads", "runner-async", "celery-threads", "noop"),
    ("noop_threads_vs_celery_threads", "runner-threads", "celery-threads", "noop"),
    ("waiting_async_vs_one_at_a_time", "runner-async", "runner-sync", "wait"),
    ("waiting_threads_vs_one_at_a_time", "runner-threads", "runner-sync", "wait"),
]
# Issue 21: waiting jobs at least Dramatiq's rate, no-op async jobs at least 0.8x it (drain).
TARGETS = {
    "waiting_async_vs_dramatiq": 1.0,
    "waiting_threads_vs_dramatiq": 1.0,
    "noop_async_vs_dramatiq": 0.8,
}


def engines(redis_url: str, workdir: Path) -> list[Engine]:
    """Every engine of the section, in the order they take turns."""
    return [DramatiqEngine(redis_url, workdir), CeleryThreadsEngine(redis_url, workdir),
            StyleRunnerEngine(redis_url, workdir, "async"), StyleRunnerEngine(redis_url, workdir, "threads"),
            StyleRunnerEngine(redis_url, workdir, "sync")]


def _jobs(engine: Engine, jobs: int) -> int:
    # One job at a time runs 1/THREADS of the jobs of THREADS at once: as many seconds for fewer jobs.
    return max(10, jobs // THREADS) if isinstance(engine, StyleRunnerEngine) and engine.style == "sync" else jobs


def _end_to_end(engine: Engine, jobs: int, kind: str) -> float:
    def batch(e: Engine) -> float:
        e.run_batch(min(50, jobs), kind)  # warm-up: imports, connections, threads, SQLite pages
        return jobs / e.run_batch(jobs, kind)

    rate: float = with_engine(engine, 2, batch)
    return rate


def measure(every: list[Engine], sizes: dict[str, int], rounds: int) -> dict[str, Any]:
    """jobs/s per measure, kind and engine (medians), every round's, and the engines that failed.

    An engine whose jobs fail (ours before its worker runs coroutines, say) is named in `errors`
    and left out of the later rounds; the others go on.
    """
    runs: dict[str, dict[str, dict[str, list[float]]]] = {m: {k: {} for k in KINDS} for m in MEASURES}
    errors: dict[str, str] = {}
    for round_number in range(1, rounds + 1):
        for kind in KINDS:
            for engine in every:
                label = f"{engine.name}/{kind}"
                if kind not in engine.kinds or label in errors:
                    continue
                jobs = _jobs(engine, sizes[kind])
                try:
                    rates = {"end_to_end": _end_to_end(engine, jobs, kind), "drain": drain_rate(engine, 2, jobs, kind)}
                except RuntimeError as exc:
                    errors[label] = str(exc)
                    print(f"  waiting {kind:>4} {engine.name:<16} round {round_number}: FAILED {exc}", flush=True)
                    continue
                for name, rate in rates.items():
                    runs[name][kind].setdefault(engine.name, []).append(rate)
                print(f"  waiting {kind:>4} {engine.name:<16} round {round_number}: {jobs} jobs, end to end "
                      f"{rates['end_to_end']:>7.1f} jobs/s, drain {rates['drain']:>7.1f} jobs/s", flush=True)
    figures: dict[str, Any] = {"threads_per_process": THREADS, "jobs": sizes, "errors": errors}
    for name in MEASURES:
        figures[name] = {kind: {engine: _median(found) for engine, found in by_engine.items()}
                         for kind, by_engine in runs[name].items()}
        figures[f"{name}_rounds"] = {kind: {engine: [round(rate, 1) for rate in found]
                                            for engine, found in by_engine.items()}
                                     for kind, by_engine in runs[name].items()}
    figures["ratios"] = ratios(figures)
    figures["targets"] = targets(figures["ratios"]["drain"], errors)
    return figures


def _median(rates: list[float]) -> float:
    middle: float = median_round(rates, float)
    return round(middle, 1)


def ratios(figures: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Each comparison of COMPARISONS, per measure, where both engines have a figure."""
    out: dict[str, dict[str, float]] = {}
    for name in MEASURES:
        out[name] = {}
        for label, ours, theirs, kind in COMPARISONS:
            rates = figures[name][kind]
            if ours in rates and theirs in rates:
                out[name][label] = ratio(rates[ours], rates[theirs])
    return out


def targets(drain: dict[str, float], errors: dict[str, str]) -> dict[str, str]:
    """Each target, met or not (or not measured), in words."""
    verdicts = {}
    for name, bound in TARGETS.items():
        if name in drain:
            met = "met" if drain[name] >= bound else "NOT met"
            verdicts[name] = f"{name} {drain[name]} (drain, target >= {bound}): {met}"
        else:
            failed = f" (failed: {', '.join(errors)})" if errors else ""
            verdicts[name] = f"{name} (target >= {bound}): not measured{failed}"
    return verdicts


def waiting_section(redis_url: str, workdir: Path, *, noop_jobs: int, waiting_jobs: int, rounds: int) -> dict[str, Any]:
    """The whole section on the Redis at `redis_url`, printed as it comes."""
    print(f"waiting jobs (2 processes, {2 * THREADS} jobs in flight per engine; {noop_jobs} no-op, "
          f"{waiting_jobs} waiting 100 ms)", flush=True)
    return measure(engines(redis_url, workdir), {"noop": noop_jobs, "wait": waiting_jobs}, rounds)


def print_waiting(figures: dict[str, Any]) -> None:
    """The section's table, ratios and targets."""
    print(f"\nwaiting jobs, 2 processes, {2 * figures['threads_per_process']} in flight (jobs/s, end to end / drain):")
    print("| engine | no-op | 100 ms waiting |")
    print("|---|---|---|")
    names = dict.fromkeys(name for m in MEASURES for kind in KINDS for name in figures[m][kind])
    for name in names:
        cells = []
        for kind in KINDS:
            pair = [figures[m][kind].get(name) for m in MEASURES]
            cells.append("" if pair == [None, None] else f"{pair[0]} / {pair[1]}")
        print(f"| {name} | {cells[0]} | {cells[1]} |")
    for label, error in figures["errors"].items():
        print(f"  FAILED {label}: {error}")
    for name in MEASURES:
        print(f"ratios ({name.replace('_', ' ')}): {json.dumps(figures['ratios'][name])}")
    for verdict in figures["targets"].values():
        print(f"  {verdict}")


def main() -> None:
    """Run the section alone on its own Redis, print it and write bench/results/<date>-waiting.json."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=2000, help="no-op jobs per batch")
    parser.add_argument("--waiting-jobs", type=int, default=WAITING_JOBS,
                        help="100 ms jobs per batch (ours one at a time: 1/8)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="small counts, one round, to check the harness")
    args = parser.parse_args()
    if args.quick:
        args.jobs, args.waiting_jobs, args.rounds = 200, 80, 1
    workdir = Path(tempfile.mkdtemp(prefix="runner-bench-waiting-"))
    with EmbeddedRedis(workdir / "redis", appendonly=False) as server:
        results: dict[str, Any] = {
            "date": datetime.now(UTC).isoformat(),
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
            "parameters": vars(args),
        }
        results["waiting"] = waiting_section(server.url, workdir, noop_jobs=args.jobs, waiting_jobs=args.waiting_jobs,
                                          rounds=args.rounds)
    print_waiting(results["waiting"])
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    target = RESULTS_DIR / f"{datetime.now(UTC).strftime('%Y-%m-%d')}-waiting.json"
    target.write_text(json.dumps(results, indent=2))
    print(f"\nwritten {target.relative_to(ROOT)}")
    shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
