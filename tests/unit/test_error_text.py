"""The one parser of failure text: a traceback's last line, or RQ's note on a dead work horse."""

from __future__ import annotations

import pytest

from runner.services.job_views import error_from_text

TRACEBACK = """Traceback (most recent call last):
  File "x.py", line 1, in <module>
runtime.errors.PermanentError: Division by zero
"""


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (TRACEBACK, {"type": "PermanentError", "message": "Division by zero"}),
        ("ValueError: bad: worse\n", {"type": "ValueError", "message": "bad: worse"}),
        ("something odd happened", {"type": "JobFailed", "message": "something odd happened"}),
        ("", {"type": "JobFailed", "message": "The job failed without an error message."}),
        (
            "Work-horse terminated unexpectedly; waitpid returned 9 (signal 9); ",
            {"type": "WorkerDied",
             "message": "The worker running this job died: Work-horse terminated unexpectedly; waitpid returned 9 "
                        "(signal 9);"},
        ),
    ],
)
def test_error_from_text(text: str, expected: dict[str, str]) -> None:
    assert error_from_text(text) == expected
