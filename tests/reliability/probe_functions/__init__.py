"""Probes only the reliability suite registers (RUNNER_FUNCTIONS_PACKAGE), so other suites never fuzz a gated job."""
