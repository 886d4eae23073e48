"""The Ray connection check, run in a child process (`python -m engine.run.ray_probe ADDRESS
TIMEOUT_MS`) before the driver touches the output directory: one call to the cluster's GCS for its
nodes, under a deadline, answered as one JSON line (`Probe`).

A child because Ray's GCS client logs its retries from C++ straight to file descriptor 2 and
`ray.init` on an address where something else listens never returns; the parent reads one line
and kills the child at its own deadline, so a wrong address costs seconds and prints nothing.
"""

from __future__ import annotations

import sys

import msgspec


class ProbeNode(msgspec.Struct, frozen=True):
    id: str
    ip: str


class Probe(msgspec.Struct, frozen=True, kw_only=True):
    """What the GCS said. `error`: "auth" (token authentication refused us), "timeout" (nothing
    that speaks Ray's protocol answered), "other"; `message` its first line."""

    address: str = ""  # the GCS address asked ("auto" resolved)
    error: str | None = None
    message: str = ""
    version: str = ""
    alive: list[ProbeNode] = []
    dead: int = 0


def _ask(address: str, timeout_ms: int) -> Probe:
    import ray
    from ray._private import services
    from ray._raylet import InnerGcsClient  # type: ignore[attr-defined]  # Cython module, no stub entry
    from ray.core.generated import gcs_pb2

    if address == "auto":
        # ray.init("auto") turns token authentication on when this machine holds a token; so must we.
        from ray._private.authentication.authentication_token_setup import (
            maybe_enable_token_auth_if_token_available,
        )

        maybe_enable_token_auth_if_token_available(warn_if_disabled=False)
        address = services.canonicalize_bootstrap_address_or_die("auto")
    client = InnerGcsClient.standalone(address, None, timeout_ms)
    nodes = client.get_all_node_info(timeout=timeout_ms / 1000)
    alive = [ProbeNode(n.node_id.hex(), n.node_manager_address) for n in nodes.values()
             if n.state == gcs_pb2.GcsNodeInfo.GcsNodeState.ALIVE]  # type: ignore[attr-defined]  # protobuf, no stub
    return Probe(address=address, version=ray.__version__, alive=alive, dead=len(nodes) - len(alive))


def probe(address: str, timeout_ms: int) -> Probe:
    try:
        return _ask(address, timeout_ms)
    except Exception as exc:  # the parent turns every kind into one line
        text = str(exc).strip()
        first = text.splitlines()[0] if text else type(exc).__name__
        kind = type(exc).__name__
        if kind == "AuthenticationError" or "InvalidAuthToken" in text or "Unauthenticated" in text:
            return Probe(address=address, error="auth", message=first)
        if "Timed out" in text or kind in ("GetTimeoutError", "TimeoutError"):
            return Probe(address=address, error="timeout", message=first)
        return Probe(address=address, error="other", message=f"{kind}: {first}")


if __name__ == "__main__":
    sys.stdout.write(msgspec.json.encode(probe(sys.argv[1], int(sys.argv[2]))).decode() + "\n")
