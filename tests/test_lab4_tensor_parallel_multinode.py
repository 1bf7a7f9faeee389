"""Lab 4 beyond one machine: the checked list (labs/lab4_tensor_parallel/multinode.py) says the truth.

Each item is checked against this machine's real interfaces and vLLM's own platform: an address
that is not this machine's, or an interface it lacks, must be called missing; vLLM's Ray executor
verdict must be vLLM's. The Ray rehearsal itself needs `pip install ray` (not a workbook
dependency); without it the command must say so.
"""

from __future__ import annotations

import psutil
import pytest

from labs.core import vllm_internals as vi
from labs.lab4_tensor_parallel import multinode


def by_name(env: dict[str, str]) -> dict[str, multinode.CheckItem]:
    return {item.name: item for item in multinode.checklist(env)}


def test_an_address_or_interface_of_this_machine_is_ok_and_any_other_is_missing() -> None:
    interface = next(name for name, addrs in psutil.net_if_addrs().items()
                     if any(a.address == "127.0.0.1" for a in addrs))
    good = by_name({"VLLM_HOST_IP": "127.0.0.1", "GLOO_SOCKET_IFNAME": interface})
    assert good["VLLM_HOST_IP"].status == "ok" and interface in good["VLLM_HOST_IP"].detail
    assert good["GLOO_SOCKET_IFNAME"].status == "ok"
    bad = by_name({"VLLM_HOST_IP": "203.0.113.7", "GLOO_SOCKET_IFNAME": "nosuch0"})
    assert bad["VLLM_HOST_IP"].status == "missing" and "203.0.113.7 is not an address of this machine" in \
        bad["VLLM_HOST_IP"].detail and "127.0.0.1" in bad["VLLM_HOST_IP"].detail
    assert bad["GLOO_SOCKET_IFNAME"].status == "missing" and "no interface nosuch0" in bad["GLOO_SOCKET_IFNAME"].detail
    unset = by_name({})
    assert unset["VLLM_HOST_IP"].status == "missing" and vi.get_host_ip() in unset["VLLM_HOST_IP"].detail


def test_the_ray_executor_verdict_is_vllms_own() -> None:
    from vllm.platforms import current_platform

    item = by_name({})["Ray executor"]
    assert (item.status == "ok") == bool(current_platform.ray_device_key)
    if current_platform.device_name == "cpu":
        assert "current platform cpu does not support ray" in item.detail and "--nnodes" in item.detail


def test_the_list_prints_a_mark_per_item_and_the_rehearsal_explains_a_missing_ray(capsys: pytest.CaptureFixture[str]) -> None:
    assert multinode.main([]) == 0
    out = capsys.readouterr().out
    assert sum(line[:1] in "✓✗–" for line in out.splitlines() if not line.startswith(" ")) == len(multinode.checklist())
    try:
        import ray  # noqa: F401
    except ImportError:
        assert multinode.ray_rehearsal().startswith("not run: ray is not installed")
