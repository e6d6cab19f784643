"""End-to-end demo on the embedded defaults: `make demo`.

An embedded control plane (SQLite, local artifacts) in a temporary directory; two tenants; a real
model (logistic regression on scikit-learn's breast-cancer data, converted to ONNX with skl2onnx)
registered in two versions with lineage and a reference profile; aliases moved; the artifact
downloaded, verified and served with onnxruntime; and tenant isolation shown.
"""

from __future__ import annotations

import argparse
import hashlib
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def step(text: str) -> None:
    print(f"\n== {text}", flush=True)


def train_onnx(c: float, x: np.ndarray, y: np.ndarray, path: Path) -> float:
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=1000)).fit(x, y)
    onx = convert_sklearn(
        model,
        initial_types=[("input", FloatTensorType([None, x.shape[1]]))],
        options={id(model.steps[-1][1]): {"zipmap": False}},
        target_opset={"": 17, "ai.onnx.ml": 3},
    )
    path.write_bytes(onx.SerializeToString())
    return float(model.score(x, y))


def code_revision() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        )
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--data-dir", type=Path, help="keep the server's data here (default: a temporary directory)"
    )
    args = parser.parse_args()

    import onnxruntime as ort
    from sklearn.datasets import load_breast_cancer
    from sklearn.model_selection import train_test_split

    from foedus.client_sdk import Client, NotFound, PermissionDenied
    from foedus.client_sdk.testing import LocalServer

    started = time.perf_counter()
    workdir = Path(tempfile.mkdtemp(prefix="foedus-demo-"))
    data_dir = args.data_dir or workdir / "server"

    step("Starting an embedded Foedus control plane (SQLite + local artifact store)")
    with LocalServer(data_dir) as server:
        print(f"   listening on {server.target}; data in {data_dir}")
        print(f"   platform admin key written to {data_dir / 'admin.key'} (mode 0600)")

        step("Admin creates two tenants, each with a first owner key")
        with server.client() as admin:
            acme = admin.tenants.create("acme", display_name="Acme Corp")
            globex = admin.tenants.create("globex", display_name="Globex")
            for t in (acme, globex):
                print(f"   tenant {t.tenant.name:<7} owner key {t.owner_key.key_id} (secret shown once)")

        acme_client = Client.connect(server.target, api_key=acme.owner_key_secret)
        globex_client = Client.connect(server.target, api_key=globex.owner_key_secret)

        step("Acme trains a breast-cancer classifier (scikit-learn data) and converts it to ONNX")
        data = load_breast_cancer()
        x = data.data.astype(np.float32)
        x_train, x_test, y_train, _ = train_test_split(x, data.target, test_size=0.25, random_state=0)
        fingerprint = hashlib.sha256(x_train.tobytes() + y_train.tobytes()).hexdigest()[:16]
        v1_path, v2_path = workdir / "cancer-v1.onnx", workdir / "cancer-v2.onnx"
        acc1 = train_onnx(0.01, x_train, y_train, v1_path)
        acc2 = train_onnx(1.0, x_train, y_train, v2_path)
        print(f"   v1 (C=0.01) train accuracy {acc1:.3f}; v2 (C=1.0) train accuracy {acc2:.3f}")

        step("Acme registers both versions with lineage and a reference profile (gates run on the server)")
        names = [str(n) for n in data.feature_names]
        v1 = acme_client.models.register(
            "cancer",
            v1_path,
            aliases=["production"],
            tags={"team": "oncology"},
            lineage={
                "data_fingerprint": fingerprint,
                "code_revision": code_revision(),
                "regularization": "0.01",
            },
            reference_data=x_train,
            feature_names=names,
            description="logistic regression, strong regularization",
        )
        v2 = acme_client.models.register(
            "cancer",
            v2_path,
            aliases=["candidate"],
            lineage={
                "data_fingerprint": fingerprint,
                "code_revision": code_revision(),
                "parent_version": v1.version,
                "regularization": "1.0",
            },
            reference_data=x_train,
            feature_names=names,
            description="logistic regression, weaker regularization",
        )
        for v in (v1, v2):
            sig_in = ", ".join(f"{t.name}{list(t.shape)}:{t.dtype}" for t in v.signature.inputs)
            print(
                f"   v{v.version}: sha256 {v.artifact.sha256[:12]}…  opset {v.artifact.onnx_opset}  input {sig_in}  "
                f"CPU latency p50 {v.latency.p50_ms:.3f} ms p99 {v.latency.p99_ms:.3f} ms  aliases {list(v.aliases)}"
            )
        profile = acme_client.models.get_version("cancer", v2.version).reference_profile
        first = profile.features[0]
        print(
            f"   reference profile: {len(profile.features)} features over {profile.row_count} rows; "
            f"'{first.name}' bins {[round(e, 2) for e in first.numeric.edges[:4]]}… counts {list(first.numeric.counts)}"
        )

        step("Acme promotes v2: 'production' moves atomically from v1 to v2")
        previous = acme_client.models.set_alias("cancer", "production", v2.version)
        acme_client.models.delete_alias("cancer", "candidate")
        model = acme_client.models.get("cancer")
        print(
            f"   production: v{previous} -> v{model.aliases['production']}; aliases now {dict(model.aliases)}"
        )

        step("Acme downloads 'production' (sha256 verified) and serves it with onnxruntime")
        path = acme_client.models.download("cancer", workdir, alias="production")
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        labels = session.run(None, {"input": x_test})[0]
        print(f"   {path.name}: predicted {len(labels)} held-out rows, {int(labels.sum())} benign")

        step("Acme archives v1 (no alias points at it any more)")
        archived = acme_client.models.archive("cancer", v1.version)
        print(
            f"   v{archived.version} state: archived; visible versions: "
            f"{[v.version for v in acme_client.models.versions('cancer')]}"
        )

        step("Globex cannot see Acme's models")
        try:
            globex_client.models.get("cancer")
            print("   UNEXPECTED: globex read acme's model")
            sys.exit(1)
        except NotFound as exc:
            print(f"   globex get 'cancer' -> NotFound: {exc}")
        print(f"   globex model list -> {[m.name for m in globex_client.models.list()]}")

        step("A viewer key of Acme may read but not register")
        viewer = acme_client.keys.create("viewer", description="dashboards")
        with Client.connect(server.target, api_key=viewer.secret) as viewer_client:
            print(f"   viewer reads latest version: v{viewer_client.models.get('cancer').latest_version}")
            try:
                viewer_client.models.register("cancer", v1_path)
                sys.exit("UNEXPECTED: a viewer registered a version")
            except PermissionDenied as exc:
                print(f"   viewer register -> PermissionDenied: {exc}")

        step("Acme's audit log (newest first)")
        for entry in acme_client.audit(limit=8):
            print(f"   {entry.method.rsplit('/', 1)[1]:<20} {entry.resource:<32} {entry.outcome}")

        acme_client.close()
        globex_client.close()
    print(f"\nDemo finished in {time.perf_counter() - started:.1f} s.")


if __name__ == "__main__":
    main()
