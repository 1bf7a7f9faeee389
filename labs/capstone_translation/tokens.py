"""python -m labs.capstone_translation.tokens FILE_OR_DIR... -m MODEL: token counts per file, for planning a translation job.

Counts with the model's own tokenizer, offline (a workbook model name, a local folder, or a
Hugging Face id already in the local cache), and estimates how many chunks the capstone pipeline
will make at a given context length. No server needed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from labs.core.errors import WorkbookError, run_main
from labs.capstone_translation.endpoint import Endpoint, local_token_counter
from labs.capstone_translation.pipeline import TranslateConfig, make_plan
from labs.core.models.prompt_format import PromptTemplate
from labs.capstone_translation.source import InputError, find_inputs, read_document


def model_folder(model: str) -> str:
    """A workbook model name resolved to its folder; anything else is returned as given."""
    from labs.core.models import resolve_model

    try:
        return resolve_model(model).path
    except WorkbookError:
        return model  # not a workbook model: a folder or a cached hub id


def load_tokenizer(path: str):
    """The tokenizer in `path` (a folder or a cached hub id), without network access."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise WorkbookError(f"no tokenizer for {path!r} on this machine ({exc}). Pass a workbook model "
                            "(tiny-phrasebook), a model folder, or a hub id already downloaded.") from exc


def count_tokens(inputs: list[Path], model: str, max_model_len: int = 2048, max_chunk_tokens: int | None | str = "auto",
                 overlap: int = 1, encoding: str | None = None) -> pd.DataFrame:
    """One row per file: paragraphs, characters, tokens, and the chunks the pipeline would plan.

    The plan is the pipeline's own (`make_plan`), for a server with this model and context.

    Args:
        inputs: files or folders (.txt/.md under folders).
        model: whose tokenizer counts.
        max_model_len: the server's context length to plan for.
        max_chunk_tokens / overlap: as `python -m labs.capstone_translation` takes them ("auto": the
            model's recommendation, else 1024).
        encoding: force the input encoding.
    """
    folder = model_folder(model)
    counter = local_token_counter(load_tokenizer(folder), folder)
    endpoint = Endpoint("(none: planned offline)", model, max_model_len, folder, None)
    config = TranslateConfig(max_chunk_tokens=max_chunk_tokens, overlap=overlap)
    template = PromptTemplate.load()
    rows = []
    for path in find_inputs(inputs):
        try:
            doc = read_document(path, encoding=encoding)
        except InputError as exc:
            rows.append({"file": str(path), "error": str(exc)})
            continue
        plan = make_plan(doc, template, counter, endpoint, config)
        num_tokens = counter.count_text(doc.text)
        rows.append({"file": str(path), "encoding": doc.encoding, "paragraphs": len(doc.paragraphs),
                     "chars": len(doc.text), "tokens": num_tokens, "tokens_per_char": round(num_tokens / len(doc.text), 2),
                     "shared_prompt_tokens": plan.num_shared_tokens, "chunks": len(plan.chunks)})
    return pd.DataFrame(rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m labs.capstone_translation.tokens", description=__doc__)
    p.add_argument("inputs", nargs="+", type=Path)
    p.add_argument("-m", "--model", default="tiny-phrasebook")
    p.add_argument("--max-model-len", type=int, default=2048)
    p.add_argument("--chunk-tokens", type=int, help="default: the model's recommendation, else 1024")
    p.add_argument("--encoding")
    args = p.parse_args(argv)
    table = count_tokens(args.inputs, args.model, args.max_model_len, "auto" if args.chunk_tokens is None else (args.chunk_tokens or None), encoding=args.encoding)
    print(table.to_string(index=False))
    if "tokens" in table:
        print(f"total: {int(table['tokens'].fillna(0).sum())} tokens in {len(table)} files")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
