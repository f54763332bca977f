"""Readings of the CUDA devices this process can see: utilization and memory per device.

NVML (nvidia-ml-py, which loads the driver's libnvidia-ml when first asked) gives
utilization and device-wide memory; where it cannot be loaded, torch.cuda gives the
memory and utilization is unknown. Without CUDA there is nothing to read, and NVML is
never tried. A reading never raises: what fails is logged once and reads as unknown, so
neither a scrape nor GetServerResources breaks on a GPU that misbehaves.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class AcceleratorReading:
    index: int  # torch's numbering (after CUDA_VISIBLE_DEVICES): cuda:{index}
    name: str
    uuid: str  # as NVML and nvidia-smi print it: GPU-... (MIG-... for a MIG instance)
    utilization: float | None  # 0..1 of NVML's last sample period with a kernel running; None: unknown
    memory_used_bytes: int | None  # every process's, device-wide; None: unknown
    memory_total_bytes: int
    allocated_bytes: int  # this process's torch allocator, in tensors

    @property
    def device(self) -> str:
        return f"cuda:{self.index}"


class Nvml:
    """NVML, initialised on first use and only once; a library that cannot be loaded
    (no NVIDIA driver, a CPU host) is reported once and not tried again."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._module: Any = None
        self._tried = False

    def ready(self) -> bool:
        with self._lock:
            if not self._tried:
                self._tried = True
                try:
                    import pynvml

                    pynvml.nvmlInit()
                    self._module = pynvml
                except Exception as exc:  # noqa: BLE001 - NVMLError_LibraryNotFound, DriverNotLoaded, ...
                    log.warning("NVML unavailable (%s): GPU memory from torch.cuda, utilization unknown", exc)
            return self._module is not None

    def handle(self, uuid: str) -> Any | None:
        """The NVML handle of the device with this UUID (as nvidia-smi prints it), or None."""
        if not self.ready():
            return None
        try:
            return self._module.nvmlDeviceGetHandleByUUID(uuid)
        except Exception:  # noqa: BLE001 - a device NVML does not know; the caller reports it
            return None

    def utilization(self, handle: Any) -> float:
        return self._module.nvmlDeviceGetUtilizationRates(handle).gpu / 100

    def memory(self, handle: Any) -> tuple[int, int]:
        """Used and total bytes, device-wide."""
        info = self._module.nvmlDeviceGetMemoryInfo(handle)
        return int(info.used), int(info.total)


def nvml_uuid(props: Any) -> str:
    """A device's UUID in NVML's spelling; torch prints it without NVML's `GPU-` prefix."""
    uuid = str(props.uuid)
    return uuid if uuid.startswith(("GPU-", "MIG-")) else f"GPU-{uuid}"


class AcceleratorReader:
    def __init__(self) -> None:
        self.nvml = Nvml()
        self._reported: set[str] = set()
        self._lock = threading.Lock()

    def read(self) -> list[AcceleratorReading]:
        """One reading per CUDA device (a device that cannot be read at all is left out);
        nothing without CUDA."""
        try:
            count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        except Exception as exc:  # noqa: BLE001 - a monitoring read must not fail its caller
            self._once("devices", "counting CUDA devices failed: %s", exc)
            return []
        readings = []
        for index in range(count):
            try:
                readings.append(self._read(index))
            except Exception as exc:  # noqa: BLE001
                self._once(f"cuda:{index}", "reading cuda:%d failed: %s", index, exc)
        return readings

    def _read(self, index: int) -> AcceleratorReading:
        props = torch.cuda.get_device_properties(index)  # needs no CUDA context
        uuid = nvml_uuid(props)
        # The allocator's bookkeeping, host-side: 0 on a device this process never used.
        allocated = torch.cuda.memory_allocated(index) if torch.cuda.is_initialized() else 0
        utilization, used, total = None, None, props.total_memory
        handle = self.nvml.handle(uuid)
        if handle is not None:
            utilization = self._try(f"utilization of cuda:{index}", self.nvml.utilization, handle)
            used, total = self._try(f"memory of cuda:{index}", self.nvml.memory, handle) or (None, total)
        else:
            if self.nvml.ready():
                self._once(f"handle {index}", "NVML does not know cuda:%d (%s); reading it through torch", index, uuid)
            # mem_get_info needs a context on the device: asked only where this process
            # has one already (its allocator holds memory there), so a reading never makes one.
            if torch.cuda.is_initialized() and torch.cuda.memory_reserved(index) > 0:
                free = self._try(f"free memory of cuda:{index}", lambda: torch.cuda.mem_get_info(index)[0])
                used = total - free if free is not None else None
        return AcceleratorReading(index, props.name, uuid, utilization, used, total, allocated)

    def _try(self, what: str, read: Callable[..., T], *args: object) -> T | None:
        try:
            return read(*args)
        except Exception as exc:  # noqa: BLE001 - e.g. NVMLError_NotSupported on some devices
            self._once(what, "reading the %s failed; reported as unknown: %s", what, exc)
            return None

    def _once(self, key: str, message: str, *args: object) -> None:
        with self._lock:
            if key in self._reported:
                return
            self._reported.add(key)
        log.warning(message, *args)


@functools.cache
def shared_reader() -> AcceleratorReader:
    """The process's reader: NVML is process-wide state, initialised once however many
    servers (tests start several) and scrapes read it."""
    return AcceleratorReader()
