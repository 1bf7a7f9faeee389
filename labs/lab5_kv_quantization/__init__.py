"""Lab 5: KV-cache quantization (fp8 e4m3/e5m2, int8 per-token/per-head) on the mini engine.

Reading order: quantize.py (schemes, scales, bytes) -> calibrate.py (static scales from
calibration prompts) -> cache.py (the quantized paged KV cache inside the mini engine) ->
measure.py (bytes, errors, top-1 agreement, phrasebook exact match) -> vllm_fp8.py (the real
engine with kv_cache_dtype="fp8") -> vllm_scales.py (calibrated k_scale/v_scale handed to vLLM
through a checkpoint's kv_cache_scheme) -> predictions.py (the notebook's predictions, fp8 bytes
per token and capacity, checked against those engines). exercise.py holds your stubs (quantize, dequantize, KV
bytes per token, the worst layer), solution.py the reference.
"""
