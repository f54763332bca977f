"""The usage API: a model's metrics over a window, and usage and cost by period, read
from the router's usage ledger (usage.py)."""

from __future__ import annotations

import time
from collections import defaultdict

from google.protobuf import timestamp_pb2

from infermesh.router.v1 import usage_service_pb2 as pb
from infermesh.router.v1 import usage_service_pb2_grpc as pb_grpc
from services.router.core.metering import Metering
from services.router.core.usage import Histogram, Tally
from services.runtime.errors import InvalidArgument

PERIOD_SECONDS = {
    pb.USAGE_PERIOD_UNSPECIFIED: 3600,
    pb.USAGE_PERIOD_MINUTE: 60,
    pb.USAGE_PERIOD_HOUR: 3600,
    pb.USAGE_PERIOD_DAY: 86400,
}


class UsageServicer(pb_grpc.UsageServiceServicer):
    def __init__(self, metering: Metering) -> None:
        self._ledger = metering.ledger

    def _window(self, request) -> tuple[float, float]:
        start = request.start_time.ToNanoseconds() / 1e9 if request.HasField("start_time") else self._ledger.oldest
        end = request.end_time.ToNanoseconds() / 1e9 if request.HasField("end_time") else time.time() + 60
        if end <= start:
            raise InvalidArgument(
                "end_time must be after start_time", reason="EMPTY_WINDOW", start_time=start, end_time=end
            )
        return start, end

    async def GetModelMetrics(self, request, context):
        start, end = self._window(request)
        model = request.name.removeprefix("models/")
        versions = self._ledger.summed(start, end, model)
        total = Tally()
        for tally in versions.values():
            total.merge(tally)
        return pb.ModelMetrics(
            name=request.name,
            start_time=_timestamp(start),
            end_time=_timestamp(min(end, time.time())),
            total=_measurements(total),
            versions=[
                pb.VersionMetrics(version=version, measurements=_measurements(tally))
                for version, tally in sorted(versions.items())
            ],
        )

    async def SummarizeUsage(self, request, context):
        start, end = self._window(request)
        period = PERIOD_SECONDS[request.period]
        buckets: dict[tuple[float, str, str], Tally] = {}
        for minute, (model, version), tally in self._ledger.window(start, end):
            if request.model and model != request.model:
                continue
            if tally.answered == 0:
                continue  # requests for this model that another answered or that failed
            key = (minute - minute % period, model, version)
            buckets.setdefault(key, Tally()).merge(tally)
        response = pb.SummarizeUsageResponse()
        costs: dict[str, float] = defaultdict(float)
        for (period_start, model, version), tally in sorted(buckets.items()):
            response.buckets.append(
                pb.UsageBucket(
                    start_time=_timestamp(period_start),
                    model=model,
                    version=version,
                    requests=tally.answered,
                    input_tokens=tally.input_tokens,
                    output_tokens=tally.output_tokens,
                    cost=tally.cost,
                    currency=tally.currency,
                )
            )
            response.total_input_tokens += tally.input_tokens
            response.total_output_tokens += tally.output_tokens
            if tally.currency:
                costs[tally.currency] += tally.cost
        response.total_cost.update(costs)
        return response


def _measurements(tally: Tally) -> pb.Measurements:
    def rate(count: int) -> float:
        return count / tally.requests if tally.requests else 0.0

    return pb.Measurements(
        requests=tally.requests,
        errors=tally.errors,
        error_rate=rate(tally.errors),
        fallbacks=tally.fallbacks,
        fallback_rate=rate(tally.fallbacks),
        cache_hits=tally.cache_hits,
        cache_hit_rate=rate(tally.cache_hits),
        input_tokens=tally.input_tokens,
        output_tokens=tally.output_tokens,
        latency=_latency(tally.latency),
        time_to_first_token=_latency(tally.first_token),
        cost=tally.cost,
        currency=tally.currency,
    )


def _latency(histogram: Histogram) -> pb.LatencySummary:
    return pb.LatencySummary(
        average_seconds=histogram.mean, p50_seconds=histogram.quantile(0.5), p99_seconds=histogram.quantile(0.99)
    )


def _timestamp(seconds: float) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromNanoseconds(int(seconds * 1e9))
    return stamp
