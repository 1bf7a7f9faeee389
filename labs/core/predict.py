"""Predict, then see: a learner's guess checked against a value read from the live engine.

Why: committing to a number before seeing it is what makes the number stick. A notebook cell sets
a variable (`my_guess = None  # your prediction`), the next cell computes the real value from
vLLM and calls `check_number` or `check_choice`, which says right or wrong, by how much, and why.

An unanswered prediction (None) is not an error: headless runs (`make tour`, the notebook tests)
print "no prediction made" and go on, so the labs still run top to bottom.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

NO_PREDICTION = "no prediction made"


@dataclass(frozen=True)
class Verdict:
    """How one prediction went.

    Attributes:
        name: what was predicted, e.g. "KV blocks for a 100-token prompt".
        predicted: the learner's value (None: no prediction made).
        actual: the value read from the engine.
        right: True/False, or None when no prediction was made.
        message: the line shown to the learner (also returned by `str()`).
    """

    name: str
    predicted: Any
    actual: Any
    right: bool | None
    message: str

    def __str__(self) -> str:
        return self.message


def _fmt(x: float, sign: bool = False) -> str:
    """Whole numbers with thousands separators (2,100,480), others to 4 significant digits."""
    plus = "+" if sign else ""
    return f"{int(x):{plus},}" if float(x).is_integer() else f"{x:{plus}.4g}"


def _show(verdict: Verdict, quiet: bool) -> Verdict:
    if not quiet:
        print(verdict.message)
    return verdict


def check_number(name: str, predicted: float | None, actual: float, why: str, *, tolerance: float = 0.0,
                 relative: bool = False, unit: str = "", quiet: bool = False) -> Verdict:
    """Compare a numeric prediction with the live value, and explain.

    Args:
        name: what was predicted.
        predicted: the learner's number, or None.
        actual: the value read from the engine or server.
        why: one sentence on where the real value comes from (shown whatever the outcome).
        tolerance: how far off still counts as right (absolute, or a fraction of `actual` if `relative`).
        relative: read `tolerance` as a fraction of `actual`.
        unit: appended to the numbers shown, e.g. " tokens".
        quiet: return the verdict without printing it.

    Returns:
        The verdict; its message is printed unless `quiet`.
    """
    if predicted is None:
        return _show(Verdict(name, None, actual, None, f"{name}: {NO_PREDICTION} (the engine says {_fmt(actual)}{unit}). "
                                                       f"{why}"), quiet)
    if isinstance(predicted, bool) or not isinstance(predicted, (int, float)) or math.isnan(predicted):
        raise TypeError(f"{name}: the prediction must be a number, not {predicted!r}")
    allowed = abs(actual) * tolerance if relative else tolerance
    off = predicted - actual
    right = abs(off) <= allowed
    if right:
        head = f"{name}: right: you said {_fmt(predicted)}{unit}, the engine says {_fmt(actual)}{unit}"
    else:
        how_far = f" ({off / actual:+.0%})" if actual else ""
        head = (f"{name}: wrong by {_fmt(off, sign=True)}{unit}{how_far}: you said {_fmt(predicted)}{unit}, "
                f"the engine says {_fmt(actual)}{unit}")
    return _show(Verdict(name, predicted, actual, right, f"{head}. {why}"), quiet)


def check_choice(name: str, predicted: Any, actual: Any, why: str, *, choices: tuple[Any, ...] = (),
                 quiet: bool = False) -> Verdict:
    """Compare a choice (a request id, "TTFT" or "TPOT", ...) with what the engine did, and explain.

    Args:
        name: what was predicted.
        predicted: the learner's choice, or None.
        actual: what the engine did.
        why: one sentence on why the engine did that.
        choices: the allowed answers; a prediction outside them is refused with the list.
        quiet: return the verdict without printing it.

    Returns:
        The verdict; its message is printed unless `quiet`.
    """
    if predicted is None:
        return _show(Verdict(name, None, actual, None, f"{name}: {NO_PREDICTION} (the engine: {actual!r}). {why}"),
                     quiet)
    if choices and predicted not in choices:
        raise ValueError(f"{name}: {predicted!r} is not one of the choices {list(choices)!r}")
    right = predicted == actual
    head = (f"{name}: right: {actual!r}" if right
            else f"{name}: wrong: you said {predicted!r}, the engine: {actual!r}")
    return _show(Verdict(name, predicted, actual, right, f"{head}. {why}"), quiet)
