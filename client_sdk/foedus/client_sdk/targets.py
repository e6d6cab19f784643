"""Channel targets that fail over between control-plane replicas.

A target is `HOST:PORT`, a gRPC URI (`dns:///foedus.example:50051`, `ipv4:10.0.0.1:50051,...`), or a
comma-separated list of `HOST:PORT` replicas (`cp-1:50051,cp-2:50051`). Every target gets:

- with several replicas, round-robin load balancing over all of them, so calls spread over the
  replicas and a replica that goes away (killed, restarting, partitioned) is skipped at once while
  gRPC reconnects to it in the background (one target keeps gRPC's pick_first, which also moves to
  another address of a name that resolves to several, and reconnects at the next call when the
  server comes back);
- retries of read-only calls that fail with UNAVAILABLE (a replica died with the call in flight):
  reads are safe to send again to another replica. Writes are not retried here: a write whose
  replica died may or may not have committed, and only the caller knows whether to send it again.

A list of host names is resolved once, when the channel is made (each name to all its addresses);
for a replica set that changes, give one DNS name that resolves to all replicas
(`dns:///foedus-headless:50051`, a Kubernetes headless Service), which gRPC re-resolves by itself.
With TLS, the certificate of every replica must name the first host of the list (or
TlsConfig.server_name), since that is the name checked; the same holds for the first address of an
`ipv4:`/`ipv6:` list.
"""

from __future__ import annotations

import ipaddress
import json
import socket
from collections.abc import Iterable
from typing import Any

from foedus.client_sdk.errors import InvalidArgument

READ_PREFIXES = ("Get", "List", "Query", "WhoAmI", "Watch", "Download", "Suggest", "Explain")
"""Methods whose names start so change nothing on the server: they are retried on UNAVAILABLE."""


def _read_methods() -> list[dict[str, str]]:
    import importlib

    names: list[dict[str, str]] = []
    areas = ("admin", "deployment", "federation", "monitoring", "performance", "registry", "rollout")
    modules = [importlib.import_module(f"foedus.v1.{area}_pb2") for area in areas]
    for module in modules:
        for service in module.DESCRIPTOR.services_by_name.values():
            names += [
                {"service": service.full_name, "method": method.name}
                for method in service.methods
                if method.name.startswith(READ_PREFIXES) and not method.client_streaming
            ]
    return names


def service_config(*, balanced: bool = True) -> str:
    """The channel's service config: retries of reads on UNAVAILABLE, and with `balanced`
    round-robin over the addresses (else gRPC's pick_first, which reconnects at the next call)."""
    config: dict[str, Any] = {
        "methodConfig": [
            {
                "name": _read_methods(),
                "retryPolicy": {
                    "maxAttempts": 5,
                    "initialBackoff": "0.05s",
                    "maxBackoff": "1s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            }
        ],
    }
    if balanced:
        config["loadBalancingConfig"] = [{"round_robin": {}}]
    return json.dumps(config)


def _split(hostport: str) -> tuple[str, int]:
    host, sep, port = hostport.strip().rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise InvalidArgument(f"a replica address is HOST:PORT, got {hostport.strip()!r}")
    return host.strip("[]"), int(port)


def _addresses(host: str, port: int) -> list[str]:
    try:
        ip = ipaddress.ip_address(host)
        return [f"[{ip}]:{port}" if ip.version == 6 else f"{ip}:{port}"]
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise InvalidArgument(f"cannot resolve replica {host}: {exc.strerror}") from exc
    found: list[str] = []
    for family, _, _, _, sockaddr in infos:
        address = f"[{sockaddr[0]}]:{port}" if family == socket.AF_INET6 else f"{sockaddr[0]}:{port}"
        if address not in found:
            found.append(address)
    return found


def resolve_target(target: str) -> tuple[str, list[tuple[str, Any]]]:
    """The gRPC target and channel options for `target` (see the module docstring)."""
    several = "," in target
    options: list[tuple[str, Any]] = [
        ("grpc.service_config", service_config(balanced=several)),
        ("grpc.enable_retries", 1),
        # A replica that comes back is used again within seconds (gRPC's default backoff grows to
        # two minutes).
        ("grpc.initial_reconnect_backoff_ms", 250),
        ("grpc.max_reconnect_backoff_ms", 4000),
    ]
    if several and target.startswith(("ipv4:", "ipv6:")):
        # gRPC's authority of an address list is the whole list, which no certificate names: the
        # first address is the name TLS checks and the :authority header, as for HOST:PORT lists.
        first = target.split(":", 1)[1].split(",", 1)[0].strip()
        options.append(("grpc.default_authority", first))
        return target, options
    if not several or "://" in target or target.startswith("unix:"):
        return target, options
    replicas = [_split(part) for part in target.split(",") if part.strip()]
    addresses = [a for host, port in replicas for a in _addresses(host, port)]
    v4 = [a for a in addresses if not a.startswith("[")]
    v6 = [a for a in addresses if a.startswith("[")]
    scheme, chosen = ("ipv4", v4) if v4 else ("ipv6", v6)
    first_host, first_port = replicas[0]
    # The name TLS checks and the :authority header: the first replica's, as the user wrote it.
    options.append(("grpc.default_authority", f"{first_host}:{first_port}"))
    return f"{scheme}:{','.join(_dedupe(chosen))}", options


def _dedupe(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(items))


def listen_on(server: Any, address: str, credentials: Any = None) -> int:
    """Binds a grpc or grpc.aio `server` to `address` (with TLS when `credentials` are given) and
    returns the port; OSError with a plain message when the address cannot be bound (in use, not an
    address of this host, malformed), where gRPC raises RuntimeError or returns 0."""
    try:
        port: int = (
            server.add_insecure_port(address)
            if credentials is None
            else server.add_secure_port(address, credentials)
        )
    except RuntimeError:
        port = 0
    if port == 0:
        raise OSError(f"cannot listen on {address}: the port is in use, or it is not an address of this host")
    return port
