"""Lab 4: tensor parallelism, from scratch (Megatron-style layers over torch.distributed) and in vLLM.

    layers.py     column-/row-parallel linear, vocab-parallel embedding, a TP Qwen2 built per rank
    comm.py       the counted, timed all-reduce; backend and device per rank from the hardware;
                  a debugpy listener per rank with WORKBOOK_DEBUG_RANKS=1
    launcher.py   run_ranks: one real process per rank (spawn: works from Jupyter too)
    checks.py     equal to one process (transformers' Qwen2), two reduces a block, compute vs comm time
    vllm_tp.py    real vLLM with tensor_parallel_size=2: same greedy tokens, per-rank weights and memory
    predictions.py  the notebook's predictions (all-reduces per forward, parameters per rank) vs the live run
    exercise.py   your stubs (shards, the sharded MLP's all-reduce, KV heads and parameters per rank);
                  solution.py the reference

The debugger plumbing is shared core: labs/core/debug/listener.py (a listener on the rank's port),
labs/core/debug/ports.py (each rank's port, and who holds it when it is taken) and
labs/core/debug/vllm_workers.py (the vLLM plugin that opens one in each of vLLM's own TP workers).
"""
