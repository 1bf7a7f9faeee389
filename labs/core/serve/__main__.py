"""`python -m labs.core.serve start|start-bg|restart|stop|status|check|logs`: the vLLM server manager's command line.

Options after `--` go to vLLM unchanged, e.g. `python -m labs.core.serve start-bg -- --max-num-seqs 8`.
Exit status: 0 success (check: the server is up); 1 check: the server is down, or a foreground
server failed; 2 a start or stop refused or failed, with the reason (and the log's last lines).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from dataclasses import asdict
from pathlib import Path

from labs.core.serve.config import DEFAULT_ENV_FILE, DEFAULT_LOG_DIR, url_for
from labs.core.serve.launch import LATEST_LOG_NAME, log_tail
from labs.core.serve.manager import process_lines, restart, start_background, start_foreground, status, stop
from labs.core.serve.records import read_record


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--log-dir", type=Path, default=DEFAULT_LOG_DIR, help="logs and pid file (default: logs/)")
    common.add_argument("--env-file", type=Path, default=DEFAULT_ENV_FILE,
                        help="read VLLM_API_KEY, VLLM_BASE_URL, VLLM_MODEL from here (default: .env)")
    starting = argparse.ArgumentParser(add_help=False)
    starting.add_argument("--model", help="path, hub id or name (default: VLLM_MODEL, else the workbook's choice)")
    starting.add_argument("--served-model-name", help="the name clients use (default: the model's name)")
    starting.add_argument("--host", help="address to bind (default 127.0.0.1; anything else is reachable by others)")
    starting.add_argument("--port", type=int, help="default: VLLM_BASE_URL's port, else 8000")
    starting.add_argument("--max-model-len", type=int, help="longest prompt + output (default 2048)")
    starting.add_argument("--name", help="tmux session name (default: vllm)")
    starting.add_argument("--timeout", type=float, default=600.0, help="seconds to wait until healthy (default 600)")
    starting.add_argument("--debug", action="store_true", default=None,
                          help="DEBUG logs from vLLM and transformers, and request logging (also: DEBUG=1)")
    starting.add_argument("--log-requests", action="store_true", help="log every request (--enable-log-requests)")
    starting.add_argument("--executor", choices=("uni", "mp"),
                          help="uni: the model runs in the engine core process; mp: in a worker process of its own "
                               "(default: uni on a CPU with TP=1, vLLM's choice on a GPU)")
    asking = argparse.ArgumentParser(add_help=False)
    asking.add_argument("--url", help="server URL (default: the recorded server, else VLLM_BASE_URL, else :8000)")
    asking.add_argument("--host", default="127.0.0.1")
    asking.add_argument("--port", type=int, help="shorthand for --url http://HOST:PORT")
    asking.add_argument("--json", action="store_true", help="print the status as JSON")

    parser = argparse.ArgumentParser(prog="python -m labs.core.serve", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("start", parents=[common, starting], help="run in this terminal (Ctrl-C stops)")
    start_bg = sub.add_parser("start-bg", parents=[common, starting], help="run in tmux, wait until healthy")
    start_bg.add_argument("--no-tmux", action="store_true", help="a detached process group even if tmux exists")
    restart_parser = sub.add_parser("restart", parents=[common, starting],
                                    help="stop the recorded server (or clean its stale pid file), start it again in the "
                                         "background: same model, port and name unless given")
    restart_parser.add_argument("--grace", type=float, default=20.0, help="seconds from SIGTERM to SIGKILL")
    stop_parser = sub.add_parser("stop", parents=[common], help="stop the recorded server")
    stop_parser.add_argument("--port", type=int, help="refuse unless the recorded server uses this port")
    stop_parser.add_argument("--grace", type=float, default=20.0, help="seconds from SIGTERM to SIGKILL")
    sub.add_parser("status", parents=[common, asking], help="up/down, served model, processes (exit 0)")
    sub.add_parser("check", parents=[common, asking], help="up/down report; exit status 1 when down")
    logs = sub.add_parser("logs", parents=[common], help="print (or follow) the latest log")
    logs.add_argument("-n", "--lines", type=int, default=40)
    logs.add_argument("-f", "--follow", action="store_true")
    return parser


def _show_logs(log_dir: Path, num_lines: int, follow: bool) -> int:
    record = read_record(log_dir)
    path = Path(record.log_path) if record else log_dir / LATEST_LOG_NAME
    if not path.exists():
        print(f"No log at {path} yet: start a server first (make vllm-start-bg).", file=sys.stderr)
        return 1
    tail = shutil.which("tail")
    if follow and tail:  # -F: keep following across a restart that re-points latest.log
        os.execv(tail, [tail, "-n", str(num_lines), "-F", str(path)])
    print(log_tail(path, num_lines))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    vllm_args = argv[argv.index("--") + 1:] if "--" in argv else []
    args = _parser().parse_args(argv[:argv.index("--")] if "--" in argv else argv)

    if args.command in ("start", "start-bg", "restart"):
        from labs.core.serve.config import build_config

        previous = read_record(args.log_dir) if args.command == "restart" else None  # what to start again
        config = build_config(args.model or (previous.model if previous else None),
                              served_model_name=args.served_model_name or (previous.served_model_name if previous else None),
                              host=args.host or (previous.host if previous else None),
                              port=args.port or (previous.port if previous else None), max_model_len=args.max_model_len,
                              log_dir=args.log_dir, session_name=args.name, env_file=args.env_file, debug=args.debug,
                              log_requests=args.log_requests, extra_args=tuple(vllm_args), executor=args.executor)
        if args.command == "start":
            return start_foreground(config, timeout_s=args.timeout)
        if args.command == "restart":
            restart(config, grace_s=args.grace, timeout_s=args.timeout)
            return 0
        start_background(config, timeout_s=args.timeout, use_tmux=False if args.no_tmux else None)
        return 0
    if args.command == "stop":
        stop(log_dir=args.log_dir, port=args.port, grace_s=args.grace)
        return 0
    if args.command == "logs":
        return _show_logs(args.log_dir, args.lines, args.follow)

    url = args.url or (url_for(args.host, args.port) if args.port else None)
    result = status(url, log_dir=args.log_dir, env_file=args.env_file)
    if args.json:
        print(json.dumps({**asdict(result), "up": result.up}, indent=2))
    else:
        print(result.describe(args.log_dir))
        if args.command == "status" and result.record and result.record_alive:
            print("  processes:\n" + "\n".join(f"    {line}" for line in process_lines(result.record)))
    return 0 if result.up or args.command == "status" else 1


if __name__ == "__main__":
    from labs.core.errors import run_main

    sys.exit(run_main(main))
