"""The check every exercise file gets: it mirrors its reference solution, name for name.

Why: a learner edits `labs/labN_<topic>/exercise*.py` and `make grade` swaps it in for the
solution; a stub with another name or signature would fail in the grader's plumbing instead of in
the learner's answer. One helper, so every lab checks the same thing.
"""

from __future__ import annotations

import inspect
from types import ModuleType

from labs.core.grading import implementation_module_name, load_implementation


def assert_learner_mirrors_reference(exercise: str, must_have: set[str]) -> tuple[ModuleType, ModuleType, list[str]]:
    """The learner file has every public function of the reference, with the same signature.

    Args:
        exercise: the grading name (`labs.core.grading`), e.g. "lab9_lora".
        must_have: functions the lab's text names: a reference that lost one fails here too.

    Returns:
        The learner module, the reference module and the reference's public function names.
    """
    learner, reference = load_implementation(exercise, "learner"), load_implementation(exercise, "solution")
    public = sorted(n for n, f in inspect.getmembers(reference, inspect.isfunction)
                    if f.__module__ == reference.__name__ and not n.startswith("_"))
    assert must_have <= set(public), f"the reference lacks {sorted(must_have - set(public))}"
    for name in public:
        assert inspect.signature(getattr(learner, name)) == inspect.signature(getattr(reference, name)), name
    assert implementation_module_name(exercise, "learner") == learner.__name__
    return learner, reference, public
