"""Fuzzes every RPC of the control plane and reports what the server answered.

    .venv/bin/python scripts/fuzz_rpcs.py --total 100000 --seed 1 --clients 2 --json fuzz.json

Starts its own server (a subprocess on SQLite in a temporary directory; `--db` for another store)
unless `--server HOST:PORT` and `--admin-key` name a running one. Seeds a tenant with real state,
then sends each RPC `--examples-per-rpc` inputs (or `--total` spread over all RPCs): hypothesis-made
request messages, raw bytes and garbled messages, mostly with a key allowed to call it. With
`--clients N`, N processes (each with its own tenant and seed) share the inputs and the server.
Prints a table of inputs and status codes per RPC and every violation: INTERNAL, UNKNOWN or
DATA_LOSS, a unary call that hangs, a server that dies. Exit code 0: no violation; 1: violations;
2: the server did not start.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from foedus_testdata import iris_onnx  # noqa: E402
from fuzz.rpcfuzz import Report, fuzz, logged_errors, server_rpcs, start_server  # noqa: E402


def _client_args(
    args: argparse.Namespace, target: str, admin_key: str, per_rpc: int, i: int, out: Path
) -> list[str]:
    return [
        sys.executable,
        str(Path(__file__).resolve()),
        "--server",
        target,
        "--admin-key",
        admin_key,
        "--examples-per-rpc",
        str(per_rpc),
        "--seed",
        str(args.seed * 1000 + i),
        "--rounds",
        str(args.rounds),
        "--json",
        str(out),
        "--quiet",
    ]


def _run_clients(
    args: argparse.Namespace, target: str, admin_key: str, per_rpc: int, tmp: Path, report: Report
) -> None:
    """Runs `args.clients` fuzzing processes against one server and adds up their figures."""
    shares = [per_rpc * (i + 1) // args.clients - per_rpc * i // args.clients for i in range(args.clients)]
    outs = [tmp / f"client-{i}.json" for i in range(args.clients)]
    procs = [
        subprocess.Popen(
            _client_args(args, target, admin_key, shares[i], i, out), stdout=subprocess.PIPE, text=True
        )
        for i, out in enumerate(outs)
    ]
    # Each client prints its progress every 10 s; passing it on keeps one line per client.
    import threading

    def relay(i: int, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            print(f"[client {i}] {line.rstrip()}", flush=True)

    threads = [threading.Thread(target=relay, args=(i, p), daemon=True) for i, p in enumerate(procs)]
    for t in threads:
        t.start()
    for proc in procs:
        proc.wait()
    for t in threads:
        t.join(timeout=5)
    for out in outs:
        if out.exists():
            report.merge(json.loads(out.read_text()))
        else:
            report.server_died = True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--examples-per-rpc", type=int, default=0, help="inputs per RPC")
    size.add_argument("--total", type=int, default=0, help="inputs in all, spread evenly over the RPCs")
    parser.add_argument("--seed", type=int, default=0, help="hypothesis seed (same seed, same inputs)")
    parser.add_argument(
        "--rounds", type=int, default=10, help="passes over all RPCs the inputs are split into"
    )
    parser.add_argument("--clients", type=int, default=1, help="fuzzing processes sharing the inputs")
    parser.add_argument("--json", type=Path, help="write the figures to this file")
    parser.add_argument("--server", help="HOST:PORT of a running server (default: start one)")
    parser.add_argument("--admin-key", default=os.environ.get("FOEDUS_ADMIN_KEY", ""), help="its admin key")
    parser.add_argument("--db", help="database URL for the server started here (default: SQLite)")
    parser.add_argument("--quiet", action="store_true", help="print progress only (for --clients)")
    args = parser.parse_args(argv)
    rpcs = server_rpcs()
    per_rpc = args.examples_per_rpc or (-(-args.total // len(rpcs)) if args.total else 200)
    rounds = max(1, min(args.rounds, per_rpc))
    if not args.quiet:
        print(
            f"fuzzing {len(rpcs)} RPCs, {per_rpc} inputs each, seed {args.seed}, {args.clients} client(s)",
            flush=True,
        )
    last = [time.monotonic()]

    def progress(report: Report) -> None:
        if time.monotonic() - last[0] >= 10:
            last[0] = time.monotonic()
            rate = report.total / max(1e-9, last[0] - report.started)
            print(f"{report.total:>8} inputs  {len(report.violations)} violations  {rate:.0f}/s", flush=True)

    report = Report()
    errors: list[str] = []
    with tempfile.TemporaryDirectory(prefix="foedus-fuzz-") as tmp:
        server = None
        if args.server:
            if not args.admin_key:
                parser.error("--server needs --admin-key (or FOEDUS_ADMIN_KEY)")
            target, admin_key = args.server, args.admin_key
        else:
            try:
                server = start_server(Path(tmp) / "data", db=args.db)
            except Exception as exc:
                print(f"the server did not start: {exc}", file=sys.stderr)
                return 2
            target, admin_key = server.target, server.admin_key
        try:
            if args.clients > 1:
                _run_clients(args, target, admin_key, per_rpc, Path(tmp), report)
            else:
                report = fuzz(
                    target,
                    admin_key,
                    iris_onnx(Path(tmp)),
                    examples_per_rpc=per_rpc,
                    seed=args.seed,
                    rounds=rounds,
                    tenant=f"fuzz-{uuid.uuid4().hex[:8]}",
                    alive=(lambda: bool(server.alive)) if server is not None else None,
                    on_call=progress,
                    rpcs=rpcs,
                )
        finally:
            if server is not None:
                report.server_died = report.server_died or not server.alive
                errors = logged_errors(server.log())
                if server.alive:
                    server.stop()
    figures = report.as_json()
    figures["server_log_errors"] = len(errors)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1) + "\n")
    if args.quiet:
        return 1 if report.violations or report.server_died else 0
    print(report.table())
    for violation in report.violations:
        print(violation.line())
    if errors:
        print(f"the server logged {len(errors)} error(s):")
        print("\n".join(errors[:20]))
    print(
        f"{figures['inputs']} inputs over {figures['rpcs']} RPCs in {figures['seconds']} s: "
        f"{figures['violations']} violations; server {'died' if report.server_died else 'stayed up'}",
        flush=True,
    )
    return 1 if report.violations or report.server_died or errors else 0


if __name__ == "__main__":
    sys.exit(main())
