"""A grid's runs as Ray tasks: on a local Ray instance medtransfer starts and stops, or on a cluster it joins.

Ray places the tasks on cores and GPUs (``cpus_per_run``, fractional ``gpus_per_run``), retries a run whose worker
process died (``max_retries``) and never retries a run that raised (a data or config error would only fail again).
This driver keeps what only it can do: it claims each run in the store just before submitting it, so several
drivers on one folder share the grid, keeps the claims' leases alive, and is the only writer of the results
database. Runs of a pre-training init are submitted when its pre-training task has produced the checkpoint whose
hash names them (a fusion's, when every member's has), the other runs do not wait for it.
"""

from __future__ import annotations

import time
from collections import deque
from contextlib import suppress
from pathlib import Path
from typing import Optional

from tqdm.auto import tqdm

from medtransfer.bench.claims import LeaseKeeper, pass_started, process_owner
from medtransfer.bench.fusion import identify_fusions
from medtransfer.bench.grid import RunSpec, expand, inits_read
from medtransfer.bench.ray_connect import RayConnection, capacity, ray_hardware, task_options
from medtransfer.bench.runner import Prepared, RunSummary, _check_fits, prepare, run_identity
from medtransfer.bench.store import ClaimLost, ResultStore
from medtransfer.config import ExperimentConfig
from medtransfer.interrupts import Interrupted
from medtransfer.models.checkpoint import file_normalisation, sha256_file
from medtransfer.pretrain.run import default_output

POLL_S = 2.0  # how often runs held by other drivers are checked again while nothing finishes


class RayGrid:
    """One pass over a grid on Ray, from this driver's side."""

    def __init__(self, ray, cfg: ExperimentConfig, prepared: Prepared, store: ResultStore, verbose: bool,
                 fail_fast: bool, lease_s: float):
        from medtransfer.bench.ray_tasks import pretrain_task, train_task

        self.ray, self.cfg, self.prepared, self.store = ray, cfg, prepared, store
        self.verbose, self.fail_fast, self.lease_s = verbose, fail_fast, lease_s
        hw = cfg.hardware
        options = task_options(hw)
        self.train = ray.remote(**options)(train_task)
        self.pretrain = ray.remote(**options)(pretrain_task)
        self.capacity = capacity(ray, hw)
        self.owner, self.since = process_owner(), pass_started()
        self.specs = expand(cfg)
        self.queue: deque[tuple[RunSpec, str]] = deque()
        self.held: list[tuple[RunSpec, str]] = []
        self.running: dict = {}  # ObjectRef -> (spec, run_id)
        self.pretraining: dict = {}  # ObjectRef -> init name
        self.skipped = self.done = 0
        self.failed: list[str] = []
        self.lost: set[str] = set()  # inits whose runs a failed pre-training wrote off

    def _resolved(self, spec: RunSpec) -> dict:
        return spec.resolved(self.cfg, *run_identity(self.prepared, spec))

    def _enqueue(self, names: set[str] | None = None) -> None:
        """Queue the unfinished runs of the inits ``names`` (None: every init whose weights are known, i.e. all but
        those waiting for a pre-training); count the rest."""
        names = set(self.prepared.init_sha256) if names is None else names
        for spec in self.specs:
            if spec.init.name not in names:
                continue
            run_id = spec.run_id(self.cfg, *run_identity(self.prepared, spec))
            if self.store.status(run_id) == "done":
                self.skipped += 1
                self.bar.update()
            else:
                self.queue.append((spec, run_id))
        self.queue = deque(sorted(self.queue, key=self._longest_first))

    def _longest_first(self, item: tuple[RunSpec, str]) -> tuple:
        """Seed by seed, as sequentially (whole seeds finish early), but within a seed the runs likely to take longest
        go first — those training the backbone, then larger subsets: a grid then ends on short runs, not on one
        worker finishing a long run while the others idle."""
        spec = item[0]
        n_train = len(self.prepared.subsets[spec.dataset_label, spec.fraction, spec.seed])
        return self.cfg.seeds.index(spec.seed), spec.strategy.frozen_backbone, -n_train

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
                names = inits_read(spec.init)
                files = {name: self.prepared.init_files[name] for name in names}
                # absolute paths: a worker of a joined cluster does not share this driver's working directory
                ref = self.train.remote(self.cfg, spec,
                                        {name: None if f is None else str(f.resolve()) for name, f in files.items()},
                                        {name: self.prepared.init_normalisation[name] for name in names},
                                        str(self.store.run_dir(run_id).resolve()), self.verbose)
                self.running[ref] = (spec, run_id)

    def _pretrained(self, ref) -> None:
        """A pre-training task ended: key its init by the checkpoint's hash and queue the init's runs, and those of
        the fusions whose last unknown member it was."""
        name = self.pretraining.pop(ref)
        try:
            checkpoint = Path(self.ray.get(ref))
            _check_fits(self.cfg, checkpoint, str(checkpoint), self.prepared)
        except Exception as err:  # noqa: BLE001 - the other inits' runs go on
            if self.fail_fast:
                raise
            runs = [spec for spec in self.specs  # its fusions' runs too, unless another member's failure took them
                    if name in inits_read(spec.init) and spec.init.name not in self.lost]
            self.lost |= {spec.init.name for spec in runs}
            self.failed += [f"{spec.labels()}: pre-training of init {name!r} failed: {err}" for spec in runs]
            self.bar.update(len(runs))
            return
        self.prepared.init_files[name] = checkpoint
        self.prepared.init_sha256[name] = sha256_file(checkpoint)
        self.prepared.init_normalisation[name] = file_normalisation(checkpoint)
        known = set(self.prepared.init_sha256)
        identify_fusions(self.cfg, self.prepared)
        self._enqueue({name, *(set(self.prepared.init_sha256) - known)})

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


def run_on_ray(cfg: ExperimentConfig, folder: Path, verbose: bool, fail_fast: bool, progress: bool, lease_s: float,
               connection: Optional[RayConnection] = None) -> RunSummary:
    """Check the grid (``prepare``) while Ray connects, then run every unfinished run of ``cfg`` as Ray tasks.

    ``connection`` is one the command line started before importing torch; it is used when it was started for this
    hardware section (it always is, unless the file changed in between), else closed and a new one started."""
    hardware = ray_hardware(cfg.hardware)
    cfg = cfg.model_copy(update={"hardware": hardware})  # hardware is outside the run ids: they do not change
    if connection is not None and connection.hw != hardware:
        connection.close()
        connection = None
    connection = connection or RayConnection(hardware, verbose)
    try:
        prepared = prepare(cfg)
        store = ResultStore(folder)
        ray = connection.get()
        return RayGrid(ray, cfg, prepared, store, verbose, fail_fast, lease_s).run(progress)
    finally:
        connection.close()
