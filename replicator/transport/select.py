"""Which transport a link uses, and why (what `status` and the logs say).

`auto` prefers RDMA verbs when pyverbs imports and a device is present; otherwise TCP. The
RDMA transport itself is not part of this version, so with a device present `auto` still uses
TCP and says so, and `transport = "rdma"` is refused at startup with one clear line.
"""

from __future__ import annotations

from functools import lru_cache

from replicator.errors import ConfigError


@lru_cache(maxsize=1)
def rdma_devices() -> tuple[list[str], str]:
    """(device names, why there are none) from pyverbs, looked up once."""
    try:
        import pyverbs.device as device
    except ImportError as exc:
        return [], f"pyverbs does not import ({exc})"
    try:
        found = device.get_device_list()
    except Exception as exc:  # pyverbs raises PyverbsRDMAError when it finds no device
        return [], f"no RDMA device ({exc})"
    names = [d.name.decode() if isinstance(d.name, bytes) else str(d.name) for d in found]
    return names, "" if names else "no RDMA device"


def choose(configured: str) -> tuple[str, str]:
    """(transport name, reason) for a peer configured with `configured`."""
    if configured == "tcp":
        return "tcp", "configured"
    names, missing = rdma_devices()
    if configured == "rdma":
        detail = f"devices: {', '.join(names)}" if names else missing
        raise ConfigError(f"transport = \"rdma\" is not available in this version ({detail}); "
                          "use \"auto\" or \"tcp\"")
    if not names:
        return "tcp", f"auto: {missing}"
    return "tcp", f"auto: RDMA device {names[0]} found, but this version has no RDMA transport"
