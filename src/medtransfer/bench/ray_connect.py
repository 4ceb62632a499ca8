"""Connecting a driver to Ray while it does other work: a grid's fixed start-up cost, overlapped.

Starting a local Ray instance (~3 s) and each worker's first import of torch, Lightning and the training code
(~5 s on one core) are paid once per grid. Started on a thread, they run while the driver imports the same
libraries, validates the experiment and loads its data, instead of after. This module imports neither torch nor
the training code, so the command line can start Ray before it imports them itself.

Connecting off the main thread also keeps medtransfer's SIGTERM handler: ``ray.init`` on the main thread replaces
it with one that calls ``sys.exit``, so a terminated driver would not mark its runs interrupted.
"""

from __future__ import annotations

import importlib
import logging
import math
import os
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

from medtransfer.config import HardwareConfig
from medtransfer.config_files import validate_config
from medtransfer.errors import ConfigError, MedtransferError
from medtransfer.yaml_loader import safe_load_unique

SIGTERM_NOTE = "SIGTERM handler is not set"  # Ray's warning when it connects off the main thread: intended here


def _import_ray(local: bool):
    """Ray, imported. For a local instance, Ray is told before its import (it reads the setting then) to give the
    node the loopback address instead of the machine's network address: the instance serves this driver alone."""
    if local:
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # Ray's C++ crash handler also catches SIGTERM in the driver and aborts the process once it has shut down:
    # medtransfer's handler records the runs in flight as interrupted and exits 130 instead
    os.environ.setdefault("RAY_DISABLE_FAILURE_SIGNAL_HANDLER", "1")
    try:
        import ray
    except ImportError:
        raise ConfigError("hardware.executor: 'ray' needs Ray: pip install ray (or run without --workers/--address "
                          "for the sequential executor)") from None
    return ray


def ray_hardware(hw: HardwareConfig) -> HardwareConfig:
    """The hardware section as Ray runs it: one core (and torch thread) per run unless ``cpus_per_run`` says more."""
    return hw.model_copy(update={"cpus_per_run": hw.cpus_per_run or 1})


def task_options(hw: HardwareConfig) -> dict:
    """``ray.remote`` options of a run or pre-training task. A GPU task's worker exits after it (``max_calls`` 1):
    CUDA keeps the devices a process first saw, so a reused worker given another GPU by Ray would silently train on
    its previous one. Ray defaults to that only for GPUs given to ``ray.remote`` itself, not through ``.options``."""
    return {"num_cpus": hw.cpus_per_run, "num_gpus": hw.gpus_per_run, "max_retries": hw.max_retries,
            "retry_exceptions": False, "max_calls": 1 if hw.gpus_per_run else 0}


def capacity(ray, hw: HardwareConfig) -> int:
    """Runs at a time: ``workers``, or as many as the cluster's cores and GPUs hold. Claiming only what can start
    leaves the rest of the grid to other drivers on the same folder."""
    if hw.workers is not None:
        return hw.workers
    resources = ray.cluster_resources()
    fits = int(resources.get("CPU", 1) // hw.cpus_per_run)
    if hw.gpus_per_run:
        fits = min(fits, math.floor(resources.get("GPU", 0) / hw.gpus_per_run + 1e-9))
    return max(1, fits)


def warm_up() -> int:
    """Runs in a worker: import what a run needs, so the worker's first run does not pay for it."""
    importlib.import_module("medtransfer.bench.ray_tasks")
    return os.getpid()


class _DropSigtermNote(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return SIGTERM_NOTE not in record.getMessage()


class RayConnection:
    """Ray being connected on a thread: ``get()`` waits for it, ``close()`` disconnects (and stops a local instance).

    Once connected, CPU-only workers are warmed: one no-op task per run slot makes each worker import the training
    code, and Ray reuses those workers for the runs. GPU runs are not warmed: Ray ends a GPU task's worker after the
    task (so the next run's CUDA devices are its own), and a warm worker would serve no run.
    """

    def __init__(self, hw: HardwareConfig, verbose: bool, warm: bool = True):
        self.hw, self.verbose, self.warm = hw, verbose, warm
        self._ray, self._error = None, None
        self._closed = False
        self._connected, self._released = threading.Event(), threading.Event()
        self._thread = threading.Thread(target=self._connect, name="ray-connect", daemon=True)
        self._thread.start()

    def _connect(self) -> None:
        """Connect, then stay alive until ``close``: Ray starts a local instance's processes with a parent-death
        signal, which Linux sends when the starting *thread* ends, so this thread outlives the instance."""
        try:
            self._start()
        except BaseException as err:  # noqa: BLE001 - handed to the main thread by get()
            self._error = err
        finally:
            self._connected.set()
        self._released.wait()

    def _start(self) -> None:
        """Join ``hw.address`` or start a local instance sized ``workers x cpus_per_run``; then warm CPU workers."""
        ray = _import_ray(local=not self.hw.address)
        logging.getLogger("ray._private.worker").addFilter(_DropSigtermNote())
        quiet = {"logging_level": "INFO" if self.verbose else "WARNING", "log_to_driver": self.verbose}
        if self.hw.address:
            try:
                ray.init(address=self.hw.address, **quiet)
            except ConnectionError as err:  # nothing listens there: one line, before any training
                raise MedtransferError(f"hardware.address {self.hw.address!r}: no Ray cluster to join ({err}); "
                                       "start one with 'ray start --head' or run with --workers N for a local "
                                       "instance") from None
        else:
            # "local": a new instance even where `ray start` left one running, which ray.init would otherwise join
            ray.init(address="local", num_cpus=self.hw.workers * self.hw.cpus_per_run if self.hw.workers else None,
                     include_dashboard=False, _node_ip_address="127.0.0.1", **quiet)
        self._ray = ray
        if self.warm and not self.hw.gpus_per_run:
            task = ray.remote(warm_up).options(num_cpus=self.hw.cpus_per_run)
            self.warming = [task.remote() for _ in range(capacity(ray, self.hw))]

    def get(self):
        """The connected ``ray`` module; the connection's error, raised here, if it failed."""
        self._connected.wait()
        if self._error is not None:
            raise self._error
        return self._ray

    def close(self) -> None:
        """Disconnect once the connection attempt has ended; a local instance stops with its workers."""
        if self._closed:
            return
        self._closed = True
        self._connected.wait()
        try:
            if self._ray is not None:
                self._ray.shutdown()
        finally:
            self._released.set()
            self._thread.join()


@contextmanager
def ray_session(hw: HardwareConfig, verbose: bool, warm: bool = False) -> Iterator:
    """Ray, connected for the block (see ``RayConnection``)."""
    connection = RayConnection(hw, verbose, warm)
    try:
        yield connection.get()
    finally:
        connection.close()


def early_connection(experiment: Path, workers: Optional[int], address: Optional[str],
                     verbose: bool) -> Optional[RayConnection]:
    """Start connecting before the command line imports torch, when the flags or the file's ``hardware`` ask for Ray.

    Reads only the file's ``hardware`` section; a file that does not read or validate starts nothing, and its full
    validation then reports the error as usual.
    """
    try:
        data = safe_load_unique(Path(experiment).read_text())
        hardware = dict(data.get("hardware") or {}) if isinstance(data, dict) else {}
        hardware.update({"executor": "ray", **({"workers": workers} if workers else {}),
                         **({"address": address} if address else {})} if workers or address else {})
        hw = validate_config(hardware, HardwareConfig)
    except Exception:  # noqa: BLE001 - the full validation names the problem
        return None
    return RayConnection(ray_hardware(hw), verbose) if hw.executor == "ray" else None
