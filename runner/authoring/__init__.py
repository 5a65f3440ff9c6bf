"""What function authors use: the @function decorator, input types, and the job context (progress, artifacts)."""
