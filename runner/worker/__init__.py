"""The worker process: claims, attempts, supervision, recovery of dead workers' jobs."""
