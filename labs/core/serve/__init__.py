"""Run vLLM as an OpenAI-compatible server: start it, see it load, know whether it is up, stop it.

Command line (`make vllm-start-bg`, `make vllm-status`, ... wrap it):

    python -m labs.core.serve start       # foreground, loading bars live, Ctrl-C stops
    python -m labs.core.serve start-bg    # in tmux (`tmux attach -t vllm`), waits until healthy
    python -m labs.core.serve check       # up/down from GET /v1/models; exit status 1 when down
    python -m labs.core.serve status      # the same plus the server's processes
    python -m labs.core.serve logs -f     # follow logs/latest.log
    python -m labs.core.serve stop        # SIGTERM the process group, SIGKILL after a grace period

From Python (a notebook): a server owned by the kernel, stopped when it ends, reused on rerun:

    from labs.core import serve
    server = serve.owned_server("vllm-lab6", log_dir=Path("runs/profiles/server-logs"))
    serve.status(server.url).served_model_names
    server.stop()

    with serve.owned_server("vllm-test", log_dir=tmp / "logs") as server:   # a script or a test
        ...                                                                  # stopped when the block ends

(`owned_server` is the one way notebooks and tests start a server for their own use;
`serve.start_background(serve.build_config(port=8001))` starts one that outlives its starter,
as `start-bg` does; `serve.stop()` stops it.)

Modules: `config` (what to run, from options, environment, `.env` and `labs.core.engine.plan_run`),
`health` (HTTP checks, ports), `records` (the pid file, processes), `launch` and `pane` (how it
is started, with exactly its environment), `manager` (start/stop/status), `owned`, `owners` and
`watchdog` (servers owned by a process).
"""

from labs.core.serve.config import ServerConfig, build_config
from labs.core.serve.health import ServedModel, ServerNotReadyError, find_free_port, wait_until_healthy
from labs.core.serve.manager import ServeError, ServerStatus, restart, start_background, start_foreground, status, stop
from labs.core.serve.owned import OwnedServer, owned_server
from labs.core.serve.records import ServerRecord, read_record

__all__ = [
    "OwnedServer", "ServeError", "ServedModel", "ServerConfig", "ServerNotReadyError", "ServerRecord", "ServerStatus",
    "build_config", "find_free_port", "owned_server", "read_record", "restart", "start_background", "start_foreground",
    "status", "stop", "wait_until_healthy",
]
