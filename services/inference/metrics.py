"""The inference server's Prometheus metrics (the runtime kit adds per-call counts)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

BATCH_SIZES = (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 256)

QUEUE_DEPTH = Gauge(
    "infermesh_inference_queue_depth",
    "Requests (generation) or inputs (embeddings) admitted and not yet done.",
    ["model"],
)
BATCH_SIZE = Histogram(
    "infermesh_inference_batch_size", "Sequences or inputs in each forward pass.", ["model"], buckets=BATCH_SIZES
)
TIME_TO_FIRST_TOKEN = Histogram(
    "infermesh_inference_time_to_first_token_seconds",
    "From admission to the first generated text.",
    ["model"],
    buckets=(0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32),
)
TIME_PER_OUTPUT_TOKEN = Histogram(
    "infermesh_inference_time_per_output_token_seconds",
    "Mean time between generated tokens after the first, per request.",
    ["model"],
    buckets=(0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28),
)
TOKENS = Counter(
    "infermesh_inference_tokens_total", "Tokens processed, by direction (input, output).", ["model", "direction"]
)
REJECTED = Counter("infermesh_inference_rejected_total", "Requests refused because the queue was full.", ["model"])
LOAD_SECONDS = Gauge(
    "infermesh_inference_model_load_seconds", "Time the last load (and warmup) of a model took.", ["model"]
)
MODEL_MEMORY = Gauge(
    "infermesh_inference_model_memory_bytes",
    "Memory a model holds (CUDA allocations on GPU, weights on CPU).",
    ["model"],
)
EVICTIONS = Counter(
    "infermesh_inference_evictions_total", "Models unloaded to make room or after idling.", ["model", "cause"]
)
