"""A from-scratch, readable LLM inference engine with vLLM's shape: see labs/core/mini/README.md."""
