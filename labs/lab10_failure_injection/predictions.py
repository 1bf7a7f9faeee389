"""Lab 10's predictions, checked against the live engine's storm and vLLM's own scheduler.

    preemptions      how many preemptions the burst of 8 causes on 12 KV blocks (the live engine's
                     recorded `SchedulerOutput.preempted_req_ids`)
    recomputed       how many tokens the engine computes twice because of them (the recompute tax,
                     counted by the live scheduler at each preemption)
    knob             which single knob ends the storm: vLLM's real Scheduler replays the burst under
                     each (`kv_storm.compare_knobs`), and the live engine is asked again with it

Why here and not in the notebook: the same functions are tested against the raw step history
(tests/test_lab10_failure_injection_predictions.py).
"""

from __future__ import annotations

import pandas as pd

from labs.core.predict import Verdict, check_choice, check_number
from labs.lab10_failure_injection.kv_storm import KNOBS, StormRun

KNOB_CHOICES = tuple(name for name in KNOBS if name != "as configured")


def check_num_preemptions(predicted: int | None, run: StormRun, tolerance: int = 2, quiet: bool = False) -> Verdict:
    """The learner's number of preemptions, against the live run (right within `tolerance`)."""
    steps = [o.step for o in run.observer.history if o.preempted_ids]
    why = (f"Recorded from the scheduler's own outputs: preemptions at steps {steps}. 8 requests x 3 blocks at "
           "their end need 24 blocks; vLLM admits all 8 as long as their prompts fit (1 block each), and as they "
           "decode, each one crossing a block boundary with no block free makes the scheduler preempt the request it "
           "scheduled last (LIFO), more than once as freed blocks are taken again.")
    return check_number("preemptions in the burst", predicted, run.num_preemptions, why, tolerance=tolerance,
                        quiet=quiet)


def check_recomputed_tokens(predicted: int | None, run: StormRun, tolerance: float = 0.25,
                            quiet: bool = False) -> Verdict:
    """The learner's recompute tax in tokens, against the live scheduler's count (right within 25%)."""
    tax = run.tax
    why = (f"{tax.num_scheduled_tokens} tokens were scheduled for {tax.num_needed_tokens} needed (prompt + outputs - 1 "
           f"per request); the {tax.tokens} extra are the prompts and generated tokens of preempted requests, "
           f"prefilled again when they came back (the live scheduler counted {run.engine_recomputed_tokens} at the "
           "moments it preempted).")
    return check_number("tokens computed twice", predicted, tax.tokens, why, tolerance=tolerance, relative=True,
                        unit=" tokens", quiet=quiet)


def knob_that_ends_it(knobs: pd.DataFrame) -> str:
    """The one knob (of `KNOB_CHOICES`) whose run has no preemption; the fewest preemptions if none has none."""
    rows = knobs.loc[list(KNOB_CHOICES)]
    return str(rows["preemptions"].idxmin())


def check_knob(predicted: str | None, knobs: pd.DataFrame, quiet: bool = False) -> Verdict:
    """The learner's knob, against vLLM's scheduler replaying the burst under each one."""
    table = ", ".join(f"{name}: {int(row.preemptions)} preemptions in {int(row.steps)} steps"
                      for name, row in knobs.iterrows())
    why = (f"vLLM's Scheduler on the same burst: {table}. Only admitting fewer requests at once (3 x 3 blocks <= 11) "
           "lets every admitted request finish in the blocks it can get; a smaller token budget only spreads the "
           "prefills out, and 6 more blocks just let more requests in at once, which run out again.")
    return check_choice("the knob that ends the storm", predicted, knob_that_ends_it(knobs), why,
                        choices=KNOB_CHOICES, quiet=quiet)
