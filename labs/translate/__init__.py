"""The capstone: long Japanese documents translated into Chinese through a vLLM server.

`python -m labs.translate INPUT... --out DIR`, or from code:

    from labs.translate import TranslateConfig, run_job
    job = run_job([Path("docs/")], TranslateConfig(out_dir=Path("runs/translate")))
"""

from labs.translate.endpoint import Endpoint, ModelNotServedError, ServerUnavailableError, connect, token_counter
from labs.translate.pipeline import DocumentPlan, TranslateConfig, make_plan
from labs.translate.prompt import PromptTemplate
from labs.translate.run import JobResult, run_job
from labs.translate.source import InputError, read_document

__all__ = [
    "DocumentPlan", "Endpoint", "InputError", "JobResult", "ModelNotServedError", "PromptTemplate",
    "ServerUnavailableError", "TranslateConfig", "connect", "make_plan", "read_document", "run_job", "token_counter",
]
