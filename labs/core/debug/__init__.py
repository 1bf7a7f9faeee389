"""Debug-safety: scripts that never hang under a debugger, and listeners in vLLM's own processes."""
