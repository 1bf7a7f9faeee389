"""A from-scratch, readable LLM inference engine with vLLM's shape (work in progress)."""
