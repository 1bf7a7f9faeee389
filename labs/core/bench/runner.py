"""Run a serving benchmark: send requests on an arrival schedule, collect timings, summarize.

The schedule is vLLM's (`get_request` in `vllm/benchmarks/serve.py`): with `request_rate=inf`
every request is sent at once; otherwise the gaps between sends are drawn from a gamma
distribution with shape `burstiness` and mean 1/request_rate (burstiness 1 = Poisson arrivals,
< 1 burstier, > 1 more even, inf = evenly spaced), and rescaled so the last one is sent at
exactly num_prompts / request_rate. `max_concurrency` caps requests in flight (a semaphore):
a request that arrives while the cap is reached waits in the client (`client_queue_time`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import gc
import json
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pandas as pd
import requests
from tqdm.auto import tqdm

from labs.core.bench.client import TIMEOUT, Endpoint, RequestInput, RequestOutput, send_request
from labs.core.bench.datasets import SampleRequest, file_requests, random_requests
from labs.core.bench.metrics import output_lens_of, parse_goodput, queue_stats, summarize
from labs.core.serve.config import API_KEY_ENV, default_url, env_setting, server_root_url


@dataclass
class BenchmarkConfig:
    """One benchmark run, with `vllm bench serve`'s option names where it has one.

    Attributes:
        base_url: the server's root (or /v1) URL; default `VLLM_BASE_URL`, else 127.0.0.1:8000.
        endpoint: "completions" or "chat".
        model: served model name; default `VLLM_MODEL` if the server serves it, else its first model.
        api_key: default `VLLM_API_KEY` (environment or .env).
        num_prompts: requests to send.
        request_rate: requests per second; inf sends all at once.
        burstiness: gamma shape of the gaps (1 = Poisson).
        max_concurrency: most requests in flight; None = no cap.
        dataset: "random", "fixed" or "file".
        dataset_path: the prompts file for dataset="file".
        input_len / output_len / range_ratio: lengths in tokens (see `labs.core.bench.datasets`).
        ignore_eos: generate exactly output_len tokens per request.
        percentiles: which percentiles the summary reports.
        goodput: SLOs like ["ttft:500", "tpot:50"] (ms).
        seed: prompts and arrival gaps are reproducible.
        num_warmups: requests sent (and discarded) before the run, like vLLM's initial test request.
        disable_tqdm: no progress bar.
    """

    base_url: str | None = None
    endpoint: Endpoint = "completions"
    model: str | None = None
    api_key: str | None = field(default=None, repr=False)
    num_prompts: int = 20
    request_rate: float = math.inf
    burstiness: float = 1.0
    max_concurrency: int | None = None
    dataset: str = "random"
    dataset_path: str | None = None
    input_len: int = 32
    output_len: int = 16
    range_ratio: float = 0.0
    ignore_eos: bool = True
    percentiles: tuple[float, ...] = (50, 90, 99)
    goodput: tuple[str, ...] = ()
    seed: int = 0
    num_warmups: int = 1
    disable_tqdm: bool = False


@dataclass
class BenchmarkResult:
    """A finished run: the inputs, every request's timings, and the summary.

    Attributes:
        config: what was run (model and base_url resolved).
        requests: the prompts sent, in order.
        outputs: one per request, same order.
        summary: vLLM's summary keys (see `labs.core.bench.metrics.summarize`).
    """

    config: BenchmarkConfig
    requests: list[SampleRequest]
    outputs: list[RequestOutput]
    summary: dict[str, Any]

    @property
    def df(self) -> pd.DataFrame:
        """One row per request: times in ms, `itl_ms` a list per request, start_s relative to the first send."""
        output_lens = output_lens_of(self.outputs)
        t0 = min((o.start_time for o in self.outputs), default=0.0)
        rows = [{"request_id": i, "success": o.success, "prompt_len": o.prompt_len, "output_len": n,
                 **o.latency_columns(n), "start_s": o.start_time - t0,
                 "client_queue_time_ms": o.client_queue_time * 1000, "error": o.error}
                for i, (o, n) in enumerate(zip(self.outputs, output_lens))]
        return pd.DataFrame(rows)

    def to_json(self, detailed: bool = True) -> dict[str, Any]:
        """The result as `vllm bench serve --save-result [--save-detailed]` writes it (same keys).

        Args:
            detailed: keep the per-request lists (ttfts, itls, ...), like `--save-detailed`.
        """
        c = self.config
        backend = "openai-chat" if c.endpoint == "chat" else "openai"  # vLLM's names for these endpoints
        result: dict[str, Any] = {
            "date": datetime.now().strftime("%Y%m%d-%H%M%S"), "endpoint_type": backend, "backend": backend,
            "label": None, "model_id": c.model, "tokenizer_id": c.model, "num_prompts": c.num_prompts,
            "request_rate": c.request_rate if c.request_rate < math.inf else "inf", "burstiness": c.burstiness,
            "max_concurrency": c.max_concurrency, **self.summary, "rtfx": 0.0,
            "input_lens": [o.prompt_len for o in self.outputs], "output_lens": output_lens_of(self.outputs),
            "ttfts": [o.ttft for o in self.outputs], "itls": [o.itl for o in self.outputs],
            "latencies": [o.latency for o in self.outputs], "start_times": [o.start_time for o in self.outputs],
            "queue_times": [o.client_queue_time for o in self.outputs],
            "generated_texts": [o.generated_text for o in self.outputs], "errors": [o.error for o in self.outputs],
        }
        if not detailed:
            for key in ("input_lens", "output_lens", "start_times", "ttfts", "itls", "generated_texts", "errors"):
                del result[key]
        return result

    def save(self, path: str | Path, detailed: bool = True) -> Path:
        """Write `to_json()` to `path`."""
        Path(path).write_text(json.dumps(self.to_json(detailed)), encoding="utf-8")
        return Path(path)


def arrival_offsets(num_requests: int, request_rate: float, burstiness: float = 1.0, seed: int = 0) -> np.ndarray:
    """When each request is sent, in seconds after the first, as vLLM's `get_request` schedules it.

    Returns:
        (num_requests,) cumulative send times; all zeros for request_rate=inf.
    """
    if burstiness <= 0:
        raise ValueError(f"burstiness must be positive, not {burstiness}")
    if math.isinf(request_rate):
        return np.zeros(num_requests)
    if math.isinf(burstiness):  # no randomness left: evenly spaced
        gaps = np.full(num_requests, 1.0 / request_rate)
    else:  # gamma(shape=k, scale=1/(rate*k)) has mean 1/rate; k=1 is exponential (Poisson arrivals)
        gaps = np.random.default_rng(seed).gamma(shape=burstiness, scale=1.0 / (request_rate * burstiness),
                                                 size=num_requests)
    offsets = np.cumsum(gaps)
    # vLLM rescales so the run always spans num_requests / rate: less seed-to-seed throughput noise.
    return offsets * (num_requests / request_rate) / offsets[-1]


def resolve_server(config: BenchmarkConfig) -> BenchmarkConfig:
    """Fill in base_url, api_key and model from the environment, `.env` and `GET /v1/models`."""
    base_url = server_root_url(config.base_url) if config.base_url else default_url()
    api_key = config.api_key or env_setting(API_KEY_ENV)
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    model = config.model
    if model is None:
        reply = requests.get(f"{base_url}/v1/models", headers=headers, timeout=10)
        reply.raise_for_status()  # 401: VLLM_API_KEY missing or not the server's
        served = [m["id"] for m in reply.json()["data"]]
        wanted = env_setting("VLLM_MODEL")
        model = wanted if wanted in served else served[0]
    return BenchmarkConfig(**{**asdict(config), "base_url": base_url, "api_key": api_key, "model": model,
                              "percentiles": tuple(config.percentiles), "goodput": tuple(config.goodput)})


def make_requests(config: BenchmarkConfig) -> list[SampleRequest]:
    """The prompts `config` asks for (config must be resolved: the server decodes random ids)."""
    if config.dataset == "file":
        if not config.dataset_path:
            raise ValueError("dataset='file' needs dataset_path (one prompt per line, or JSONL with 'prompt')")
        return file_requests(config.dataset_path, config.num_prompts, config.output_len)
    if config.dataset not in ("random", "fixed"):
        raise ValueError(f"dataset must be random, fixed or file, not {config.dataset!r}")
    range_ratio = 0.0 if config.dataset == "fixed" else config.range_ratio
    return random_requests(config.num_prompts, config.input_len, config.output_len, range_ratio=range_ratio,
                           base_url=config.base_url, model=config.model, api_key=config.api_key, seed=config.seed)


@contextlib.contextmanager
def frozen_gc() -> Iterator[None]:
    """Keep Python's garbage collector off the objects that exist before the run, as vLLM's benchmark does.

    Why: in a process holding torch, vLLM or a notebook's data, a full collection walks millions
    of objects and pauses the event loop for tens of milliseconds; tokens pile up meanwhile and
    arrive "in a burst", which shows up as a long TTFT and ITLs of 0. `gc.freeze()` moves all
    current objects out of the collector's sight; `gc.unfreeze()` gives them back afterwards
    (vLLM's one-shot process never unfreezes; a notebook keeps running).
    """
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


async def benchmark_async(config: BenchmarkConfig,
                          sample_requests: list[SampleRequest] | None = None) -> BenchmarkResult:
    """Run the benchmark in the current event loop (see `run_benchmark` for the arguments)."""
    config = resolve_server(config)
    sample_requests = sample_requests if sample_requests is not None else make_requests(config)
    inputs = [RequestInput(r.prompt, r.prompt_len, r.expected_output_len, config.model, config.ignore_eos,
                           request_id=f"bench-{config.seed}-{i}") for i, r in enumerate(sample_requests)]
    offsets = arrival_offsets(len(inputs), config.request_rate, config.burstiness, config.seed)
    with frozen_gc():
        outputs, duration_s = await _send_all(config, inputs, offsets)
    slos = parse_goodput(config.goodput) if config.goodput else None
    summary = summarize(outputs, duration_s, percentiles=config.percentiles, goodput_slos_ms=slos)
    if config.max_concurrency is not None:
        summary |= queue_stats(outputs, config.percentiles, not math.isinf(config.request_rate))
    return BenchmarkResult(config, sample_requests, outputs, summary)


async def _send_all(config: BenchmarkConfig, inputs: list[RequestInput],
                    offsets: np.ndarray) -> tuple[list[RequestOutput], float]:
    """Warm up, then send `inputs` at `offsets` (s); returns the outputs and the timed duration."""
    # vLLM's connector settings: as many connections as requests allowed in flight, kept alive.
    limit = config.max_concurrency or 0
    connector = aiohttp.TCPConnector(limit=limit, limit_per_host=limit, ttl_dns_cache=300, keepalive_timeout=60,
                                     enable_cleanup_closed=True, force_close=False)
    async with aiohttp.ClientSession(timeout=TIMEOUT, connector=connector, trust_env=True) as session:
        for i in range(config.num_warmups):  # not timed: first-request costs (connections, lazy init)
            warm = await send_request(session, config.base_url, config.endpoint,
                                      RequestInput(inputs[0].prompt, inputs[0].prompt_len, inputs[0].output_len,
                                                   config.model, config.ignore_eos, f"warmup-{i}"), config.api_key)
            if not warm.success:
                raise RuntimeError(f"the warm-up request failed, so the run would too: {warm.error}")
        semaphore = asyncio.Semaphore(config.max_concurrency) if config.max_concurrency else None
        pbar = tqdm(total=len(inputs), disable=config.disable_tqdm, desc=f"{config.endpoint} x{len(inputs)}")

        async def one(request: RequestInput) -> RequestOutput:
            arrived = time.perf_counter()
            if semaphore is None:
                out = await send_request(session, config.base_url, config.endpoint, request, config.api_key)
            else:
                async with semaphore:
                    out = await send_request(session, config.base_url, config.endpoint, request, config.api_key)
            out.client_queue_time = out.start_time - arrived
            pbar.update(1)
            return out

        start = time.perf_counter()
        tasks = []
        for request, offset in zip(inputs, offsets):
            if (wait_s := start + offset - time.perf_counter()) > 0:
                await asyncio.sleep(wait_s)
            tasks.append(asyncio.create_task(one(request)))
        outputs = list(await asyncio.gather(*tasks))
        duration_s = time.perf_counter() - start
        pbar.close()
    return outputs, duration_s


def run_benchmark(config: BenchmarkConfig | None = None, sample_requests: list[SampleRequest] | None = None,
                  **options: Any) -> BenchmarkResult:
    """Run a benchmark and wait for it: usable from scripts and from notebooks alike.

    Args:
        config: the run; or leave it None and pass `BenchmarkConfig` fields as keywords
            (`run_benchmark(num_prompts=8, request_rate=4, endpoint="chat")`).
        sample_requests: prompts to send instead of generating them from the config.
        **options: `BenchmarkConfig` fields, overriding `config`'s.

    Returns:
        The result: `.df` (one row per request), `.summary`, `.to_json()`, `.save(path)`.
    """
    config = BenchmarkConfig(**{**(asdict(config) if config else {}), **options})
    try:
        asyncio.get_running_loop()
    except RuntimeError:  # a script: no loop yet
        return asyncio.run(benchmark_async(config, sample_requests))
    # A notebook cell already runs in a loop, which cannot be re-entered: use a thread with its own.
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, benchmark_async(config, sample_requests)).result()


def sweep_request_rates(request_rates: Sequence[float], config: BenchmarkConfig | None = None,
                        **options: Any) -> pd.DataFrame:
    """One benchmark per request rate, on the same prompts: the data for latency-vs-load plots.

    Returns:
        One row per rate: `request_rate` plus every summary key.
    """
    rows = []
    for rate in request_rates:
        result = run_benchmark(config, request_rate=rate, **options)
        rows.append({"request_rate": rate, **result.summary})
    return pd.DataFrame(rows)
