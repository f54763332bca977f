"""The inference server as an Application of the runtime kit."""

from __future__ import annotations

import asyncio
import logging
import os
from concurrent.futures import ThreadPoolExecutor

import torch
import transformers
from grpc_health.v1 import health_pb2
from grpc_health.v1._async import HealthServicer

from infermesh.inference.v1 import inference_service_pb2 as pb
from infermesh.inference.v1 import inference_service_pb2_grpc as pb_grpc
from infermesh.inference.v1 import model_service_pb2 as model_pb
from infermesh.inference.v1 import model_service_pb2_grpc as model_grpc
from services.inference import metrics
from services.inference.accelerators import shared_reader
from services.inference.core import EmbedBatching, InferenceCore
from services.inference.lifecycle import ModelServicer
from services.inference.models.builtin import BUILTIN_SPECS, BuildOptions, build_model, parse_specs
from services.inference.models.continuous_batching import BatchingSettings
from services.inference.repository import ModelEntry, ModelRepository, ModelState
from services.inference.resources import ResourceMonitor
from services.inference.servicer import InferenceServicer
from services.inference.settings import InferenceSettings
from services.runtime.catalog import model_health_service
from services.runtime.operations import SERVICE as OPERATIONS_SERVICE
from services.runtime.operations import OperationsServicer, OperationStore, add_operations_servicer_to_server
from services.runtime.registry_client import RegistryClient
from services.runtime.server import Application, Registration, mark_serving, open_catalog_from

log = logging.getLogger(__name__)
SERVICE = pb.DESCRIPTOR.services_by_name["InferenceService"].full_name
MODEL_SERVICE = model_pb.DESCRIPTOR.services_by_name["ModelService"].full_name


def model_health_name(model_id: str) -> str:
    """Per-model health service name, so Envoy and Consul can route by model readiness."""
    return model_health_service(SERVICE, model_id)


def default_embed_instances(device: str, threads: int) -> int:
    """Two single-threaded instances beat one two-threaded instance on a CPU: measured on
    2 cores, MiniLM bf16 embeds 810 sentences/s as two batches of 64 side by side against
    600-670/s for one batch on both threads (no thread hand-offs per op, and a busy core
    stalls one batch instead of every op of the only one). A GPU runs one batch at a time."""
    return 2 if device == "cpu" and threads >= 2 else 1


class InferenceApp(Application):
    name = "inference"

    def __init__(self, settings: InferenceSettings) -> None:
        self.settings = settings
        # Progress bars and advisory warnings are noise in a server's structured log.
        transformers.utils.logging.disable_progress_bar()
        transformers.utils.logging.set_verbosity_error()
        batching = (
            BatchingSettings(
                max_batch_size=settings.max_batch_size,
                max_queue_size=settings.max_queue_size,
                num_blocks=settings.kv_cache_blocks,
                max_batch_tokens=settings.max_batch_tokens,
            )
            if settings.generation_batching
            else None
        )
        threads = settings.torch_threads or len(os.sched_getaffinity(0))
        options = BuildOptions(
            settings.data_dir,
            settings.device,
            settings.dtype,
            settings.max_context_tokens,
            threads,
            batching,
            settings.embed_instances or default_embed_instances(settings.device, threads),
        )
        specs = {**BUILTIN_SPECS, **parse_specs(settings.model_specs)}
        known = list(dict.fromkeys([*settings.models, *settings.available_models]))
        unknown = [m for m in known if m not in specs]
        if unknown:
            raise ValueError(f"no spec for models {unknown}; known: {sorted(specs)} (add them with MODEL_SPECS)")
        models = [build_model(specs[model_id], options) for model_id in known]
        torch.set_num_threads(threads)
        self.executor = ThreadPoolExecutor(
            max_workers=len(models) * settings.max_concurrent_inferences + 1, thread_name_prefix="model"
        )
        self.repository = ModelRepository(
            models,
            self.executor,
            settings.max_concurrent_inferences,
            memory_budget=settings.budget_bytes,
            lazy_load=settings.lazy_load,
        )
        self.core = InferenceCore(
            self.repository,
            self.executor,
            settings.default_max_tokens,
            EmbedBatching(
                settings.embed_max_batch_size, settings.embed_max_queue_delay_ms / 1000, settings.embed_max_queue_items
            ),
            max_audio_seconds=settings.max_audio_seconds,
        )
        self.operations = OperationStore()
        self.resources = ResourceMonitor(settings.device, self.repository.memory_used, shared_reader())
        metrics.export_accelerators()
        self._reaper: asyncio.Task | None = None
        # The catalog this server registers in; through it, the registry that keeps the
        # audit log of loads and unloads (none without a catalog: a server on its own).
        self.catalog = open_catalog_from(settings)
        self.registry = RegistryClient(self.catalog) if self.catalog is not None else None

    def registrations(self) -> list[Registration]:
        return [
            Registration(SERVICE, pb_grpc.add_InferenceServiceServicer_to_server, InferenceServicer(self.core)),
            Registration(
                MODEL_SERVICE,
                model_grpc.add_ModelServiceServicer_to_server,
                ModelServicer(self.repository, self.operations, self.resources, self.registry),
            ),
            Registration(
                OPERATIONS_SERVICE,
                add_operations_servicer_to_server,
                OperationsServicer(self.operations),
            ),
        ]

    def ready_models(self) -> tuple[str, ...]:
        """Models loaded and serving now (what the catalog advertises)."""
        return tuple(e.model.model_id for e in self.repository.entries() if e.state is ModelState.READY)

    @property
    def capabilities(self) -> tuple[str, ...]:
        """What this server's models can do (text-generation, chat, embedding, ...)."""
        found = {c.value for e in self.repository.entries() for c in e.model.capabilities}
        return tuple(sorted(found))

    async def start(self, health: HealthServicer) -> None:
        if self.catalog is not None:
            await self.catalog.start()

        async def report(entry: ModelEntry) -> None:
            ready = entry.state is ModelState.READY
            status = health_pb2.HealthCheckResponse.SERVING if ready else health_pb2.HealthCheckResponse.NOT_SERVING
            await health.set(model_health_name(entry.model.model_id), status)

        for entry in self.repository.entries():
            await report(entry)
        self.repository.on_change(report)
        await self.repository.load_all(self.settings.models)
        failed = [m for m in self.settings.models if self.repository.entry(m).state is ModelState.FAILED]
        if failed:
            raise RuntimeError(f"models failed to load: {', '.join(failed)}")
        if self.settings.idle_unload_seconds > 0:
            self._reaper = asyncio.create_task(self.repository.reap_idle(self.settings.idle_unload_seconds))
        await mark_serving(health, [SERVICE, MODEL_SERVICE, OPERATIONS_SERVICE])

    async def close(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
        await self.core.close()
        await self.repository.stop_all()
        self.executor.shutdown(wait=True, cancel_futures=True)
        if self.registry is not None:
            await self.registry.close()
        if self.catalog is not None:
            await self.catalog.close()
