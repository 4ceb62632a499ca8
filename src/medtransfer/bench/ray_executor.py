"""A grid's runs as Ray tasks: on a local Ray instance medtransfer starts and stops, or on a cluster it joins.

Ray places the tasks on cores and GPUs (``cpus_per_run``, fractional ``gpus_per_run``), retries a run whose worker
process died (``max_retries``) and never retries a run that raised (a data or config error would only fail again).
This driver keeps what only it can do: it claims each run in the store just before submitting it, so several
drivers on one folder share the grid, keeps the claims' leases alive, and is the only writer of the results
database. Runs of a pre-training init are submitted when its pre-training task has produced the checkpoint whose
hash names them; the other runs do not wait for it.
"""

from __future__ import annotations

import math
import os
import time
from collections import deque
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Iterator

from tqdm.auto import tqdm

from medtransfer.bench.claims import LeaseKeeper, pass_started, process_owner
from medtransfer.bench.grid import RunSpec, expand
from medtransfer.bench.runner import Prepared, RunSummary, _check_fits, run_identity
from medtransfer.bench.store import ClaimLost, ResultStore
from medtransfer.config import ExperimentConfig, HardwareConfig
from medtransfer.errors import ConfigError, MedtransferError
from medtransfer.interrupts import Interrupted
from medtransfer.models.checkpoint import file_normalisation, sha256_file
from medtransfer.pretrain.run import default_output

POLL_S = 2.0  # how often runs held by other drivers are checked again while nothing finishes


def _import_ray(local: bool):
    """Ray, imported. For a local instance, Ray is told before its import (it reads the setting then) to give the
    node the loopback address instead of the machine's network address: the instance serves this driver alone."""
    if local:
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    try:
        import ray
    except ImportError:
        raise ConfigError("hardware.executor: 'ray' needs Ray: pip install ray (or run without --workers/--address "
                          "for the sequential executor)") from None
    return ray


@contextmanager
def ray_session(hw: HardwareConfig, verbose: bool) -> Iterator:
    """Ray, connected: to ``hw.address`` if given, else to a local instance sized ``workers x cpus_per_run``
    cores that is shut down on leaving (a joined cluster stays up; only this driver disconnects)."""
    ray = _import_ray(local=not hw.address)
    quiet = {"logging_level": "INFO" if verbose else "WARNING", "log_to_driver": verbose}
    if hw.address:
        try:
            ray.init(address=hw.address, **quiet)
        except ConnectionError as err:  # nothing listens there: say so before any training, in one line
            raise MedtransferError(f"hardware.address {hw.address!r}: no Ray cluster to join ({err}); start one with "
                                   "'ray start --head' or run with --workers N for a local instance") from None
    else:
        ray.init(num_cpus=hw.workers * hw.cpus_per_run if hw.workers else None, include_dashboard=False,
                 _node_ip_address="127.0.0.1", **quiet)
    try:
        yield ray
    finally:
        ray.shutdown()


def _capacity(ray, hw: HardwareConfig) -> int:
    """Runs claimed at a time: ``workers``, or as many as the cluster's cores and GPUs hold. Claiming only what can
    start leaves the rest of the grid to other drivers on the same folder."""
    if hw.workers is not None:
        return hw.workers
    resources = ray.cluster_resources()
    fits = int(resources.get("CPU", 1) // hw.cpus_per_run)
    if hw.gpus_per_run:
        fits = min(fits, math.floor(resources.get("GPU", 0) / hw.gpus_per_run + 1e-9))
    return max(1, fits)


class RayGrid:
    """One pass over a grid on Ray, from this driver's side."""

    def __init__(self, ray, cfg: ExperimentConfig, prepared: Prepared, store: ResultStore, verbose: bool,
                 fail_fast: bool, lease_s: float):
        from medtransfer.bench.ray_tasks import pretrain_task, train_task

        self.ray, self.cfg, self.prepared, self.store = ray, cfg, prepared, store
        self.verbose, self.fail_fast, self.lease_s = verbose, fail_fast, lease_s
        hw = cfg.hardware
        resources = {"num_cpus": hw.cpus_per_run, "num_gpus": hw.gpus_per_run}
        self.train = ray.remote(train_task).options(max_retries=hw.max_retries, retry_exceptions=False, **resources)
        self.pretrain = ray.remote(pretrain_task).options(max_retries=hw.max_retries, retry_exceptions=False,
                                                          **resources)
        self.capacity = _capacity(ray, hw)
        self.owner, self.since = process_owner(), pass_started()
        self.specs = expand(cfg)
        self.queue: deque[tuple[RunSpec, str]] = deque()
        self.held: list[tuple[RunSpec, str]] = []
        self.running: dict = {}  # ObjectRef -> (spec, run_id)
        self.pretraining: dict = {}  # ObjectRef -> init name
        self.skipped = self.done = 0
        self.failed: list[str] = []

    def _resolved(self, spec: RunSpec) -> dict:
        return spec.resolved(self.cfg, *run_identity(self.prepared, spec))

    def _enqueue(self, init_name: str | None = None) -> None:
        """Queue the unfinished runs of one init (all inits without a pre-training when None); count the rest."""
        for spec in self.specs:
            wanted = (spec.init.name == init_name if init_name
                      else spec.init.name not in self.prepared.pretrain_plans)
            if not wanted:
                continue
            run_id = spec.run_id(self.cfg, *run_identity(self.prepared, spec))
            if self.store.status(run_id) == "done":
                self.skipped += 1
                self.bar.update()
            else:
                self.queue.append((spec, run_id))

    def _submit(self, leases: LeaseKeeper) -> None:
        """Claim and submit queued runs while fewer than ``capacity`` run; runs held elsewhere are asked again."""
        self.queue.extendleft(reversed(self.held))
        self.held.clear()
        while self.queue and len(self.running) < self.capacity:
            spec, run_id = self.queue.popleft()
            outcome = self.store.claim(run_id, self._resolved(spec), spec.labels(), self.owner, self.lease_s,
                                       self.since)
            if outcome == "held":
                self.held.append((spec, run_id))
            elif outcome == "done":
                self.skipped += 1
                self.bar.update()
            elif outcome == "ended":
                self.failed.append(f"{spec.labels()}: failed in another process during this pass")
                self.bar.update()
            else:
                leases.hold(run_id)
                init_file = self.prepared.init_files[spec.init.name]
                # absolute paths: a worker of a joined cluster does not share this driver's working directory
                ref = self.train.remote(self.cfg, spec, None if init_file is None else str(init_file.resolve()),
                                        self.prepared.init_normalisation[spec.init.name],
                                        str(self.store.run_dir(run_id).resolve()), self.verbose)
                self.running[ref] = (spec, run_id)

    def _pretrained(self, ref) -> None:
        """A pre-training task ended: key its init by the checkpoint's hash and queue the init's runs."""
        name = self.pretraining.pop(ref)
        try:
            checkpoint = Path(self.ray.get(ref))
            _check_fits(self.cfg, checkpoint, str(checkpoint), self.prepared)
        except Exception as err:  # noqa: BLE001 - the other inits' runs go on
            if self.fail_fast:
                raise
            runs = [spec for spec in self.specs if spec.init.name == name]
            self.failed += [f"{spec.labels()}: pre-training of init {name!r} failed: {err}" for spec in runs]
            self.bar.update(len(runs))
            return
        self.prepared.init_files[name] = checkpoint
        self.prepared.init_sha256[name] = sha256_file(checkpoint)
        self.prepared.init_normalisation[name] = file_normalisation(checkpoint)
        self._enqueue(name)

    def _trained(self, ref, leases: LeaseKeeper) -> None:
        """A run's task ended: store its result, or its error (raised, or its worker died beyond the retries)."""
        spec, run_id = self.running.pop(ref)
        leases.release(run_id)
        self.bar.update()
        try:
            out = self.ray.get(ref)
        except self.ray.exceptions.RayError as err:
            with suppress(ClaimLost):  # stalled past the lease: the run is another driver's now
                self.store.fail(run_id, str(err), owner=self.owner)
            self.failed.append(f"{spec.labels()}: {str(err).strip().splitlines()[-1]}")
            if self.fail_fast:
                raise
            return
        try:
            self.store.finish(run_id, out["metrics"], out["per_class"], out["val_metrics"], out["timings"],
                              extra=out["extra"], owner=self.owner)
            self.done += 1
        except ClaimLost:  # stalled past the lease; the driver that took the run over stores it
            self.skipped += 1

    def _wait(self, refs: list) -> list:
        """The refs among ``refs`` that are ready within POLL_S. A signal handled while Ray's core worker waits
        (medtransfer's Ctrl-C/SIGTERM handler raises ``Interrupted``) comes back wrapped in a SystemError by Ray's
        Cython layer: unwrap it, so the interrupt path runs instead of a crash."""
        try:
            return self.ray.wait(refs, num_returns=1, timeout=POLL_S)[0]
        except SystemError as err:
            if isinstance(err.__cause__, (Interrupted, KeyboardInterrupt)):
                raise err.__cause__ from None
            raise

    def _cancel(self, reason: str) -> None:
        """Stop every task of this driver and mark its runs in flight interrupted, so the next pass redoes them."""
        for ref in [*self.running, *self.pretraining]:
            self.ray.cancel(ref, force=True)
        for spec, run_id in self.running.values():
            self.store.fail(run_id, reason, status="interrupted", owner=self.owner)
        self.running.clear()
        self.pretraining.clear()

    def run(self, progress: bool) -> RunSummary:
        folder = self.store.folder
        self.bar = tqdm(total=len(self.specs), desc=self.cfg.name, unit="run", disable=not progress)
        with LeaseKeeper(self.store, self.owner, self.lease_s) as leases:
            try:
                for name, plan in self.prepared.pretrain_plans.items():
                    pcfg = plan.cfg
                    output = pcfg.output or default_output(pcfg, folder / "pretrain")
                    ref = self.pretrain.remote(pcfg, str(output.resolve()), self.cfg.hardware.cpus_per_run,
                                               self.verbose)
                    self.pretraining[ref] = name
                self._enqueue()
                while self.queue or self.held or self.running or self.pretraining:
                    self._submit(leases)
                    self.bar.set_postfix_str(f"running {len(self.running)}, failed {len(self.failed)}"
                                             + (f", {len(self.held)} running elsewhere" if self.held else ""))
                    waiting = [*self.running, *self.pretraining]
                    if not waiting:
                        time.sleep(POLL_S)
                        continue
                    ready = self._wait(waiting)
                    for ref in ready:
                        if ref in self.pretraining:
                            self._pretrained(ref)
                        else:
                            self._trained(ref, leases)
            except (KeyboardInterrupt, Interrupted) as err:
                self._cancel(f"interrupted by {err or 'the user'}")
                raise
            except BaseException as err:  # --fail-fast, or the store failed: leave no task or claim behind
                self._cancel(f"cancelled: the driver stopped ({type(err).__name__}: {err})")
                raise
            finally:
                self.bar.close()
        return RunSummary(folder, len(self.specs), self.skipped, self.done, self.failed)


def run_on_ray(cfg: ExperimentConfig, prepared: Prepared, store: ResultStore, verbose: bool, fail_fast: bool,
               progress: bool, lease_s: float) -> RunSummary:
    """Run every unfinished run of ``cfg`` as Ray tasks; one thread per run unless ``cpus_per_run`` says more."""
    hardware = cfg.hardware.model_copy(update={"cpus_per_run": cfg.hardware.cpus_per_run or 1})
    cfg = cfg.model_copy(update={"hardware": hardware})  # hardware is outside the run ids: they do not change
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    with ray_session(hardware, verbose) as ray:
        return RayGrid(ray, cfg, prepared, store, verbose, fail_fast, lease_s).run(progress)
