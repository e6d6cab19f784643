"""Fuzzing of every RPC the control plane serves, shared by the CI test and scripts/fuzz_rpcs.py.

`request_messages(descriptor)` is a hypothesis strategy for any protobuf message, built from its
descriptor: scalars with edge values, open enums with unknown numbers, repeated fields, maps,
nested messages to a bounded depth and at most one field of each oneof. `rpc_inputs(rpc)` adds
the wire-level cases: arbitrary bytes, and valid messages truncated or garbled, sent as the
serialized request through a generic channel, so that the server's own deserializer sees them.

`Fuzzer` calls an RPC with one input and the key a caller of that RPC would hold (an owner, an
agent or the platform admin), or for a slice of inputs no key, a garbage key or the wrong role.
A violation is a status the server must never give for bad input (INTERNAL, UNKNOWN, DATA_LOSS),
a unary call that hangs, or a server that stops answering.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import sys
import time
import zlib
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import message_factory, text_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st

from foedus.server.interceptors import SERVICE_MODULES, access_policies
from foedus.server.store.records import Role
from foedus.v1 import admin_pb2, admin_pb2_grpc, agent_pb2, agent_pb2_grpc, registry_pb2

BAD_CODES = frozenset({grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.DATA_LOSS})
UNARY_TIMEOUT_S = 30.0
STREAM_TIMEOUT_S = 2.0
"""Server-streaming watches wait for changes: a deadline is how such a call normally ends."""
MAX_DEPTH = 3
KEY_CASES = ("valid", "valid", "valid", "valid", "valid", "valid", "valid", "none", "garbage", "other")


# --- the RPCs -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Rpc:
    path: str
    """`/package.Service/Method`."""
    method: MethodDescriptor
    roles: frozenset[Role] | None
    """Roles allowed to call it; None for the open services (health, reflection)."""

    @property
    def request(self) -> Descriptor:
        return self.method.input_type

    @property
    def client_streaming(self) -> bool:
        return bool(self.method.client_streaming)

    @property
    def server_streaming(self) -> bool:
        return bool(self.method.server_streaming)

    @property
    def name(self) -> str:
        return self.path.lstrip("/")


def server_rpcs() -> list[Rpc]:
    """Every RPC the control plane registers: the Foedus services, health and reflection."""
    policies = access_policies()
    services = [s for m in SERVICE_MODULES for s in m.DESCRIPTOR.services_by_name.values()]
    services += [
        health_pb2.DESCRIPTOR.services_by_name["Health"],
        reflection_pb2.DESCRIPTOR.services_by_name["ServerReflection"],
    ]
    rpcs = []
    for service in services:
        for method in service.methods:
            path = f"/{service.full_name}/{method.name}"
            policy = policies.get(path)
            rpcs.append(Rpc(path, method, policy.roles if policy is not None else None))
    return rpcs


# --- strategies ---------------------------------------------------------------------------------
EDGE_STRINGS = (
    "",
    " ",
    "a",
    "A",
    "-",
    "0",
    "-1",
    "1e309",
    "NaN",
    "null",
    "\x00",
    "a\x00b",
    "é",
    "🙂",
    "\u202e",
    "../../etc/passwd",
    "%s%n",
    "' OR 1=1 --",
    "a" * 63,
    "a" * 64,
    "a" * 129,
    "x" * 10_001,
    "ROLE_ADMIN",
    "*",
)


@dataclass
class Samples:
    """Names of real objects, mixed into the strings so that fuzzed requests hit existing state."""

    names: list[str] = field(default_factory=lambda: ["fuzz-acme", "iris", "prod", "web"])
    numbers: list[int] = field(default_factory=lambda: [1, 2, 3])


def _ints(bits: int, signed: bool) -> st.SearchStrategy[int]:
    lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    edges = sorted({v for v in (lo, hi, 0, 1, 2, -1, 100, 1000, 10**6, hi - 1) if lo <= v <= hi})
    small = st.integers(max(lo, -5), 10)
    return st.one_of(st.sampled_from(edges), small, small, st.integers(lo, hi))


def _floats(width: int) -> st.SearchStrategy[float]:
    edges = [0.0, -0.0, 1.0, -1.0, 0.5, math.nan, math.inf, -math.inf, 1e300, -1e300, 5e-324]
    if width == 32:
        edges = [e for e in edges if not math.isfinite(e) or abs(e) < 3e38]
        edges = [e for e in edges if e == 0 or not math.isfinite(e) or abs(e) > 1e-38]
    return st.one_of(st.sampled_from(edges), st.floats(width=width))


def _strings(samples: Samples) -> st.SearchStrategy[str]:
    names = st.sampled_from(samples.names)
    # Real names half of the time, so that requests often get past validation to the objects.
    return st.one_of(
        names,
        names,
        names,
        st.sampled_from(EDGE_STRINGS),
        st.from_regex(r"[a-z][a-z0-9.-]{0,20}", fullmatch=True),
        st.text(max_size=40),
    )


def _scalar(f: FieldDescriptor, samples: Samples) -> st.SearchStrategy[Any]:
    t = f.type
    if t in (FieldDescriptor.TYPE_INT32, FieldDescriptor.TYPE_SINT32, FieldDescriptor.TYPE_SFIXED32):
        return st.one_of(st.sampled_from(samples.numbers), _ints(32, True))
    if t in (FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_SINT64, FieldDescriptor.TYPE_SFIXED64):
        return st.one_of(st.sampled_from(samples.numbers), _ints(64, True))
    if t in (FieldDescriptor.TYPE_UINT32, FieldDescriptor.TYPE_FIXED32):
        return _ints(32, False)
    if t in (FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_FIXED64):
        return _ints(64, False)
    if t == FieldDescriptor.TYPE_DOUBLE:
        return _floats(64)
    if t == FieldDescriptor.TYPE_FLOAT:
        return _floats(32)
    if t == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if t == FieldDescriptor.TYPE_STRING:
        return _strings(samples)
    if t == FieldDescriptor.TYPE_BYTES:
        return st.one_of(st.binary(max_size=64), st.sampled_from([b"", b"\x00" * 1024]))
    if t == FieldDescriptor.TYPE_ENUM:
        numbers = [v.number for v in f.enum_type.values]
        return st.one_of(st.sampled_from(numbers), _ints(32, True))
    raise TypeError(f"no strategy for field {f.full_name} of type {t}")


def _message_class(descriptor: Descriptor) -> type[Message]:
    return message_factory.GetMessageClass(descriptor)


def _value(f: FieldDescriptor, samples: Samples, depth: int) -> st.SearchStrategy[Any]:
    if f.type == FieldDescriptor.TYPE_MESSAGE:
        return request_messages(f.message_type, samples, depth + 1)
    return _scalar(f, samples)


def _is_map(f: FieldDescriptor) -> bool:
    return f.type == FieldDescriptor.TYPE_MESSAGE and f.message_type.GetOptions().map_entry


def _field(f: FieldDescriptor, samples: Samples, depth: int) -> st.SearchStrategy[Any]:
    if _is_map(f):
        key, value = f.message_type.fields_by_name["key"], f.message_type.fields_by_name["value"]
        return st.dictionaries(_value(key, samples, depth), _value(value, samples, depth), max_size=3)
    if f.is_repeated:
        return st.lists(_value(f, samples, depth), max_size=4 if depth < MAX_DEPTH else 1)
    return _value(f, samples, depth)


_CACHE: dict[tuple[str, int, int], st.SearchStrategy[Message]] = {}


def request_messages(
    descriptor: Descriptor, samples: Samples | None = None, depth: int = 0
) -> st.SearchStrategy[Message]:
    """Any message of type `descriptor`; below MAX_DEPTH nested messages are left empty."""
    samples = samples or Samples()
    cache_key = (descriptor.full_name, depth, id(samples))
    if cache_key in _CACHE:
        return _CACHE[cache_key]
    cls = _message_class(descriptor)
    if depth >= MAX_DEPTH or not descriptor.fields:
        strategy: st.SearchStrategy[Message] = st.just(cls())
        _CACHE[cache_key] = strategy
        return strategy
    plain = {f.name: _field(f, samples, depth) for f in descriptor.fields if f.containing_oneof is None}
    oneofs = [
        st.one_of(st.none(), *[st.tuples(st.just(f.name), _field(f, samples, depth)) for f in oneof.fields])
        for oneof in descriptor.oneofs
    ]

    def build(values: dict[str, Any], chosen: Sequence[tuple[str, Any] | None]) -> Message:
        msg = cls()
        for name, value in [*values.items(), *(c for c in chosen if c is not None)]:
            _set(msg, descriptor.fields_by_name[name], value)
        return msg

    strategy = st.builds(
        build,
        st.fixed_dictionaries({}, optional=plain),
        st.tuples(*oneofs) if oneofs else st.just(()),
    )
    _CACHE[cache_key] = strategy
    return strategy


def _set(msg: Message, f: FieldDescriptor, value: Any) -> None:
    target = getattr(msg, f.name)
    if _is_map(f):
        for k, v in value.items():
            if isinstance(v, Message):
                target[k].CopyFrom(v)
            else:
                target[k] = v
    elif f.is_repeated:
        if f.type == FieldDescriptor.TYPE_MESSAGE:
            for v in value:
                target.add().CopyFrom(v)
        else:
            target.extend(value)
    elif f.type == FieldDescriptor.TYPE_MESSAGE:
        target.CopyFrom(value)
    else:
        setattr(msg, f.name, value)


@dataclass(frozen=True)
class Input:
    """One fuzzed call: the request frames as sent, how they were made, and the key to use."""

    frames: tuple[bytes, ...]
    kind: str
    """`message` (valid messages), `raw` (arbitrary bytes) or `garbled` (a damaged message)."""
    key: str
    """`valid`, `none`, `garbage` or `other` (a real key whose role may not call the RPC)."""
    shown: str
    """A readable form of the input, for the report."""

    def __repr__(self) -> str:
        return f"Input(kind={self.kind}, key={self.key}, {self.shown})"


def _garble(data: bytes, how: int, at: int, noise: bytes) -> bytes:
    """`data` cut at `at` (how 0), with one bit flipped (1), `noise` inserted (2) or written over (3)."""
    if not data:
        return noise
    i = at % (len(data) + 1)
    if how == 0:
        return data[:i]
    if how == 1:
        j = i % len(data)
        return data[:j] + bytes([data[j] ^ (1 << (at % 8))]) + data[j + 1 :]
    if how == 2:
        return data[:i] + noise + data[i:]
    return data[:i] + noise + data[i + len(noise) :]


def _short(text: str, limit: int = 600) -> str:
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} chars)"


def _shown(message: Message) -> str:
    return f"{message.DESCRIPTOR.name}{{{_short(text_format.MessageToString(message, as_one_line=True))}}}"


def rpc_inputs(
    rpc: Rpc, samples: Samples | None = None, extra: Sequence[Input] = ()
) -> st.SearchStrategy[Input]:
    """Inputs for one RPC: valid messages (most), raw bytes, garbled messages; 1-4 of them for a
    client-streaming RPC. `extra` are hand-made inputs (real uploads) drawn now and then."""
    samples = samples or Samples()
    messages = request_messages(rpc.request, samples)
    count = st.integers(1, 4) if rpc.client_streaming else st.just(1)
    keys = st.sampled_from(KEY_CASES)

    def of_messages(items: list[Message], key: str) -> Input:
        return Input(
            tuple(m.SerializeToString() for m in items), "message", key, " | ".join(map(_shown, items))
        )

    def of_raw(items: list[bytes], key: str) -> Input:
        return Input(tuple(items), "raw", key, repr(items)[:600])

    def of_garbled(items: list[tuple[Message, int, int, bytes]], key: str) -> Input:
        frames = tuple(_garble(m.SerializeToString(), how, at, noise) for m, how, at, noise in items)
        shown = " | ".join(f"garble{how}@{at}({_shown(m)}, {noise!r})" for m, how, at, noise in items)
        return Input(frames, "garbled", key, _short(shown, 1200))

    valid = count.flatmap(lambda n: st.builds(of_messages, st.lists(messages, min_size=n, max_size=n), keys))
    raw = count.flatmap(
        lambda n: st.builds(of_raw, st.lists(st.binary(max_size=96), min_size=n, max_size=n), keys)
    )
    garble = st.tuples(messages, st.integers(0, 3), st.integers(0, 2**16), st.binary(min_size=1, max_size=8))
    garbled = count.flatmap(lambda n: st.builds(of_garbled, st.lists(garble, min_size=n, max_size=n), keys))
    choices: list[tuple[int, st.SearchStrategy[Input]]] = [(7, valid), (1, raw), (2, garbled)]
    if extra:
        choices.append((1, st.sampled_from(list(extra))))
    return st.one_of(*(s for weight, s in choices for _ in range(weight)))


# --- calling ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Keys:
    admin: str
    owner: str
    agent: str
    viewer: str


@dataclass
class Violation:
    rpc: str
    code: str
    message: str
    input: str

    def line(self) -> str:
        return f"{self.rpc}: {self.code} {self.message!r}\n    input: {self.input}"


@dataclass
class Report:
    started: float = field(default_factory=time.monotonic)
    inputs: Counter[str] = field(default_factory=Counter)
    codes: dict[str, Counter[str]] = field(default_factory=dict)
    violations: list[Violation] = field(default_factory=list)
    server_died: bool = False

    def merge(self, figures: dict[str, Any]) -> None:
        """Adds the figures (`as_json()`) of another fuzzing client of the same server."""
        self.inputs.update(figures["inputs_per_rpc"])
        for rpc, counts in figures["codes_per_rpc"].items():
            self.codes.setdefault(rpc, Counter()).update(counts)
        self.violations += [Violation(**v) for v in figures["violation_list"]]
        self.server_died = self.server_died or figures["server_died"]

    @property
    def total(self) -> int:
        return sum(self.inputs.values())

    def code_totals(self) -> Counter[str]:
        total: Counter[str] = Counter()
        for counts in self.codes.values():
            total.update(counts)
        return total

    def table(self) -> str:
        codes = sorted(self.code_totals())
        width = max([len(r) for r in self.inputs] + [10])
        head = f"{'RPC':<{width}} {'inputs':>7} " + " ".join(f"{c[:14]:>14}" for c in codes)
        lines = [head, "-" * len(head)]
        for rpc in sorted(self.inputs):
            counts = self.codes.get(rpc, Counter())
            lines.append(
                f"{rpc:<{width}} {self.inputs[rpc]:>7} " + " ".join(f"{counts.get(c, 0):>14}" for c in codes)
            )
        totals = self.code_totals()
        lines.append("-" * len(head))
        lines.append(f"{'total':<{width}} {self.total:>7} " + " ".join(f"{totals[c]:>14}" for c in codes))
        return "\n".join(lines)

    def as_json(self) -> dict[str, Any]:
        return {
            "inputs": self.total,
            "rpcs": len(self.inputs),
            "inputs_per_rpc": dict(sorted(self.inputs.items())),
            "violations": len(self.violations),
            "violation_list": [vars(v) for v in self.violations],
            "codes": dict(sorted(self.code_totals().items())),
            "codes_per_rpc": {rpc: dict(sorted(c.items())) for rpc, c in sorted(self.codes.items())},
            "server_died": self.server_died,
            "seconds": round(time.monotonic() - self.started, 1),
        }


def _identity(data: bytes) -> bytes:
    return data


class Fuzzer:
    """Sends inputs to a running server and records the status of every call."""

    def __init__(
        self,
        target: str,
        keys: Keys,
        *,
        tenant: str,
        report: Report | None = None,
        alive: Callable[[], bool] | None = None,
        on_call: Callable[[Report], None] | None = None,
    ) -> None:
        self.target = target
        self.keys = keys
        self.tenant = tenant
        self.report = report or Report()
        self._alive = alive
        self._on_call = on_call
        self._channel = grpc.insecure_channel(
            target,
            options=[
                ("grpc.max_send_message_length", 64 << 20),
                ("grpc.max_receive_message_length", 64 << 20),
            ],
        )

    def close(self) -> None:
        self._channel.close()

    def _key_for(self, rpc: Rpc, case: str) -> str | None:
        roles = rpc.roles or frozenset({Role.OWNER})
        allowed = self._allowed_keys(roles)
        if case == "none":
            return None
        if case == "garbage":
            return "fk_garbage_" + hashlib.sha256(rpc.path.encode()).hexdigest()[:20]
        if case == "other":
            others = [k for k in (self.keys.viewer, self.keys.agent, self.keys.admin) if k not in allowed]
            return others[0] if others else allowed[0]
        return allowed[zlib.crc32(rpc.path.encode()) % len(allowed)] if len(allowed) > 1 else allowed[0]

    def _allowed_keys(self, roles: frozenset[Role]) -> list[str]:
        keys = []
        if roles & {Role.OWNER, Role.EDITOR, Role.VIEWER}:
            keys.append(self.keys.owner)
        if Role.AGENT in roles:
            keys.append(self.keys.agent)
        if Role.ADMIN in roles:
            keys.append(self.keys.admin)
        return keys

    def call(self, rpc: Rpc, inp: Input) -> tuple[grpc.StatusCode, str]:
        key = self._key_for(rpc, inp.key)
        metadata = (("authorization", f"Bearer {key}"),) if key is not None else ()
        ch = self._channel
        kwargs: dict[str, Any] = {"request_serializer": _identity, "response_deserializer": _identity}
        try:
            if not rpc.client_streaming and not rpc.server_streaming:
                ch.unary_unary(rpc.path, **kwargs)(inp.frames[0], metadata=metadata, timeout=UNARY_TIMEOUT_S)
            elif rpc.client_streaming and not rpc.server_streaming:
                ch.stream_unary(rpc.path, **kwargs)(
                    iter(inp.frames), metadata=metadata, timeout=UNARY_TIMEOUT_S
                )
            else:
                if rpc.client_streaming:
                    call = ch.stream_stream(rpc.path, **kwargs)(
                        iter(inp.frames), metadata=metadata, timeout=STREAM_TIMEOUT_S
                    )
                else:
                    call = ch.unary_stream(rpc.path, **kwargs)(
                        inp.frames[0], metadata=metadata, timeout=STREAM_TIMEOUT_S
                    )
                # A watch sends the current state, then waits for changes: one answer will do.
                # A bidirectional stream ends when the server has answered what was sent.
                for _ in call:
                    if not rpc.client_streaming:
                        call.cancel()
                        break
        except grpc.RpcError as exc:
            code, details = exc.code(), exc.details() or ""
            if code == grpc.StatusCode.CANCELLED and rpc.server_streaming:
                return grpc.StatusCode.OK, ""
            if code == grpc.StatusCode.DEADLINE_EXCEEDED and rpc.server_streaming:
                return grpc.StatusCode.OK, "deadline (stream still open)"
            return code, details
        return grpc.StatusCode.OK, ""

    def probe(self, rpc: Rpc, inp: Input) -> grpc.StatusCode:
        code, details = self.call(rpc, inp)
        report = self.report
        report.inputs[rpc.name] += 1
        report.codes.setdefault(rpc.name, Counter())[code.name] += 1
        bad = code in BAD_CODES or code == grpc.StatusCode.DEADLINE_EXCEEDED
        if code == grpc.StatusCode.UNAVAILABLE and not self.server_alive():
            report.server_died = True
            bad = True
        if bad:
            report.violations.append(Violation(rpc.name, code.name, details, repr(inp)))
        if code == grpc.StatusCode.OK and rpc.path in RESTORING:
            self.restore()
        if self._on_call is not None:
            self._on_call(report)
        return code

    def server_alive(self) -> bool:
        if self._alive is not None and not self._alive():
            return False
        stub = health_pb2_grpc.HealthStub(self._channel)
        try:
            stub.Check(health_pb2.HealthCheckRequest(), timeout=10)
        except grpc.RpcError:
            return False
        return True

    def restore(self) -> None:
        """Undoes what a fuzzed call may have done to the fuzzing tenant itself: re-enables it and
        replaces a revoked key, so that later inputs still reach the services behind the guard."""
        admin = admin_pb2_grpc.AdminServiceStub(self._channel)
        md = (("authorization", f"Bearer {self.keys.admin}"),)
        with contextlib.suppress(grpc.RpcError):
            admin.EnableTenant(admin_pb2.EnableTenantRequest(name=self.tenant), metadata=md, timeout=10)
        keys = admin_pb2_grpc.KeyServiceStub(self._channel)
        replaced = {}
        for role, secret in (
            ("owner", self.keys.owner),
            ("agent", self.keys.agent),
            ("viewer", self.keys.viewer),
        ):
            try:
                admin.WhoAmI(
                    admin_pb2.WhoAmIRequest(), metadata=(("authorization", f"Bearer {secret}"),), timeout=10
                )
            except grpc.RpcError as exc:
                if exc.code() != grpc.StatusCode.UNAUTHENTICATED:
                    continue
                new = keys.CreateKey(
                    admin_pb2.CreateKeyRequest(tenant=self.tenant, role=ROLES[role], description="fuzz"),
                    metadata=md,
                    timeout=10,
                )
                replaced[role] = new.secret
        if replaced:
            self.keys = Keys(
                admin=self.keys.admin,
                owner=replaced.get("owner", self.keys.owner),
                agent=replaced.get("agent", self.keys.agent),
                viewer=replaced.get("viewer", self.keys.viewer),
            )


ROLES = {"owner": 3, "agent": 4, "viewer": 1}
RESTORING = frozenset(
    {
        "/foedus.v1.AdminService/DisableTenant",
        "/foedus.v1.KeyService/RevokeKey",
    }
)


# --- the state fuzzed requests run into ---------------------------------------------------------
@dataclass
class Seeded:
    tenant: str
    keys: Keys
    samples: Samples
    uploads: list[Input]
    """Real CreateModelVersion streams (valid, and damaged in one frame), mixed into its inputs."""


def seed_state(target: str, admin_key: str, model_path: Path, tenant: str = "fuzz-acme") -> Seeded:
    """Creates the fuzzing tenant with real state: model iris (two versions, alias prod), deployment
    web, a rollout, a registered agent; returns its keys and the names to mix into the strings."""
    from foedus.client_sdk import Client

    with Client.connect(target, api_key=admin_key) as admin:
        owner = admin.tenants.create(tenant).owner_key_secret
        viewer = admin.keys.create("viewer", tenant=tenant).secret
        agent = admin.keys.create("agent", tenant=tenant).secret
        key_ids = [k.key_id for k in admin.keys.list(tenant=tenant)]
    with Client.connect(target, api_key=owner) as client:
        client.models.register("iris", model_path, aliases=["prod"])
        client.models.register("iris", model_path)
        client.deployments.create("web", "iris", traffic={1: 1.0})
        rollout = client.rollouts.start("web", 2, steps=[50, 100])
    with grpc.insecure_channel(target) as channel:
        agent_pb2_grpc.AgentServiceStub(channel).RegisterAgent(
            agent_pb2.RegisterAgentRequest(deployment="web", agent=agent_pb2.AgentInfo(name="agent-1")),
            metadata=(("authorization", f"Bearer {agent}"),),
            timeout=30,
        )
    samples = Samples(
        names=[tenant, "iris", "prod", "web", "agent-1", "canary", "onnx", "latency_p99_ms", *key_ids],
        numbers=[1, 2, 3, rollout.id],
    )
    return Seeded(tenant, Keys(admin_key, owner, agent, viewer), samples, _uploads(model_path))


def _uploads(model_path: Path) -> list[Input]:
    data = model_path.read_bytes()
    spec = registry_pb2.CreateModelVersionRequest(
        spec=registry_pb2.VersionSpec(model="iris", framework="onnx", size_bytes=len(data))
    )
    chunk = registry_pb2.CreateModelVersionRequest(chunk=data)
    digest = registry_pb2.CreateModelVersionRequest(sha256=hashlib.sha256(data).hexdigest())
    frames = [spec.SerializeToString(), chunk.SerializeToString(), digest.SerializeToString()]
    uploads = [Input(tuple(frames), "message", "valid", "real iris upload")]
    for i, frame in enumerate(frames):
        for how in range(4):
            damaged = list(frames)
            damaged[i] = _garble(frame, how, len(frame) // 2, b"\xff\x01")
            uploads.append(
                Input(tuple(damaged), "garbled", "valid", f"real iris upload, frame {i} garble{how}")
            )
    uploads.append(
        Input((frames[0], frames[1][: len(frames[1]) // 2], frames[2]), "message", "valid", "half upload")
    )
    uploads.append(Input((frames[1], frames[0], frames[2]), "message", "valid", "upload, chunk first"))
    return uploads


# --- running ------------------------------------------------------------------------------------
def run_rpc(
    fuzzer: Fuzzer, rpc: Rpc, examples: int, seed: int, samples: Samples, extra: Sequence[Input] = ()
) -> None:
    """Calls `rpc` with `examples` hypothesis inputs (fewer when its input space is exhausted)."""

    @hypothesis_seed(seed ^ zlib.crc32(rpc.path.encode()))
    @settings(
        max_examples=examples,
        database=None,
        deadline=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
        derandomize=False,
    )
    @given(rpc_inputs(rpc, samples, extra))
    def probe(inp: Input) -> None:
        fuzzer.probe(rpc, inp)

    probe()


def run_all(
    fuzzer: Fuzzer,
    rpcs: Sequence[Rpc],
    examples_per_rpc: int,
    seed: int,
    seeded: Seeded,
    *,
    rounds: int = 1,
) -> Report:
    """Fuzzes every RPC in `rounds` passes of `examples_per_rpc / rounds` inputs each, so an early
    stop (the server died) still leaves every RPC covered."""
    rounds = max(1, min(rounds, examples_per_rpc))
    for r in range(rounds):
        for rpc in rpcs:
            if fuzzer.report.server_died:
                return fuzzer.report
            extra = seeded.uploads if rpc.method.name == "CreateModelVersion" else ()
            # Rounds share the inputs out exactly: none is lost to rounding.
            count = examples_per_rpc * (r + 1) // rounds - examples_per_rpc * r // rounds
            run_rpc(fuzzer, rpc, count, seed + r * 7919, seeded.samples, extra)
    return fuzzer.report


def start_server(data_dir: Path, **settings: Any) -> Any:
    """The control plane as a subprocess (tests/integration/serverproc.py), so that a crash shows."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))
    from serverproc import ServerProcess

    return ServerProcess(data_dir, **{"latency_runs": 2, **settings}).start()


def logged_errors(log: str) -> list[str]:
    """The server log's ERROR lines: each is a fault the fuzzing brought out, even one the caller
    did not see as INTERNAL."""
    return [line for line in log.splitlines() if " ERROR " in line]


def fuzz(
    target: str,
    admin_key: str,
    model_path: Path,
    *,
    examples_per_rpc: int,
    seed: int,
    rounds: int = 1,
    tenant: str = "fuzz-acme",
    alive: Callable[[], bool] | None = None,
    on_call: Callable[[Report], None] | None = None,
    rpcs: Sequence[Rpc] | None = None,
) -> Report:
    """Seeds the state, then fuzzes every RPC (or `rpcs`) against the server at `target`."""
    seeded = seed_state(target, admin_key, model_path, tenant)
    fuzzer = Fuzzer(target, seeded.keys, tenant=seeded.tenant, alive=alive, on_call=on_call)
    try:
        return run_all(fuzzer, rpcs or server_rpcs(), examples_per_rpc, seed, seeded, rounds=rounds)
    finally:
        fuzzer.close()
