"""The committed foedus.v1 code is exactly what scripts/gen_proto.py produces from the .proto files."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_generated_code_is_fresh(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("gen_proto", ROOT / "scripts" / "gen_proto.py")
    assert spec is not None and spec.loader is not None
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    written = gen.generate(tmp_path)
    assert written, "the generator wrote nothing"
    stale = []
    for fresh in written:
        rel = fresh.relative_to(tmp_path)
        committed = ROOT / "proto" / rel
        if not committed.exists() or committed.read_bytes() != fresh.read_bytes():
            stale.append(str(rel))
    committed_files = {p.relative_to(ROOT / "proto") for p in (ROOT / "proto").rglob("*_pb2*.py*")}
    extra = committed_files - {p.relative_to(tmp_path) for p in written}
    assert not stale, f"stale generated code, run `make proto`: {stale}"
    assert not extra, f"generated files without a .proto source: {sorted(map(str, extra))}"


def test_protobuf_runtime_is_not_older_than_the_generator() -> None:
    import google.protobuf

    from foedus.v1 import common_pb2

    assert common_pb2.DESCRIPTOR.name == "foedus/v1/common.proto"
    major, minor = (int(p) for p in google.protobuf.__version__.split(".")[:2])
    assert (major, minor) >= (6, 33)
