"""minigpt2/errors.py under mutmut: the one-line error type, `require`, and how a command prints a UserError.

Every expected line is written out by hand: `FieldError(field, value, expected)` reads `field value: expected ...`,
and a decorated `main` turns a UserError into SystemExit("error: <message>") with no chained traceback.
"""

from __future__ import annotations

import pytest

from minigpt2.errors import FieldError, UserError, exits_on_user_error, require


def test_field_error_is_one_line_naming_the_field_value_and_expectation():
    e = FieldError("lr", 0.0, "a finite number > 0")
    assert str(e) == "lr 0.0: expected a finite number > 0"
    assert e.args == ("lr 0.0: expected a finite number > 0",)
    assert (e.field, e.value, e.expected) == ("lr", 0.0, "a finite number > 0")
    assert isinstance(e, UserError) and isinstance(e, ValueError)
    assert str(FieldError("device", "tpu", "auto, cpu, cuda or cuda:N")) == \
        "device tpu: expected auto, cpu, cuda or cuda:N"


def test_require_raises_only_when_not_ok():
    assert require(True, "epochs", 0, "an integer >= 1") is None
    assert require(1, "epochs", 0, "an integer >= 1") is None  # any true value passes
    with pytest.raises(FieldError) as e:
        require(False, "epochs", 0, "an integer >= 1")
    assert str(e.value) == "epochs 0: expected an integer >= 1"
    assert (e.value.field, e.value.value, e.value.expected) == ("epochs", 0, "an integer >= 1")
    with pytest.raises(FieldError, match=r"^batch_size -3: expected an integer >= 1$"):
        require(0, "batch_size", -3, "an integer >= 1")


def test_a_decorated_main_returns_its_value_and_passes_every_argument():
    seen = []

    @exits_on_user_error
    def main(a, b=2, *, c=3):
        """The command."""
        seen.append((a, b, c))
        return a + b + c

    assert main(1, 10, c=100) == 111
    assert main(5) == 10
    assert seen == [(1, 10, 100), (5, 2, 3)]
    assert main.__name__ == "main" and main.__doc__ == "The command."  # functools.wraps
    assert main.__wrapped__(1) == 6


def test_a_user_error_is_one_error_line_and_exit_code_1(capsys):
    @exits_on_user_error
    def main(argv):
        raise FieldError("--type", "'q3'", "one of f32, f16")

    with pytest.raises(SystemExit) as e:
        main([])
    assert e.value.code == "error: --type 'q3': expected one of f32, f16"  # SystemExit(str): stderr, exit 1
    assert e.value.__cause__ is None and e.value.__suppress_context__  # `from None`: no chained traceback
    assert capsys.readouterr() == ("", "")

    class Sub(UserError):
        pass

    @exits_on_user_error
    def other():
        raise Sub("no such file: x.json")

    with pytest.raises(SystemExit) as e:
        other()
    assert e.value.code == "error: no such file: x.json"


def test_anything_else_keeps_its_traceback():
    @exits_on_user_error
    def main():
        raise ValueError("a bug")

    with pytest.raises(ValueError, match="^a bug$"):
        main()

    @exits_on_user_error
    def exits():
        raise SystemExit(3)

    with pytest.raises(SystemExit) as e:
        exits()
    assert e.value.code == 3
