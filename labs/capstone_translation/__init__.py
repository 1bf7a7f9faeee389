"""The capstone: long Japanese documents translated into Chinese through a vLLM server.

`python -m labs.capstone_translation INPUT... --out DIR`, or from code:

    from labs.capstone_translation import TranslateConfig, run_job
    job = run_job([Path("docs/")], TranslateConfig(out_dir=Path("runs/translate")))
"""

from labs.capstone_translation.endpoint import Endpoint, ServerUnavailableError, connect, token_counter
from labs.capstone_translation.pipeline import DocumentPlan, TranslateConfig, make_plan
from labs.capstone_translation.run import JobResult, run_job
from labs.capstone_translation.source import InputError, read_document
from labs.core.client import ModelNotServedError
from labs.core.models.prompt_format import PromptTemplate

__all__ = [
    "DocumentPlan", "Endpoint", "InputError", "JobResult", "ModelNotServedError", "PromptTemplate",
    "ServerUnavailableError", "TranslateConfig", "connect", "make_plan", "read_document", "run_job", "token_counter",
]
