"""Run vLLM as an OpenAI-compatible server: start it, see it load, know whether it is up, stop it.

Command line (`make vllm-start-bg`, `make vllm-status`, ... wrap it):

    python -m labs.serve start       # foreground, loading bars live, Ctrl-C stops
    python -m labs.serve start-bg    # in tmux (`tmux attach -t vllm`), waits until healthy
    python -m labs.serve check       # up/down from GET /v1/models; exit status 1 when down
    python -m labs.serve status      # the same plus the server's processes
    python -m labs.serve logs -f     # follow logs/latest.log
    python -m labs.serve stop        # SIGTERM the process group, SIGKILL after a grace period

From Python (a notebook):

    from labs import serve
    serve.start_background(serve.build_config(port=8001))
    serve.status("http://127.0.0.1:8001").served_model_names
    serve.stop()

Modules: `config` (what to run, from options, environment, `.env` and `labs.engine.plan_run`),
`health` (HTTP checks, ports), `records` (the pid file, processes), `manager` (start/stop/status).
"""

from labs.serve.config import ServerConfig, build_config
from labs.serve.health import ServedModel, ServerNotReadyError, find_free_port, wait_until_healthy
from labs.serve.manager import ServeError, ServerStatus, start_background, start_foreground, status, stop
from labs.serve.records import ServerRecord, read_record

__all__ = [
    "ServeError", "ServedModel", "ServerConfig", "ServerNotReadyError", "ServerRecord", "ServerStatus",
    "build_config", "find_free_port", "read_record", "start_background", "start_foreground", "status", "stop",
    "wait_until_healthy",
]
