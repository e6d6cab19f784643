"""Federated training of Foedus' ops models on Flower's deployment engine.

Organisations train a shared model while each one's data stays on its own machine: a SuperLink
coordinates, one SuperNode per organisation trains on local data, ``flwr run`` submits the
training. TLS and SuperNode authentication are always on.

The pieces:

* :class:`FederatedTask` — the protocol a model implements to be trained federatedly
  (``initial_arrays()``, ``train(arrays, data, epochs=, proximal_mu=)``, ``evaluate(arrays, data)``);
  :class:`TorchTask` implements it for any ``torch.nn.Module`` factory. A run names its task by
  import string (e.g. ``"foedus.federation.flower.task:demo_autoencoder"``).
* :class:`LocalData` and :func:`load_local_data` — a node's data (a ``.npz`` with ``train``,
  optional ``test`` / ``test_label``, or an agent's history directory; loaders are pluggable).
* :class:`RunSettings` (with :class:`DpConfig`, :class:`SecAggConfig`) — strategy (FedAvg,
  FedProx, FedAdam), rounds, local epochs, node sampling, central or local differential privacy,
  SecAgg+. It becomes the Flower run config.
* The Flower apps themselves: ``foedus.federation.flower.server_app:app`` /
  ``client_app:app`` (Message API) and ``server_app:secagg_app`` / ``client_app:secagg_app``
  (legacy workflow with SecAgg+).
* The runner — :class:`LocalFederation` (SuperLink + SuperNodes as processes),
  :func:`run_federation` (one training end to end), :func:`start_superlink`,
  :func:`start_supernode`, :func:`write_app_dir`, :func:`run` — and :class:`RunResult` with
  per-round :class:`RoundRecord` s and the final weights.
* :func:`generate_tls` / :func:`generate_node_keys` — development key material.

Example::

    from foedus.federation.flower import NodeSpec, run_federation

    result = run_federation(
        "foedus.federation.flower.task:demo_autoencoder",
        [NodeSpec("org1", Path("org1.npz")), NodeSpec("org2", Path("org2.npz"))],
        workdir=Path("/tmp/fl"),
        rounds=3,
        task_options={"features": 6},
    )
    result.rounds[-1].eval_loss, result.final_weights()

Importing this package needs neither flwr nor torch until a task is trained or an app loaded
(``cryptography``, used for the key material, comes with flwr).
"""

from __future__ import annotations

from foedus.federation.flower.certs import NodeKeyPair, TlsFiles, generate_node_keys, generate_tls
from foedus.federation.flower.runner import (
    LocalFederation,
    NodeSpec,
    Process,
    RunnerError,
    RunResult,
    SuperLink,
    run,
    run_federation,
    start_superlink,
    start_supernode,
    write_app_dir,
)
from foedus.federation.flower.task import (
    DataError,
    DpConfig,
    DpSgd,
    FederatedTask,
    LocalData,
    Metrics,
    NamedArrays,
    RoundRecord,
    RunSettings,
    SecAggConfig,
    TorchTask,
    autoencoder_pairs,
    demo_autoencoder,
    dp_sgd_epsilon,
    gaussian_dp_epsilon,
    get_weights,
    load_local_data,
    load_task,
    register_loader,
    regression_pairs,
    set_weights,
)

__all__ = [
    "DataError",
    "DpConfig",
    "DpSgd",
    "FederatedTask",
    "LocalData",
    "LocalFederation",
    "Metrics",
    "NamedArrays",
    "NodeKeyPair",
    "NodeSpec",
    "Process",
    "RoundRecord",
    "RunResult",
    "RunSettings",
    "RunnerError",
    "SecAggConfig",
    "SuperLink",
    "TlsFiles",
    "TorchTask",
    "autoencoder_pairs",
    "demo_autoencoder",
    "dp_sgd_epsilon",
    "gaussian_dp_epsilon",
    "generate_node_keys",
    "generate_tls",
    "get_weights",
    "load_local_data",
    "load_task",
    "register_loader",
    "regression_pairs",
    "run",
    "run_federation",
    "set_weights",
    "start_superlink",
    "start_supernode",
    "write_app_dir",
]
