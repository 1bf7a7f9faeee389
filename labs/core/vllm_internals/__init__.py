"""The one door to vLLM's internals (being split into modules: see live_engine for now)."""

from labs.core.vllm_internals.live_engine import *  # noqa: F401,F403
from labs.core.vllm_internals.live_engine import PINNED_VLLM_VERSION, VllmVersionError, check_vllm_version  # noqa: F401
