"""The command line: `python -m runner ...` (server commands and HTTP client commands)."""
