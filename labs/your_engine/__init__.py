"""Your engine against vLLM: the mini engine built from your answers, token for token (`python -m labs.your_engine`).

    parts.py      which parts are yours (graded, --parts, or $LABS_ENGINE)
    reference.py  vLLM's own outputs on the 320 phrasebook prompts, computed once and kept
    compare.py    the mini engine in each setting (default, scarce KV blocks, prefix caching), compared
    cli.py        the command, and `make grade`'s ending
"""

from labs.your_engine.cli import LAB_PARTS, main
from labs.your_engine.compare import SETTINGS, Difference, Setting, SettingResult, compare, compare_setting, generate, \
    render_prompts, smoke
from labs.your_engine.parts import Parts, engine_parts, grade_parts, parse_parts
from labs.your_engine.reference import MAX_TOKENS, MODEL, Reference, load_reference, \
    phrasebook_messages, reference_from_vllm, vllm_reference

__all__ = ["LAB_PARTS", "MAX_TOKENS", "MODEL", "SETTINGS", "Difference", "Parts", "Reference", "Setting", "SettingResult",
           "compare", "compare_setting", "engine_parts", "generate", "phrasebook_messages", "render_prompts", "grade_parts", "load_reference", "main", "parse_parts",
           "reference_from_vllm", "smoke", "vllm_reference"]
