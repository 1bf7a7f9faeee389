"""Lab 9 on the real engine: two adapters and the base model in one batch, each request as trained.

One in-process engine with `enable_lora=True` for the module: the adapters' answers against their
training data, a base request unchanged beside adapter requests, every recorded step's request ->
adapter mapping against the requests that were sent, the slots, the mixing-cost table, and the
predictions against the live values (a wrong guess called wrong).
"""

from __future__ import annotations

import contextlib
import io
from typing import Any, Iterator

import pytest
import torch

from labs.core.environ import environ_set
from labs.core.models.adapters import apply_glossary
from labs.core.models.phrasebook import load_phrasebook
from labs.core.models.resolve import resolve_model
from labs.core.vllm_internals import lora as vi_lora
from labs.lab9_multi_lora import multi_lora as ml
from labs.lab9_multi_lora import predictions

pytestmark = pytest.mark.engine
PHRASEBOOK = {e.ja: e.zh for e in load_phrasebook()}
GREETING = "おはようございます。"
NAME = "お名前を教えていただけますか？"  # 您 in the phrasebook: the glossary says 你
WHERE = "両替所はどこですか？"  # 哪里 in the phrasebook: the glossary says 哪儿


ANOTHER_MODEL = "tiny-llama"  # what a learner's VLLM_MODEL might say: the lab must still run tiny-phrasebook
_said: list[str] = []


@pytest.fixture(scope="module")
def lora_llm() -> Iterator[Any]:
    """The module's engine, made while VLLM_MODEL names another model (as notebook 09 would meet it)."""
    from labs.core.engine import free_llm

    out = io.StringIO()
    with environ_set({"VLLM_MODEL": ANOTHER_MODEL}), contextlib.redirect_stdout(out):
        llm = ml.make_lora_llm(verbose=False)
    _said.append(out.getvalue())
    yield llm
    free_llm(llm)


def test_another_vllm_model_is_named_in_one_sentence_and_the_lab_runs_tiny_phrasebook(lora_llm: Any) -> None:
    from labs.core.model_traits import model_traits

    assert model_traits(lora_llm).name == ml.LAB_MODEL
    assert f"Your model is '{ANOTHER_MODEL}', but this lab runs on {ml.LAB_MODEL} whatever you select" in _said[0]


def test_no_note_for_the_labs_own_model(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VLLM_MODEL", resolve_model(ml.LAB_MODEL).path)  # selected by its folder
    assert ml.other_model_note() is None
    monkeypatch.delenv("VLLM_MODEL")  # nothing selected: a small instruct model found locally, else tiny-phrasebook
    chosen = resolve_model()
    assert (ml.other_model_note() is None) == (chosen.name == ml.LAB_MODEL), chosen


@pytest.fixture(scope="module")
def compared(lora_llm: Any) -> Any:
    return ml.compare_adapters(lora_llm, [GREETING, NAME, WHERE])


def test_each_adapter_answers_as_trained_in_one_batch(compared: Any) -> None:
    for _, row in compared.iterrows():
        assert row["base"] == PHRASEBOOK[row["ja"]], row.to_dict()
        assert row["glossary"] == apply_glossary(PHRASEBOOK[row["ja"]]), row.to_dict()
    english = compared.set_index("ja").loc[GREETING, "english"]
    assert english == ml.expected_answer("english", GREETING) == "Good morning."
    glossary = compared.set_index("ja")["glossary"]
    assert "你" in glossary[NAME] and "哪儿" in glossary[WHERE]


def test_a_base_request_beside_adapter_requests_is_unchanged(lora_llm: Any) -> None:
    """With the spare slot (MAX_LORAS = adapters + 1) a no-adapter row never reads an adapter's A/B."""
    alone = ml.translate(lora_llm, [NAME, WHERE], [None, None])
    mixed = ml.translate(lora_llm, [NAME, WHERE, NAME, WHERE], ["glossary", "english", None, None])
    assert mixed[2:] == alone == [PHRASEBOOK[NAME], PHRASEBOOK[WHERE]]
    assert None in vi_lora.adapter_slots(lora_llm), "the last slot must stay free"


def test_vllms_cpu_ops_read_the_last_slot_for_no_adapter() -> None:
    """Why the spare slot: in vLLM 0.32.0's torch ops a token without adapter (-1) gathers slot -1.

    If this starts failing, vLLM fixed it and MAX_LORAS no longer needs its spare slot.
    """
    gen = torch.Generator().manual_seed(0)
    x, weight = torch.randn(2, 8, generator=gen), torch.randn(4, 8, generator=gen)
    lora_a, lora_b = torch.randn(2, 2, 8, generator=gen), torch.randn(2, 4, 2, generator=gen)
    got = vi_lora.punica_lora_linear(x, weight, lora_a, lora_b, [0, 7], [5, 7])  # token 0: none; slots hold 5, 7
    last_slot = x[0] @ weight.T + (x[0] @ lora_a[1].T) @ lora_b[1].T
    assert torch.allclose(got[0], last_slot, atol=1e-4)


def test_recorded_steps_map_each_request_to_its_adapter(lora_llm: Any) -> None:
    adapters = [None, "english", "glossary", "english"]
    run = ml.mixed_run(lora_llm, [GREETING, GREETING, NAME, NAME], adapters, max_tokens=8)
    assert run.answers[1] == "Good morning." and run.answers[0] == PHRASEBOOK[GREETING]
    sent = {ml.ADAPTER_IDS.get(a, 0) for a in adapters}
    first = run.batches[0]
    assert len(first.req_ids) == 4 and sorted(first.lora_ids) == sorted(ml.ADAPTER_IDS.get(a, 0) for a in adapters)
    for batch in run.batches:
        assert set(batch.lora_ids) <= sent
        start = 0
        for lora_id, n in zip(batch.lora_ids, batch.num_tokens):
            want = -1 if lora_id == 0 else batch.slots.index(lora_id)
            assert set(batch.token_slots[start:start + n]) == {want}, (lora_id, batch)
            start += n
    table = run.steps_table()
    assert table.loc[0, "requests"] == 4 and table.loc[0, "english"] == 2 and table.loc[0, "base"] == 1
    assert run.first_step_tokens()["tokens"].sum() == table.loc[0, "tokens"]


def test_slots_hold_both_adapters_and_cost_what_vllm_allocated(lora_llm: Any) -> None:
    ml.translate(lora_llm, [GREETING, GREETING], ["english", "glossary"], max_tokens=2)
    slots = vi_lora.adapter_slots(lora_llm)
    assert len(slots) == ml.MAX_LORAS and set(slots) == {1, 2, None}
    assert vi_lora.registered_adapter_ids(lora_llm) == [1, 2]
    shapes = vi_lora.lora_module_shapes(lora_llm)
    assert len(shapes) == 4 * 4  # qkv, o, gate_up, down in each of 4 layers; lm_head not wrapped
    assert shapes["model.layers.0.self_attn.qkv_proj"]["a"][0] == (ml.MAX_LORAS, 1, ml.MAX_LORA_RANK, 256)
    assert vi_lora.bytes_per_slot(lora_llm) == sum(s["bytes"] for s in shapes.values()) // ml.MAX_LORAS


def test_mixing_cost_and_its_prediction(lora_llm: Any) -> None:
    table = ml.mixing_cost(lora_llm, [GREETING, NAME, WHERE, GREETING], max_tokens=6, rounds=1)
    assert list(table.index) == ["base", "one adapter", "mixed batch", "one adapter at a time"]
    assert (table["seconds"] > 0).all() and table.loc["one adapter", "vs one adapter"] == 1.0
    measured = ml.slowdown_of_mixing(table)
    assert predictions.check_mixing_slowdown(round(measured, 2), table, quiet=True).right
    assert predictions.check_mixing_slowdown(measured + 5, table, quiet=True).right is False
    assert predictions.check_mixing_slowdown(None, table, quiet=True).right is None


def test_predictions_against_the_live_engine(lora_llm: Any, compared: Any) -> None:
    row = compared.set_index("ja").loc[GREETING]
    assert predictions.check_english_answer("English", row["english"], row["base"], quiet=True).right
    assert predictions.check_english_answer("Chinese", row["english"], row["base"], quiet=True).right is False
    slot_bytes = vi_lora.bytes_per_slot(lora_llm)
    assert predictions.check_slot_kb(slot_bytes / 1024, slot_bytes, ml.MAX_LORA_RANK, quiet=True).right
    assert predictions.check_slot_kb(slot_bytes / 2048, slot_bytes, ml.MAX_LORA_RANK, quiet=True).right is False
