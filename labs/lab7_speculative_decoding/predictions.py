"""Lab 7's predictions, checked against the steps the live engine recorded.

    accepted per step    on the repeating text, how many of the K = 3 drafts a verifying step
                         accepts on average (vLLM's num_accepted_tokens / num_drafts)
    drafts proposed      on the non-repeating text, how many draft tokens the n-gram drafter
                         proposes in all (what the scheduler scheduled for verification)
    faster or slower     with drafts that are always wrong (every step verifies K + 1 tokens per
                         request and keeps one), is decoding on this CPU faster or slower than plain

Why here and not in the notebook: the same functions are tested against the raw recorded steps
(tests/test_lab7_speculative_decoding.py).
"""

from __future__ import annotations

from labs.core.predict import Verdict, check_choice, check_number
from labs.lab7_speculative_decoding.speculation import WorkloadRun

SPEEDS = ("faster", "slower")


def accepted_per_draft(run: WorkloadRun) -> float:
    """Accepted drafts per verifying step and request: the mean acceptance length minus the bonus token."""
    records = run.draft_records()
    return sum(a for _, a in records) / len(records) if records else 0.0  # no draft: nothing accepted


def check_accepted_per_draft(predicted: float | None, run: WorkloadRun, num_speculative_tokens: int,
                             tolerance: float = 0.5, quiet: bool = False) -> Verdict:
    """The learner's accepted drafts per step (0..K) on the repeating text, against the recorded steps."""
    records = run.draft_records()
    actual = accepted_per_draft(run)
    full = sum(a == d == num_speculative_tokens for d, a in records)
    why = (f"{len(records)} verifying steps (request x step) checked {sum(d for d, _ in records)} draft tokens and "
           f"accepted {sum(a for _, a in records)}; {full} of them accepted all {num_speculative_tokens}. The answer "
           "copies text already in the context (with tiny-phrasebook, a line of the prompt's glossary; with a model "
           "that loops, its own earlier output), so once its last tokens match that text, the n-gram drafter proposes "
           "what followed there and the target agrees, until the copy ends (with tiny-phrasebook, the drafts then run "
           "into the next glossary line while the answer stops).")
    return check_number(f"accepted drafts per step (of {num_speculative_tokens})", predicted, round(actual, 2), why,
                        tolerance=tolerance, quiet=quiet)


def check_drafts_proposed(predicted: float | None, run: WorkloadRun, quiet: bool = False) -> Verdict:
    """The learner's number of draft tokens proposed for the non-repeating text, against the scheduler."""
    drafted = sum(d for d, _ in run.draft_records())
    accepted = sum(a for _, a in run.draft_records())
    why = (f"The scheduler verified {drafted} draft tokens in {len(run.steps)} steps. n-gram drafting only "
           "proposes tokens that followed an earlier occurrence of the context's last 2..4 tokens: ")
    if drafted == 0:
        why += ("a Chinese answer to a Japanese prompt repeats no such n-gram, so there is nothing to propose and "
                "every step is a plain one-token decode step.")
    else:
        why += (f"here the answers repeat themselves ({accepted} of {drafted} accepted): a model that loops, as one with "
                "random weights does, is the n-gram drafter's best case.")
    return check_number("draft tokens proposed for the non-repeating text", predicted, drafted, why, quiet=quiet)


def check_wrong_drafts_speed(predicted: str | None, plain: WorkloadRun, wrong: WorkloadRun,
                             quiet: bool = False) -> Verdict:
    """The learner's "faster" or "slower" for always-wrong drafts, against the measured time of the two runs."""
    ratio = wrong.seconds / plain.seconds
    actual = "slower" if ratio > 1 else "faster"
    why = (f"Measured: x{ratio:.2f} the plain run's time, in the same {len(plain.steps)} vs {len(wrong.steps)} steps. "
           "Every draft is rejected, so no step is saved, yet each step computes K + 1 tokens per request instead "
           "of one. On this CPU a tiny model's step costs more with every token it computes; on a GPU a decode "
           "step is bound by reading the weights, and 4 tokens cost about what 1 costs.")
    if actual == "faster":
        why += " Here it came out faster: the difference is within the noise of a busy machine."
    return check_choice("always-wrong drafts on this CPU", predicted, actual, why, choices=SPEEDS, quiet=quiet)
