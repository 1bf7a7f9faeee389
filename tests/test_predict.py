"""The prediction checks say right, wrong (by how much) and "no prediction made"; bad input is refused."""

from __future__ import annotations

import pytest

from labs.core.predict import NO_PREDICTION, check_choice, check_number


def test_a_number_is_right_within_the_tolerance_and_wrong_outside_it() -> None:
    assert check_number("blocks", 4, 4, "ceil(100/32).", quiet=True).right is True
    wrong = check_number("blocks", 3, 4, "ceil(100/32).", quiet=True)
    assert wrong.right is False and "wrong by -1" in wrong.message and "(-25%)" in wrong.message
    assert check_number("TTFT", 105, 100, "measured.", tolerance=0.1, relative=True, quiet=True).right is True
    assert check_number("TTFT", 120, 100, "measured.", tolerance=0.1, relative=True, quiet=True).right is False


def test_no_prediction_is_not_an_error_and_still_shows_the_answer(capsys: pytest.CaptureFixture[str]) -> None:
    verdict = check_number("blocks", None, 4, "ceil(100/32).")
    assert verdict.right is None
    out = capsys.readouterr().out
    assert NO_PREDICTION in out and "4" in out and "ceil(100/32)." in out


def test_a_choice_is_right_or_wrong_and_must_be_one_of_the_choices() -> None:
    assert check_choice("moves more", "TTFT", "TTFT", "queueing.", choices=("TTFT", "TPOT"), quiet=True).right
    assert check_choice("moves more", "TPOT", "TTFT", "queueing.", choices=("TTFT", "TPOT"), quiet=True).right is False
    assert check_choice("moves more", None, "TTFT", "queueing.", quiet=True).right is None
    with pytest.raises(ValueError, match="not one of the choices"):
        check_choice("moves more", "ITL", "TTFT", "queueing.", choices=("TTFT", "TPOT"), quiet=True)


def test_a_prediction_that_is_not_a_number_is_refused() -> None:
    with pytest.raises(TypeError, match="must be a number"):
        check_number("blocks", "four", 4, "ceil(100/32).", quiet=True)


def test_numbers_read_as_a_learner_writes_them() -> None:
    big = check_number("parameters per rank", 2_000_000, 2_100_480, "counted.", quiet=True)
    assert "2,100,480" in big.message and "wrong by -100,480" in big.message
    assert "0.8367" in check_number("decode share", None, 0.83671, "measured.", quiet=True).message
