"""The service: claim frames from the inbox, enhance them, commit results, and keep going.

Threads and the hand-offs between them (each hand-off is a small bounded :class:`Pipe`)::

    intake ──claimed──> readers ──loaded──> workers (one per engine) ──enhanced──> writers

* *intake* watches the inbox and claims a ready frame only when the next stage has room,
  so unclaimed frames wait in the inbox (where the station can still see them) and a stop
  leaves little to finish;
* *readers* read, hash, decode and measure the percentile window, so a frame's I/O overlaps
  the previous frame's enhancement and the workers' serial path holds only the engine;
* *workers*, one per engine from :func:`drdaemon.engines.build_engines`, all take from the
  same pipe, so the least busy engine (device) gets the next frame;
* *writers* encode, write and commit (:mod:`drdaemon.folders.commit`).

Readers and writers are counted apart from the engines (``service.readers``,
``service.writers``; :mod:`drdaemon.service.threads`): their host work per frame is larger
than a GPU's compute.

A frame that cannot be read, enhanced or written goes to ``failed/`` with a reason and the
daemon goes on. An engine raising :class:`~drdaemon.errors.DeviceLost` stops the daemon
with :data:`EXIT_DEVICE_LOST`, leaving unfinished frames in ``work/`` for the next start.
SIGTERM or SIGINT stops claiming, finishes every claimed frame and exits 0, saying what it
finishes and roughly how long that takes; a second one exits at once (128 + the signal's
number), leaving the frames in ``work/`` for the next start, as a crash would. SIGHUP reloads
the weights, except in a daemon started from a terminal: there it is the terminal closing,
and stops the daemon as SIGTERM does.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import stat
import sys
import threading
import time
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TypeVar

import structlog

from drdaemon import __version__
from drdaemon.config import ConfigError, Settings
from drdaemon.engines import Engine, build_checked_engines, reader_window
from drdaemon.errors import DeviceLost, FrameError, Reason, Stage
from drdaemon.exits import EXIT_DEVICE_LOST, EXIT_INTERNAL_ERROR, EXIT_OK
from drdaemon.folders.claim import SettlingWork, WorkItem, WorkLock, claim, pending_work, work_owner
from drdaemon.folders.commit import Finisher, FrameChanged, Plan, display_name, fail_frame
from drdaemon.folders.mounts import MountWatch
from drdaemon.folders.space import FreeBytes, free_bytes
from drdaemon.folders.watcher import Candidate, InboxWatcher
from drdaemon.io.formats import configured_output_format
from drdaemon.logs import use_json
from drdaemon.service.frame import (
    EnhancedFrame,
    LoadedFrame,
    as_frame_error,
    commit_frame,
    enhance_frame,
    load_frame,
    read_limits,
    stage_timings,
)
from drdaemon.service.notify import SystemdNotifier
from drdaemon.service.output import BACKOFF_FIRST_S, BACKOFF_MAX_S, OutputGate, blocking_reason
from drdaemon.service.pipe import Pipe
from drdaemon.service.prometheus import DaemonMetrics
from drdaemon.service.pruning import Pruner
from drdaemon.service.startup import load_engines, prepare_folders, serve_metrics
from drdaemon.service.threads import stage_threads

log = structlog.get_logger(__name__)

T = TypeVar("T")

#: Times a claimed frame may be found changed (and read again) before it fails as ``changed``.
MAX_CHANGES = 5
#: Seconds between two ``still_stopping`` lines while a stop waits for frames to finish.
STOP_REPORT_EVERY_S = 10.0


def has_controlling_terminal() -> bool:
    """Whether this process has a controlling terminal (started from a shell; not under systemd)."""
    try:
        fd = os.open("/dev/tty", os.O_RDONLY | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError:
        return False
    os.close(fd)
    return True


def detach_from_closed_terminal() -> None:
    """Point stdin, stdout and stderr that are a terminal at /dev/null: a closed terminal fails every write.

    Called on the hangup, so that the stop's log lines and the last frames' do not fail
    (with EIO) and turn a clean stop into an internal error.
    """
    null = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
    try:
        null_device = os.fstat(null).st_rdev
        for fd in (0, 1, 2):
            with contextlib.suppress(OSError):
                # isatty() fails on a terminal that has hung up: any character device but /dev/null is one.
                st = os.fstat(fd)
                if stat.S_ISCHR(st.st_mode) and st.st_rdev != null_device:
                    os.dup2(null, fd)
    finally:
        os.close(null)


#: Seconds a waiting thread may take beyond its announced wait before the watchdog is withheld.
WAIT_GRACE_S = 2.0


class Progress:
    """Frames in flight, the last moment any stage moved, and waits by design; feeds the systemd watchdog.

    A thread that waits on purpose (a writer holding its frame while the outbox refuses it, the
    intake while claimed frames settle) announces how long it will wait: the daemon is alive
    until then (plus :data:`WAIT_GRACE_S`), even though nothing moves. A thread stuck in a call
    that never returns announces nothing, and the watchdog is withheld.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.in_flight = 0
        self.last_progress_mono = time.monotonic()
        #: Seconds from claim to commit of recent frames (a moving average); None before the first.
        self.frame_s: float | None = None
        #: Until when a thread announced it waits on purpose (:meth:`waiting`).
        self.waiting_until_mono = float("-inf")

    def took(self, seconds: float) -> None:
        """A frame was committed ``seconds`` after its claim: update the recent pace."""
        with self._lock:
            self.frame_s = seconds if self.frame_s is None else 0.7 * self.frame_s + 0.3 * seconds

    def claimed(self) -> None:
        with self._lock:
            self.in_flight += 1
            self.last_progress_mono = time.monotonic()

    def moved(self) -> None:
        self.last_progress_mono = time.monotonic()

    def waiting(self, seconds: float) -> None:
        """A thread waits on purpose for ``seconds`` (then tries again)."""
        until = time.monotonic() + seconds + WAIT_GRACE_S
        with self._lock:
            self.waiting_until_mono = max(self.waiting_until_mono, until)

    def waits_by_design(self, now_mono: float) -> bool:
        return now_mono <= self.waiting_until_mono

    def finished(self) -> None:
        with self._lock:
            self.in_flight -= 1
            self.last_progress_mono = time.monotonic()


class Daemon:
    """One running daemon over one set of folders; :meth:`run` returns the exit status."""

    def __init__(
        self,
        settings: Settings,
        engines: list[Engine] | None = None,
        metrics: DaemonMetrics | None = None,
        notifier: SystemdNotifier | None = None,
        free_space: FreeBytes = free_bytes,
    ) -> None:
        self.settings = settings
        #: Reads a folder's free space (injected by tests); feeds the gauges, the claim floor and retention.
        self.free_space = free_space
        self.folders = settings.folders
        self._engines = engines
        self.metrics = metrics if metrics is not None else DaemonMetrics()
        self.notifier = notifier if notifier is not None else SystemdNotifier()
        self.limits = read_limits(settings.input)
        self.window_percentiles = reader_window(settings.engine)
        self.finisher = Finisher.for_folders(
            self.folders,
            preview=settings.output.preview_png,
            output_format=configured_output_format(settings.output, settings.engine),
        )
        self.watcher = InboxWatcher(self.folders.inbox, settings.watch, self.limits)
        self.settling = SettlingWork(settings.watch.stability_wait_s)
        output_folders = [self.folders.outbox, self.folders.archive, self.folders.failed, self.folders.work]
        self.mounts = MountWatch(
            (name, path) for name, path in self.folders if name in ("outbox", "archive", "failed", "work")
        )
        self.output_gate = OutputGate(self.metrics, output_folders, self.mounts)
        self.progress = Progress()
        self.stop_requested = threading.Event()
        self.reload_requested = threading.Event()  # SIGHUP: reload the weights
        self.exit_status = EXIT_OK
        self._fatal_lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self.metrics_port: int | None = None
        self._stop_signal: str | None = None
        self._stop_announced = False
        self._stop_requested_mono: float | None = None
        self._next_stop_report_s = STOP_REPORT_EVERY_S
        #: What SIGHUP does: stop (a daemon started in a terminal, which a hangup closes) or reload the weights.
        self.hangup_stops = False
        self._engine_count = 1

    # -- start-up -------------------------------------------------------------------------
    def prepare_folders(self) -> None:
        """Create missing folders; refuse folders that cannot share atomic renames (:mod:`.startup`)."""
        prepare_folders(self.folders)

    def load_engines(self) -> list[Engine]:
        """Build the engines (unless given); see :func:`drdaemon.service.startup.load_engines`."""
        if self._engines is None:
            self._engines = load_engines(self.settings)
        if not self._engines:
            raise ConfigError("engine: the configuration yields no engine to run")
        return self._engines

    def _publish_build_info(self, engines: list[Engine]) -> None:
        torch_module = sys.modules.get("torch")
        try:
            torch_version = version("torch")
        except PackageNotFoundError:
            torch_version = ""
        cuda = getattr(getattr(torch_module, "version", None), "cuda", None) if torch_module else None
        self.metrics.set_build_info(
            version=__version__,
            engine=engines[0].name,
            weights_sha256=engines[0].weights_sha256,
            torch=torch_version,
            cuda=cuda,
        )

    # -- the run --------------------------------------------------------------------------
    def run(self, install_signal_handlers: bool = True) -> int:
        """Run until a stop signal (exit 0) or a lost device (exit 70).

        The signal handlers come first: a SIGTERM during start-up (loading weights, warm-up,
        recovery) lets the step finish and exits 0 before any frame is claimed.
        """
        if install_signal_handlers:
            self._install_signal_handlers()
            # ``drdaemon`` blocks them from its first instant; one that came meanwhile arrives now.
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM, signal.SIGINT, signal.SIGHUP})
        self.prepare_folders()
        self.mounts.record()
        with WorkLock(self.folders.work):
            # Temporaries name this work folder, so that no peer's start-up takes them for abandoned.
            self.finisher.owner = work_owner(self.folders.work)
            engines = self.load_engines()
            for engine in engines:
                engine.warm_up()
            log.info("engines_ready", engines=[e.name for e in engines], devices=[e.device for e in engines])
            self._publish_build_info(engines)
            if self.settings.metrics.enabled:
                self.metrics_port = self._serve_metrics()
                log.info("metrics_serving", address=self.settings.metrics.address, port=self.metrics_port)
            recovery = self.finisher.recover_all(self.folders.work)
            self._count_recovered(recovery.finished)
            recovered = recovery.redo
            if recovered or recovery.finished:
                log.info("work_recovered", frames=len(recovered), finished=len(recovery.finished))
            if self.stop_requested.is_set():
                self.metrics.close()
                log.info(
                    "daemon_stopped",
                    exit_status=self.exit_status,
                    signal=self._stop_signal,
                    note="stopped during start-up, before claiming any frame",
                )
                return self.exit_status
            self.watcher.start()
            self._check_space()
            self._start_pipeline(engines, recovered)
            if self.settings.retention.prunes():
                pruner = Pruner(
                    self.folders, self.settings.retention, self.metrics, self.free_space, self.stop_requested
                )
                self._spawn("pruner", pruner.run_forever)
            self.notifier.ready(f"watching {self.folders.inbox} with {len(engines)} engine(s)")
            log.info("daemon_ready", inbox=str(self.folders.inbox), engine=engines[0].name)
            try:
                self._supervise(engines)
            finally:
                for thread in self._threads:
                    thread.join()
                self.watcher.stop()
                self.metrics.close()
            log.info("daemon_stopped", exit_status=self.exit_status)
            return self.exit_status

    def _count_recovered(self, finished: list[Plan]) -> None:
        """Frames the last run committed but did not clean up: logged and counted like any other."""
        for plan in finished:
            frame = display_name(plan.work)
            if plan.kind == "ok":
                log.info("frame_done", frame=frame, output=plan.output, recovered=True)
                self.metrics.frame_recovered()
                continue
            try:
                reason = json.loads(Path(plan.reason or "").read_text(encoding="utf-8"))
                stage, why = Stage(reason["stage"]), Reason(reason["reason"])
            except (OSError, ValueError, KeyError):
                stage, why = Stage.READ, Reason.UNREADABLE
            log.warning(
                "frame_failed", frame=frame, stage=stage.value, reason=why.value, moved_to=plan.failed, recovered=True
            )
            self.metrics.frame_failed(stage=stage, reason=why)

    def _serve_metrics(self) -> int:
        return serve_metrics(self.metrics, self.settings.metrics)

    def request_stop(self) -> None:
        """Stop claiming; frames already claimed are finished (graceful).

        Only sets an event, so it is safe from a signal handler; the main thread announces
        the stop (log, systemd STOPPING=1) when it wakes up.
        """
        self.stop_requested.set()

    def stop_from_signal(self, name: str) -> None:
        """A stop asked for by a signal (``SIGTERM``): graceful, and the signal is logged."""
        self._stop_signal = name
        self.request_stop()

    def _install_signal_handlers(self) -> None:
        """SIGTERM and SIGINT stop gracefully, a second one at once; SIGHUP stops or reloads.

        SIGHUP reloads the weights where the daemon has no controlling terminal (systemd, a
        container). Started in a terminal, SIGHUP is the terminal closing: the daemon then stops
        gracefully, as it would on Ctrl-C, instead of running on as an orphan that holds the
        work folder. Under ``nohup`` (SIGHUP ignored when the daemon started) it keeps running
        and SIGHUP still reloads.
        """
        hangup_ignored = signal.getsignal(signal.SIGHUP) == signal.SIG_IGN
        self.hangup_stops = not hangup_ignored and has_controlling_terminal()

        def on_stop(signum: int, _frame: object) -> None:
            name = signal.Signals(signum).name
            if self.stop_requested.is_set() and signum != signal.SIGHUP:
                self._stop_now(signum)
            self.stop_from_signal(name)

        def on_hangup(signum: int, frame: object) -> None:
            if self.stop_requested.is_set():
                return  # the terminal went during a stop: go on finishing (a hangup never stops at once)
            detach_from_closed_terminal()
            on_stop(signum, frame)

        signal.signal(signal.SIGTERM, on_stop)
        signal.signal(signal.SIGINT, on_stop)
        if self.hangup_stops:
            signal.signal(signal.SIGHUP, on_hangup)
        else:
            signal.signal(signal.SIGHUP, lambda _signum, _frame: self.reload_requested.set())
        # The check for writers still holding a frame open takes a lease for an instant; were a
        # writer to open the file in that instant, the kernel would signal SIGIO (fatal by default).
        signal.signal(signal.SIGIO, signal.SIG_IGN)

    def _stop_now(self, signum: int) -> None:
        """A second stop signal: exit at once; frames in work/ are finished or redone at the next start.

        Runs in the signal handler: a line written straight to stderr (no logger's lock), then
        ``os._exit``, as after a crash (the kernel releases the work lock).
        """
        name = signal.Signals(signum).name
        fields = {
            "event": "stopping_now",
            "level": "warning",
            "signal": name,
            "in_flight": self.progress.in_flight,
            "exit_status": 128 + signum,
            "note": f"a second stop signal: stopping at once; the {self.progress.in_flight} frame(s) in flight stay "
            f"in {self.folders.work} and are finished or redone at the next start, as after a crash",
        }
        line = (
            json.dumps(fields)
            if use_json(self.settings.logging, sys.stderr)
            else (f"drdaemon: second {name}: stopping at once. {fields['note']}")
        )
        with contextlib.suppress(OSError):
            os.write(2, (line + "\n").encode())
        os._exit(128 + signum)

    def _fatal(self, status: int, cause: str) -> None:
        """Stop fast: unstarted frames stay in work/ and are redone at the next start.

        ``cause`` (``device_lost`` or ``internal_error``) is counted, as both exit with 70.
        """
        self.metrics.fatal_error(cause)
        with self._fatal_lock:
            self.exit_status = status
        self.request_stop()
        self._claimed.abort()
        self._loaded.abort()

    def _start_pipeline(self, engines: list[Engine], recovered: list[Path]) -> None:
        service = self.settings.service
        readers, writers = stage_threads(len(engines), service.readers, service.writers)
        self._engine_count = len(engines)
        log.info("pipeline_threads", readers=readers, workers=len(engines), writers=writers)
        # Each pipe holds about one frame per consumer: enough to keep every thread busy,
        # no more (unclaimed frames wait in the inbox, not in memory).
        self._claimed: Pipe[WorkItem] = Pipe(capacity=readers, producers=1)
        self._loaded: Pipe[LoadedFrame] = Pipe(capacity=len(engines), producers=readers)
        self._enhanced: Pipe[EnhancedFrame] = Pipe(capacity=writers, producers=len(engines))
        self._spawn("intake", self._intake_loop, recovered)
        for index in range(readers):
            self._spawn(f"reader-{index}", self._reader_loop)
        for index in range(len(engines)):
            self._spawn(f"worker-{index}", self._worker_loop, engines, index)
        for index in range(writers):
            self._spawn(f"writer-{index}", self._writer_loop)

    def _spawn(self, name: str, target: Callable[..., None], *args: object) -> None:
        def guarded() -> None:
            try:
                target(*args)
            except Exception:
                log.exception("internal_error", thread=name, note="a bug: the daemon stops and is restarted")
                self._fatal(EXIT_INTERNAL_ERROR, "internal_error")

        thread = threading.Thread(target=guarded, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def _supervise(self, engines: list[Engine]) -> None:
        """Main thread: gauges, the systemd watchdog, and waiting for the pipeline to drain."""
        ping_every = self.notifier.watchdog_interval_s
        tick = min(1.0, ping_every) if ping_every else 1.0
        last_ping_mono = time.monotonic()
        last_ping_progress = self.progress.last_progress_mono
        while any(t.is_alive() for t in self._threads):
            self._announce_stop()
            if self.reload_requested.is_set() and not self.stop_requested.is_set():
                self.reload_requested.clear()
                self._reload_engines(engines)
            self._update_gauges(engines)
            now = time.monotonic()
            if ping_every and now - last_ping_mono >= ping_every:
                moved = self.progress.last_progress_mono != last_ping_progress
                waiting = self.progress.waits_by_design(now)
                if self.watcher.alive and (moved or self.progress.in_flight == 0 or waiting):
                    self.notifier.watchdog()
                    last_ping_mono = now
                    last_ping_progress = self.progress.last_progress_mono
                else:
                    log.warning(
                        "watchdog_withheld", watcher_alive=self.watcher.alive, in_flight=self.progress.in_flight
                    )
            if self.stop_requested.is_set():
                time.sleep(0.05)  # draining: just wait for the threads to finish
            else:
                self.stop_requested.wait(tick)
        self._announce_stop()
        self._update_gauges(engines)

    def _reload_engines(self, engines: list[Engine]) -> None:
        """SIGHUP: build the engines again from the configured weights file; keep the old on any failure.

        Until then the loaded weights stay in use whatever happens to the file. A frame being
        enhanced meanwhile finishes with the engine it started with, and its sidecar names that
        engine's weights.
        """
        log.info("reload_requested", weights=str(self.settings.engine.weights))
        try:
            fresh = build_checked_engines(self.settings.engine)
            if len(fresh) != len(engines):
                raise ConfigError(f"the reload yields {len(fresh)} engine(s), the daemon runs {len(engines)}")
            for engine in fresh:
                engine.warm_up()
        except Exception as exc:  # noqa: BLE001 - a bad new file must never stop the daemon
            log.error(
                "reload_refused", error=f"{type(exc).__name__}: {exc}", kept_weights_sha256=engines[0].weights_sha256
            )
            return
        for index, engine in enumerate(fresh):
            engines[index] = engine
        self._publish_build_info(engines)
        log.info("engines_reloaded", engine=engines[0].name, weights_sha256=engines[0].weights_sha256)

    def _announce_stop(self) -> None:
        """Log the stop once: what is being finished, about how long it takes, how to stop at once."""
        if not self.stop_requested.is_set():
            return
        now = time.monotonic()
        if self._stop_announced:
            if self.progress.in_flight and self._stop_requested_mono is not None:
                waited = now - self._stop_requested_mono
                if waited >= self._next_stop_report_s:  # no long silence while frames finish
                    self._next_stop_report_s += STOP_REPORT_EVERY_S
                    log.info("still_stopping", in_flight=self.progress.in_flight, waited_s=round(waited, 1))
            return
        self._stop_announced = True
        self._stop_requested_mono = now
        self._next_stop_report_s = STOP_REPORT_EVERY_S
        self.notifier.stopping()
        in_flight = self.progress.in_flight
        finishing = self._frames_in_work()
        expected = self._expected_stop_s(in_flight)
        again = "Ctrl-C again" if self._stop_signal == "SIGINT" else "a second SIGTERM or SIGINT"
        if in_flight:
            pace = f"about {expected:.0f} s at the recent pace" if expected is not None else "no frame finished yet"
            note = (
                f"finishing the {in_flight} frame(s) already claimed ({pace}); {again} stops at once, "
                f"leaving them in {self.folders.work} to be finished or redone at the next start"
            )
        else:
            note = "nothing in flight"
        if self._stop_signal == "SIGHUP":
            note = "the terminal closed (SIGHUP with a controlling terminal); " + note
        log.info(
            "stopping",
            signal=self._stop_signal,
            exit_status=self.exit_status,
            in_flight=in_flight,
            finishing=finishing[:10],
            expected_s=None if expected is None else round(expected, 1),
            note=note,
        )

    def _frames_in_work(self) -> list[str]:
        """Names of the frames claimed and not yet finished (they lie in work/)."""
        try:
            return [display_name(path.name) for path in pending_work(self.folders.work)]
        except OSError:
            return []

    def _expected_stop_s(self, in_flight: int) -> float | None:
        """Roughly how long the frames in flight take, from the recent pace; None before any frame finished."""
        if self.progress.frame_s is None or in_flight == 0:
            return None
        rounds = -(-in_flight // max(1, self._engine_count))
        return self.progress.frame_s * rounds

    def _check_space(self) -> None:
        """Free-space gauges per folder; claiming pauses below ``retention.claim_min_free_space`` on the output side."""
        floor = self.settings.retention.claim_min_free_space
        low: list[str] = []
        for name, path in self.folders:
            try:
                free = self.free_space(path)
            except OSError:
                continue  # a vanished folder: the output gate re-creates it at the next commit
            self.metrics.set_folder_free(name, free)
            if floor is not None and name in ("outbox", "archive", "failed") and free < floor:
                low.append(f"folders.{name} ({path}): {free} bytes free, below retention.claim_min_free_space {floor}")
        if floor is not None:
            self.output_gate.set_low_space(bool(low), "; ".join(low))

    def _update_gauges(self, engines: list[Engine]) -> None:
        self._check_space()
        self.metrics.set_inbox_depth(self.watcher.depth)
        self.metrics.set_inbox_unmatched(self.watcher.unmatched)
        self.metrics.set_queue_depth(len(self._claimed) + len(self._loaded) + len(self._enhanced))
        self.metrics.set_in_flight(self.progress.in_flight)
        self.metrics.set_watcher_up(self.watcher.alive)
        self.metrics.set_inbox_unclaimable(self.watcher.unclaimable)
        torch_module = sys.modules.get("torch")
        if torch_module is None or not torch_module.cuda.is_initialized():
            return
        for device in {e.device for e in engines if e.device.startswith("cuda")}:
            with contextlib.suppress(RuntimeError):  # the device vanished; the worker reports it
                self.metrics.set_device_memory(
                    device, torch_module.cuda.memory_allocated(device), torch_module.cuda.memory_reserved(device)
                )

    # -- the stages -----------------------------------------------------------------------
    def _intake_loop(self, recovered: list[Path]) -> None:
        try:
            for path in recovered:
                if self.stop_requested.is_set():
                    break
                self.progress.claimed()
                # Recorded as arriving now, from the inbox it was claimed from.
                item = WorkItem(path=path, original=self.folders.inbox / path.name)
                if not self._claimed.put(item):
                    self.progress.finished()
            tick = self.watcher.tick_s()
            while not self.stop_requested.is_set():
                if not self.output_gate.open.is_set():
                    self.stop_requested.wait(tick)  # frames wait in the inbox until the output clears
                    continue
                for item in self.settling.settled():
                    if not self._claimed.put(item):
                        self.progress.finished()
                if len(self.settling):
                    self.progress.waiting(tick)  # claimed frames still being written: waiting by design
                self.watcher.ensure_observer()
                for candidate in self.watcher.poll():
                    # Claim only when a reader can take the frame soon: the rest wait in the inbox.
                    if not self._claimed.wait_for_room(timeout=tick) or self.stop_requested.is_set():
                        break
                    if not self.watcher.still_ready(candidate):
                        continue
                    try:
                        claimed = claim(
                            candidate.path, self.folders.work, candidate.first_seen_wall, candidate.first_seen_mono
                        )
                    except OSError as exc:
                        self._claim_refused(candidate.path, candidate, exc)
                        continue
                    self.watcher.forget(candidate.path)
                    if claimed is None:
                        continue
                    self.progress.claimed()
                    if not self._claimed.put(claimed):
                        self.progress.finished()  # aborted: it stays in work/ for the next start
                self.stop_requested.wait(tick)
        finally:
            self._claimed.producer_done()

    def _claim_refused(self, path: Path, candidate: Candidate, exc: OSError) -> None:
        """The filesystem refused to move a file into work/: it waits in the inbox, the others go on."""
        retry_s = self.watcher.defer(candidate)
        self.metrics.claim_refused()
        log.error(
            "claim_refused",
            frame=display_name(path.name),
            path=display_name(str(path)),
            error=f"{type(exc).__name__}: {exc}",
            attempts=candidate.refusals,
            retry_in_s=retry_s,
            note="the file stays in the inbox and is tried again with backoff; other frames go on "
            "(an immutable file: chattr -i; a share that keeps it locked: close it on the station)",
        )

    def _reader_loop(self) -> None:
        try:
            while (item := self._claimed.get()) is not None:
                try:
                    loaded = load_frame(item, self.limits, self.window_percentiles)
                except FrameChanged as exc:
                    self._changed(item, exc)
                    continue
                except Exception as exc:  # noqa: BLE001 - the frame fails with a reason, the daemon goes on
                    self._fail(item, as_frame_error(Stage.READ, exc))
                    continue
                self.progress.moved()
                if not self._loaded.put(loaded):
                    self.progress.finished()
        finally:
            self._loaded.producer_done()

    def _worker_loop(self, engines: list[Engine], index: int) -> None:
        """Enhance frames with ``engines[index]``, looked up per frame so that a reload takes effect."""
        try:
            while (loaded := self._loaded.get()) is not None:
                engine = engines[index]
                try:
                    done = enhance_frame(loaded, engine)
                except FrameError as error:
                    self._fail(loaded.item, error)
                    continue
                except DeviceLost as exc:
                    log.error(
                        "device_lost",
                        device=engine.device,
                        frame=display_name(loaded.item.original.name),
                        error=str(exc),
                        note="frame stays in work/ and is redone at the next start",
                    )
                    self.progress.finished()
                    self._fatal(EXIT_DEVICE_LOST, "device_lost")
                    return
                self.progress.moved()
                if not self._enhanced.put(done):
                    self.progress.finished()
        finally:
            self._enhanced.producer_done()

    def _writer_loop(self) -> None:
        while (done := self._enhanced.get()) is not None:
            item = done.loaded.item
            try:
                committed = self._while_output_blocked(item, lambda: commit_frame(done, self.finisher))
            except FrameChanged as exc:
                self._changed(item, exc)
                continue
            except Exception as exc:  # noqa: BLE001 - the frame fails with a reason, the daemon goes on
                self._fail(item, as_frame_error(Stage.WRITE, exc))
                continue
            if committed is None:  # stopped while the output was blocked: redone at the next start
                self.progress.finished()
                continue
            latency = max(0.0, time.monotonic() - item.arrived_mono)
            self.progress.took(time.monotonic() - item.claimed_mono)
            for stage, seconds in stage_timings(done, committed).items():
                self.metrics.observe_stage(stage, seconds)
            self.metrics.frame_succeeded(pixels=int(done.result.pixels.size), latency_s=latency)
            sidecar = committed.sidecar
            log.info(
                "frame_done",
                frame=display_name(item.original.name),
                id=sidecar.input.sha256[:16],
                input_bytes=sidecar.input.bytes,
                output_bytes=sidecar.output.bytes,
                shape=sidecar.input.shape,
                dtype=sidecar.input.dtype,
                output=sidecar.output.path,
                device=sidecar.software.device,
                latency_s=round(latency, 4),
                timings=sidecar.timings | {"sidecar": round(committed.sidecar_s, 6)},
            )
            self.progress.finished()

    def _while_output_blocked(self, item: WorkItem, commit: Callable[[], T]) -> T | None:
        """Run ``commit``; while an output fault refuses it, hold the frame and retry with backoff.

        Returns None when a stop comes first (the frame stays in work/). A fault that is not
        the output's (a bad frame, or the frame itself gone from work/) is raised.
        """
        backoff = BACKOFF_FIRST_S
        while True:
            try:
                self.mounts.check()  # a share that went away: wait for it, never write to the disk beneath
                result = commit()
            except Exception as exc:
                reason = blocking_reason(exc)
                if reason is None or not os.path.lexists(item.path):
                    raise
                self.output_gate.block(reason, exc)
                self.progress.waiting(backoff)  # alive: waiting by design, not stuck
                if self.stop_requested.wait(backoff):
                    return None
                backoff = min(2 * backoff, BACKOFF_MAX_S)
                self.output_gate.recreate_folders()
                continue
            self.output_gate.clear()
            return result

    def _changed(self, item: WorkItem, exc: FrameChanged) -> None:
        """A frame changed after its claim: read it again once it settles, a bounded number of times."""
        item.changes += 1
        if item.changes > MAX_CHANGES:
            self._fail(item, FrameError(Stage.READ, Reason.CHANGED, f"{exc}; still changing after {MAX_CHANGES} reads"))
            return
        log.warning(
            "frame_changed",
            frame=display_name(item.original.name),
            error=str(exc),
            reads=item.changes,
            note="not committed; read again once it has settled",
        )
        self.settling.add(item)

    def _fail(self, item: WorkItem, error: FrameError) -> None:
        """Move a failed frame to failed/ with its reason, then count it; the daemon carries on."""
        try:
            destination = self._while_output_blocked(item, lambda: fail_frame(item, error, self.finisher))
        except OSError as exc:
            log.error(
                "frame_fail_unrecorded",
                frame=display_name(item.original.name),
                error=str(exc),
                note="frame stays in work/ and is retried at the next start",
            )
        else:
            if destination is None:  # stopped while failed/ refused: redone at the next start
                self.progress.finished()
                return
            log.warning(
                "frame_failed",
                frame=display_name(item.original.name),
                stage=error.stage.value,
                reason=error.reason.value,
                message=str(error),
                moved_to=str(destination),
            )
        self.metrics.frame_failed(stage=error.stage, reason=error.reason)
        self.progress.finished()


def run_daemon(settings: Settings) -> int:
    """Entry point for ``drdaemon run``: build, run, and return the exit status."""
    return Daemon(settings).run()


__all__ = ["Daemon", "run_daemon"]
