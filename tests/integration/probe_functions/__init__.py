"""Test-only functions, registered next to `functions/` by RUNNER_FUNCTIONS_PACKAGE in integration tests."""
