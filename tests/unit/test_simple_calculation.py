"""Unit tests of the simple_calculation function, called directly (progress is a no-op outside a worker)."""

from __future__ import annotations

import time

import pytest

import functions.simple_calculation as module
from functions.simple_calculation import MAX_DEPTH, MAX_EXPRESSION_LENGTH, simple_calculation
from runner import PermanentError
from runner.errors import InvalidInput


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("1+2", 3),
        ("2+3*4", 14),
        ("(2+3)*4", 20),
        ("10-4-3", 3),
        ("2**10", 1024),
        ("2**3**2", 512),  # ** is right-associative: 2**(3**2)
        ("-2**2", -4),  # ** binds tighter than unary minus
        ("(-2)**2", 4),
        ("2**-1", 0.5),
        ("-(3+4)*2", -14),
        ("+5", 5),
        ("--5", 5),
        ("7/2", 3.5),
        ("8/2", 4.0),
        ("7//2", 3),
        ("-7//2", -4),  # floor division rounds toward negative infinity
        ("7//-2", -4),
        ("7%3", 1),
        ("-7%3", 2),  # the sign of % follows the divisor
        ("7%-3", -2),
        ("1e3+1", 1001.0),
        ("0.1+0.2", 0.1 + 0.2),
        ("1.5*4", 6.0),
        ("7.5//2", 3.0),
        ("5.5%2", 1.5),
        ("  1 + 1  ", 2),
        ("0**0", 1),
        ("1**100000000", 1),  # a huge exponent of 1 stays small, so it is allowed
        ("(-1)**100000001", -1),
        ("2**4095", 2**4095),
        ("123456789012345678901234567890 * 2", 246913578024691357802469135780),
    ],
)
def test_evaluates_expression(expression: str, expected: int | float) -> None:
    outcome = simple_calculation(expression)
    assert outcome["result"] == expected
    assert type(outcome["result"]) is type(expected)  # ints stay ints, floats stay floats
    assert outcome["expression"] == expression


@pytest.mark.parametrize(
    ("expression", "operations"),
    [("42", 0), ("1+2", 1), ("-3", 1), ("-(3+4)*2", 3), ("2**-1", 2), ("1+2+3+4", 3)],
)
def test_counts_operations(expression: str, operations: int) -> None:
    assert simple_calculation(expression)["operations"] == operations


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("x", "Unsupported syntax: names are not allowed (found 'x')"),
        ("1 + x", "names are not allowed"),
        ("__import__('os')", "function calls are not allowed"),
        ("abs(-1)", "function calls are not allowed"),
        ("(1).real", "attribute access is not allowed"),
        ("os.system", "attribute access is not allowed"),
        ("x[0]", "indexing is not allowed"),
        ("'abc'", "strings are not allowed"),
        ("b'abc'", "strings are not allowed"),
        ("'a' * 10", "strings are not allowed"),
        ("lambda: 1", "lambda expressions are not allowed"),
        ("1 < 2", "comparisons are not allowed"),
        ("1 == 1", "comparisons are not allowed"),
        ("1 and 2", "'and'/'or' are not allowed"),
        ("True", "booleans are not allowed"),
        ("True + 1", "booleans are not allowed"),
        ("None", "is not a number"),
        ("1j", "complex numbers are not allowed"),
        ("[1, 2]", "List is not allowed"),
        ("1 if 1 else 2", "conditional expressions are not allowed"),
        ("1 << 2", "operator '<<' is not allowed"),
        ("~1", "operator '~' is not allowed"),
        ("not 1", "operator 'not' is not allowed"),
        ("", "Malformed expression: the expression is empty"),
        ("   ", "Malformed expression: the expression is empty"),
        ("1+", "Malformed expression: invalid syntax at the end of the expression"),
        ("1 2", "Malformed expression: invalid syntax at column 3"),
        ("(1+2", "Malformed expression: '(' was never closed at column 1"),
        ("1+2)", "Malformed expression: unmatched ')'"),
        ("1\x00", "Malformed expression"),
        ("1/0", "Division by zero"),
        ("1//0", "Division by zero"),
        ("1%0", "Division by zero"),
        ("1.0/0.0", "Division by zero"),
        ("0**-1", "Division by zero"),
        ("9**9**9", "Result too large"),
        ("10**10**10", "Result too large"),
        ("2**100000000", "Result too large"),
        ("2**4096", "Result too large"),
        ("(2**4000)*(2**4000)", "Result too large"),
        ("1e308*10", "Result too large"),
        ("1e308**2", "Result too large"),
        ("10.0**400", "Result too large"),
        ("1e999", "Result too large"),
        ("(2**4000)+0.5", "Result too large"),
        ("(-8)**0.5", "Result is not a real number"),
        ("(" * 200 + "1" + ")" * 200, "too deeply nested"),
        ("-" * 200 + "1", "too deeply nested"),
        ("+".join(["1"] * 200), "too deeply nested"),
    ],
)
def test_rejects_expression(expression: str, message: str) -> None:
    with pytest.raises(PermanentError) as caught:
        simple_calculation(expression)
    assert message in str(caught.value)


def test_validation_rejects_too_long_expression() -> None:
    spec = simple_calculation.__runner_function__  # type: ignore[attr-defined]
    with pytest.raises(InvalidInput) as caught:
        spec.validate({"expression": "1+" * MAX_EXPRESSION_LENGTH + "1"})
    assert [(d["field"], d["type"]) for d in caught.value.details] == [("expression", "string_too_long")]
    assert f"at most {MAX_EXPRESSION_LENGTH} characters" in caught.value.message


def test_nesting_up_to_the_limit_is_allowed() -> None:
    assert simple_calculation("(" * MAX_DEPTH + "7" + ")" * MAX_DEPTH)["result"] == 7


@pytest.mark.parametrize("expression", ["9**9**9", "10**10**10", "2**100000000", "99999**99999**99999"])
def test_huge_powers_fail_fast(expression: str) -> None:
    started = time.perf_counter()
    with pytest.raises(PermanentError, match="Result too large"):
        simple_calculation(expression)
    assert time.perf_counter() - started < 1.0


def test_reports_progress_once_after_parsing(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[float, str]] = []
    monkeypatch.setattr(module, "progress", lambda percent, message="": calls.append((percent, message)))
    expression = "+".join(f"({n}*2)" for n in range(40))  # 40 terms: well over 100 nodes
    assert simple_calculation(expression)["result"] == sum(n * 2 for n in range(40))
    assert calls == [(50, "evaluating")]  # the worker writes 100% "finished" when the job ends


def test_no_progress_beyond_parsing_when_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[float] = []
    monkeypatch.setattr(module, "progress", lambda percent, message="": calls.append(percent))
    with pytest.raises(PermanentError):
        simple_calculation("2**100000000 + x")  # the name is found before anything is computed
    assert calls == []


def test_declared_policy() -> None:
    spec = simple_calculation.__runner_function__  # type: ignore[attr-defined]
    assert (spec.name, spec.queue, spec.timeout, spec.retries) == ("simple_calculation", "demo_tasks", 30, 0)
    assert spec.description == "Evaluate an arithmetic expression safely (no eval)."


@pytest.mark.parametrize(
    "payload",
    [{}, {"expression": 5}, {"expression": ""}, {"expression": "1" * 1001}, {"expression": "1+1", "extra": 1}],
)
def test_validation_rejects_bad_input(payload: dict[str, object]) -> None:
    spec = simple_calculation.__runner_function__  # type: ignore[attr-defined]
    with pytest.raises(InvalidInput) as caught:
        spec.validate(payload)
    fields = {detail["field"] for detail in caught.value.details}
    expected = "extra" if "extra" in payload else "expression"
    assert expected in fields


def test_validation_accepts_good_input() -> None:
    spec = simple_calculation.__runner_function__  # type: ignore[attr-defined]
    assert spec.validate({"expression": "1+1"}) == {"expression": "1+1"}


def test_schema_publishes_length_limits() -> None:
    spec = simple_calculation.__runner_function__  # type: ignore[attr-defined]
    schema = spec.input_schema()["properties"]["expression"]
    assert schema["maxLength"] == MAX_EXPRESSION_LENGTH
    assert schema["minLength"] == 1
