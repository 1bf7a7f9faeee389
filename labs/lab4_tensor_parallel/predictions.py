"""Lab 4's predictions, checked against what the real ranks and vLLM's TP=2 workers did.

Why here and not in the notebook: the live values are read from the results the notebook already
has (the from-scratch model on two real gloo/NCCL ranks, `checks.run_equivalence`; vLLM with
`tensor_parallel_size=2`, `vllm_tp.run_tp`), and the same functions are tested against an
independent count (tests/test_lab4_tensor_parallel_predictions.py).
"""

from __future__ import annotations

from typing import Any

from labs.core.errors import WorkbookError
from labs.core.predict import Verdict, check_number


def all_reduces_per_forward(rank_outputs: list[dict[str, Any]]) -> int:
    """All-reduces one rank made in one forward pass of the whole model, as `CountingAllReduce` counted them.

    Args:
        rank_outputs: one dict per rank from `checks.run_equivalence` (its "reduces"["model"] count).

    Raises:
        WorkbookError: the ranks counted differently (a collective every rank must join cannot
            have happened a different number of times on each).
    """
    counts = [out["reduces"]["model"] for out in rank_outputs]
    if len(set(counts)) != 1:
        raise WorkbookError(f"the ranks counted different numbers of all-reduces in one forward pass: {counts}")
    return counts[0]


def check_all_reduces_per_forward(predicted: float | None, rank_outputs: list[dict[str, Any]],
                                  quiet: bool = False) -> Verdict:
    """The learner's count of all-reduces per forward pass at TP=len(rank_outputs), against the counted one."""
    actual = all_reduces_per_forward(rank_outputs)
    sites = rank_outputs[0]["model_call_sites"]
    num_blocks = sum(site.endswith("down_proj") for site in sites)
    why = (f"Counted by CountingAllReduce on every one of the {len(rank_outputs)} ranks: "
           f"{sites.count('embed_tokens')} after the vocab-parallel embedding (each rank looks up only its part "
           f"of the vocabulary), then 2 per block, after o_proj and after down_proj (the row-parallel layers), "
           f"x {num_blocks} blocks. The count does not depend on the number of tokens: a one-token decode step "
           "costs the same reduces, each on a smaller tensor.")
    return check_number("all-reduces per rank in one forward pass", predicted, actual, why, quiet=quiet)


def params_per_rank(report: dict[str, Any]) -> int:
    """Parameters the largest rank of a vLLM TP engine multiplies by, read inside each worker.

    Args:
        report: `vllm_tp.run_tp(n)` with n > 1 (its "weights": one entry per rank, counted by
            `vllm_internals.tp_rank_weights` through each layer's own GEMM, since vLLM's CPU
            backend repacks the weights and leaves empty parameters).
    """
    return max(w["num_params"] for w in report["weights"])


def check_params_per_rank(predicted: float | None, tp_report: dict[str, Any], whole_params: int,
                          tolerance: float = 0.01, quiet: bool = False) -> Verdict:
    """The learner's parameters per rank against vLLM's own workers (right within `tolerance`, a fraction).

    Args:
        predicted: the learner's number, or None.
        tp_report: `vllm_tp.run_tp(2)`.
        whole_params: the whole model's parameters (one worker's, `run_tp(1)["weights"][0]["num_params"]`),
            for the explanation.
        tolerance: relative; 1% lets a learner ignore the replicated norm weights.
    """
    actual = params_per_rank(tp_report)
    whole = whole_params
    counts = [w["num_params"] for w in tp_report["weights"]]
    why = (f"Read inside each of vLLM's {len(counts)} workers ({', '.join(f'{c:,}' for c in counts)}): "
           f"{actual / whole:.3f} of the {whole:,} one worker holds. The embedding (the vocabulary padded to a "
           "multiple of 64, tied to the LM head), the query and KV heads and the MLP's intermediate size are "
           "split; only the RMSNorm weights are copied to every rank, so it is slightly more than half.")
    return check_number("parameters per rank at TP=2", predicted, actual, why, tolerance=tolerance,
                        relative=True, quiet=quiet)
