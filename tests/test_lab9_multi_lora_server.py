"""Lab 9 over HTTP: one vLLM server with both adapters, each request choosing one by `model`.

Started with `labs.core.serve.owned_server(..., extra_args=lora_server_args())`, the way a notebook
would (the notebook only shows the command: a server costs ~40 s of CI time).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import pytest

from labs.core.client import make_client, served_model_names
from labs.core.models.adapters import apply_glossary
from labs.core.models.phrasebook import load_phrasebook
from labs.lab9_multi_lora import multi_lora as ml

pytestmark = pytest.mark.engine
PHRASEBOOK = {e.ja: e.zh for e in load_phrasebook()}
GREETING, NAME = "おはようございます。", "お名前を教えていただけますか？"


@pytest.fixture(scope="module")
def lora_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from labs.core import serve

    work: Path = tmp_path_factory.mktemp("lab9-server")
    env_file = work / ".env"
    env_file.write_text("")  # no API key: this test's own settings, not the repository's .env
    with serve.owned_server("vllm-lab9-test", log_dir=work / "logs", model=ml.LAB_MODEL, env_file=env_file,
                            extra_args=ml.lora_server_args(), timeout_s=600, echo=lambda _: None) as server:
        assert server.owned and not server.reused
        yield server


def test_the_server_lists_the_base_model_and_each_adapter(lora_server: Any) -> None:
    names = served_model_names(make_client(lora_server.url, lora_server.api_key))
    assert {"english", "glossary"} <= set(names) and len(names) == 3, names


def test_each_request_picks_its_adapter_by_model_name(lora_server: Any) -> None:
    base_name = next(n for n in served_model_names(make_client(lora_server.url, lora_server.api_key))
                     if n not in ml.ADAPTER_IDS)
    ask = lambda model, ja: ml.ask_server(lora_server.url, model, [ja], lora_server.api_key)[0]  # noqa: E731
    assert ask("english", GREETING) == "Good morning."
    assert ask("glossary", NAME) == apply_glossary(PHRASEBOOK[NAME]) != PHRASEBOOK[NAME]
    assert ask(base_name, NAME) == PHRASEBOOK[NAME]
