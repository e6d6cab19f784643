"""PerformanceService: delayed labels in, per-version performance out."""

from __future__ import annotations

from typing import Any

import grpc

from foedus.server.interceptors import current_call, current_principal
from foedus.server.monitoring.performance import PerformanceService, WindowReport
from foedus.server.servicers.base import BlockingRunner, ServicerBase
from foedus.v1 import performance_pb2, performance_pb2_grpc

Ctx = grpc.aio.ServicerContext[Any, Any]


class PerformanceServicer(ServicerBase, performance_pb2_grpc.PerformanceServiceServicer):
    def __init__(self, performance: PerformanceService, runner: BlockingRunner) -> None:
        super().__init__(runner)
        self._performance = performance

    async def LogLabels(
        self, request: performance_pb2.LogLabelsRequest, context: Ctx
    ) -> performance_pb2.LogLabelsResponse:
        current_call().resource = f"deployments/{request.deployment}/labels"
        stored, first, last = await self.run(
            self._performance.log_labels,
            current_principal(),
            request.deployment,
            list(request.request_ids),
            list(request.labels),
        )
        return performance_pb2.LogLabelsResponse(stored=stored, first_sequence=first, last_sequence=last)

    async def GetPerformance(
        self, request: performance_pb2.GetPerformanceRequest, context: Ctx
    ) -> performance_pb2.GetPerformanceResponse:
        reports = await self.run(
            self._performance.performance,
            current_principal(),
            request.deployment,
            request.version,
            request.window_s,
            request.start_unix_ms,
            request.end_unix_ms,
            request.positive_class,
        )
        return performance_pb2.GetPerformanceResponse(
            deployment=request.deployment, windows=[window_message(r) for r in reports]
        )


def window_message(r: WindowReport) -> performance_pb2.WindowPerformance:
    t = r.totals
    nan = float("nan")
    out = performance_pb2.WindowPerformance(
        version=r.version,
        start_unix_ms=r.start_ms,
        end_unix_ms=r.end_ms,
        task=t.task,
        predictions=t.predictions,
        labelled=t.labelled,
        label_coverage=t.labelled / t.predictions if t.predictions else nan,
        accuracy=r.metrics.accuracy if r.metrics else nan,
        precision=r.metrics.precision if r.metrics else nan,
        recall=r.metrics.recall if r.metrics else nan,
        f1=r.metrics.f1 if r.metrics else nan,
        roc_auc=r.roc_auc,
        mae=r.mae,
        rmse=r.rmse,
        bias=r.bias,
    )
    for c in r.metrics.classes if r.metrics else ():
        out.classes.add(
            label=c.label,
            precision=c.precision,
            recall=c.recall,
            f1=c.f1,
            support=c.support,
            roc_auc=c.roc_auc,
        )
    if r.estimate is not None:
        m = r.estimate.metrics
        out.estimate.CopyFrom(
            performance_pb2.PerformanceEstimate(
                predictions=r.estimate.predictions,
                accuracy=m.accuracy,
                precision=m.precision,
                recall=m.recall,
                f1=m.f1,
            )
        )
    if r.fairness is not None:
        f = r.fairness
        out.fairness.CopyFrom(
            performance_pb2.Fairness(
                sensitive_feature=r.sensitive_feature,
                positive_class=f.positive,
                demographic_parity_difference=f.demographic_parity_difference,
                equal_opportunity_difference=f.equal_opportunity_difference,
                segments=[
                    performance_pb2.SegmentMetrics(
                        segment=s.segment,
                        labelled=s.labelled,
                        selection_rate=s.selection_rate,
                        true_positive_rate=s.true_positive_rate,
                        accuracy=s.accuracy,
                    )
                    for s in f.segments
                ],
            )
        )
    return out
