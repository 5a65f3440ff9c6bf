"""An HTTP client of the runner's API; imports no engine code."""
