"""Fuzzes every RPC of the control plane and reports what the server answered.

    .venv/bin/python scripts/fuzz_rpcs.py --total 100000 --seed 1 --json fuzz.json

Starts its own server (a subprocess on SQLite in a temporary directory; `--db` for another store)
unless `--server HOST:PORT` and `--admin-key` name a running one. Seeds a tenant with real state,
then sends each RPC `--examples-per-rpc` inputs (or `--total` spread over all RPCs): hypothesis-made
request messages, raw bytes and garbled messages, mostly with a key allowed to call it. Prints a
table of inputs and status codes per RPC and every violation: INTERNAL, UNKNOWN or DATA_LOSS, a
unary call that hangs, a server that dies. Exit code 0: no violation; 1: violations; 2: the server
did not start.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from foedus_testdata import iris_onnx  # noqa: E402
from fuzz.rpcfuzz import Report, fuzz, logged_errors, server_rpcs, start_server  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--examples-per-rpc", type=int, default=0, help="inputs per RPC")
    size.add_argument("--total", type=int, default=0, help="inputs in all, spread evenly over the RPCs")
    parser.add_argument("--seed", type=int, default=0, help="hypothesis seed (same seed, same inputs)")
    parser.add_argument(
        "--rounds", type=int, default=10, help="passes over all RPCs the inputs are split into"
    )
    parser.add_argument("--json", type=Path, help="write the figures to this file")
    parser.add_argument("--server", help="HOST:PORT of a running server (default: start one)")
    parser.add_argument("--admin-key", default=os.environ.get("FOEDUS_ADMIN_KEY", ""), help="its admin key")
    parser.add_argument("--db", help="database URL for the server started here (default: SQLite)")
    args = parser.parse_args(argv)
    rpcs = server_rpcs()
    per_rpc = args.examples_per_rpc or (-(-args.total // len(rpcs)) if args.total else 200)
    rounds = max(1, min(args.rounds, per_rpc))
    print(f"fuzzing {len(rpcs)} RPCs, {per_rpc} inputs each, seed {args.seed}", flush=True)

    last = [time.monotonic()]

    def progress(report: Report) -> None:
        if time.monotonic() - last[0] >= 10:
            last[0] = time.monotonic()
            rate = report.total / max(1e-9, last[0] - report.started)
            print(
                f"{report.total:>8} inputs  {len(report.violations)} violations  {rate:.0f}/s",
                flush=True,
            )

    with tempfile.TemporaryDirectory(prefix="foedus-fuzz-") as tmp:
        model = iris_onnx(Path(tmp))
        server = None
        if args.server:
            if not args.admin_key:
                parser.error("--server needs --admin-key (or FOEDUS_ADMIN_KEY)")
            target, admin_key, alive = args.server, args.admin_key, None
        else:
            try:
                server = start_server(Path(tmp) / "data", db=args.db)
            except Exception as exc:
                print(f"the server did not start: {exc}", file=sys.stderr)
                return 2
            target, admin_key = server.target, server.admin_key

            def alive() -> bool:
                return bool(server.alive)

        try:
            report = fuzz(
                target,
                admin_key,
                model,
                examples_per_rpc=per_rpc,
                seed=args.seed,
                rounds=rounds,
                tenant=f"fuzz-{uuid.uuid4().hex[:8]}",
                alive=alive,
                on_call=progress,
                rpcs=rpcs,
            )
        finally:
            errors = logged_errors(server.log()) if server is not None else []
            if server is not None and server.alive:
                server.stop()
    print(report.table())
    for violation in report.violations:
        print(violation.line())
    if errors:
        print(f"the server logged {len(errors)} error(s):")
        print("\n".join(errors[:20]))
    figures = report.as_json()
    figures["server_log_errors"] = len(errors)
    print(
        f"{figures['inputs']} inputs over {figures['rpcs']} RPCs in {figures['seconds']} s: "
        f"{figures['violations']} violations; server {'died' if report.server_died else 'stayed up'}",
        flush=True,
    )
    if args.json:
        import json

        args.json.write_text(json.dumps(figures, indent=1) + "\n")
    return 1 if report.violations or report.server_died else 0


if __name__ == "__main__":
    sys.exit(main())
