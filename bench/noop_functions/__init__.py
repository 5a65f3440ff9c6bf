"""Functions used only by the benchmarks."""

# How long a waiting bench job waits, in seconds: ours (waiting.py) and the peers' tasks
# (bench.dramatiq_app, bench.celery_app) alike. Here, not in waiting.py, so the peers import no runner.
WAIT_SECONDS = 0.1
