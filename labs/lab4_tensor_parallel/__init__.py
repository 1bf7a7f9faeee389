"""Lab 4: tensor parallelism, from scratch (Megatron-style layers over torch.distributed) and in vLLM.

    layers.py     column-/row-parallel linear, vocab-parallel embedding, a TP Qwen2 built per rank
    comm.py       the counted, timed all-reduce; backend and device per rank from the hardware
    launcher.py   run_ranks: one real process per rank (spawn: works from Jupyter too)
    checks.py     equal to one process (transformers' Qwen2), two reduces a block, compute vs comm time
    vllm_tp.py    real vLLM with tensor_parallel_size=2: same greedy tokens, per-rank weights and memory
    vllm_worker_debug.py  a vLLM plugin: a debugpy listener in each of vLLM's own TP workers
    debug_ports.py  each rank's debugger port, and who holds it when it is taken
"""
