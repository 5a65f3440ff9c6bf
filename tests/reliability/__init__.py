"""The reliability suite: real Redis, database, gunicorn and worker processes, killed and restarted on purpose."""
