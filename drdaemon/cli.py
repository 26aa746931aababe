"""The ``drdaemon`` command: run the service, check a configuration, enhance files, benchmark.

Exit statuses (:mod:`drdaemon.exits`) follow sysexits so that systemd can tell them apart:
0 done, 1 some files failed (``enhance``), 70 the accelerator was lost or an internal error
(restart me), 75 another daemon holds the work folder, 78 bad configuration (do not restart me).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path
from typing import Any

import tomli_w

from drdaemon import __version__
from drdaemon.config import ConfigError, Settings, load_settings
from drdaemon.exits import (
    EXIT_BUSY,
    EXIT_CONFIG,
    EXIT_DEVICE_LOST,
    EXIT_INTERNAL_ERROR,
    EXIT_OK,
    EXIT_SOME_FAILED,
)

_DESCRIPTION = """\
Whole-frame enhancement of 16-bit DR X-ray frames.

The daemon watches an inbox folder, enhances every new frame, writes the result and a JSON
sidecar into the outbox, and moves the raw frame, byte-identical, into the archive. Frames
that cannot be processed go to the failed folder beside a <name>.reason.json."""

_EPILOG = """\
Configuration: a TOML file (see config.example.toml); any key can be overridden by an
environment variable DRDAEMON_<TABLE>__<KEY>, e.g. DRDAEMON_FOLDERS__INBOX=/data/in.
Exit statuses: 0 ok, 1 some files failed (enhance), 70 device lost or internal error, 75 work
folder busy, 78 configuration error."""


def build_parser(with_bench: bool = True) -> argparse.ArgumentParser:
    """The argument parser; ``with_bench=False`` skips importing the benchmark module."""
    parser = argparse.ArgumentParser(
        prog="drdaemon",
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"drdaemon {__version__}")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    run = verbs.add_parser(
        "run",
        help="run the daemon on the configured folders until SIGTERM/SIGINT",
        description="Watch the inbox and enhance every frame that arrives. Stops on SIGTERM or "
        "SIGINT after finishing the frames already taken (exit 0); exits 70 when the GPU is lost "
        "and 78 on a configuration error. Frames left in the work folder by a crash are finished "
        "or redone at start.",
    )
    _add_config_argument(run, required=False)

    check = verbs.add_parser(
        "check-config",
        help="validate a configuration and run the daemon's start-up checks (a safe gate before a restart)",
        description="Validate FILE (and the DRDAEMON_* environment), print the effective "
        "configuration as TOML with folders resolved, then run every start-up check of `run` that "
        "needs neither the work lock nor the inbox, changing nothing on disk: folders exist (a missing "
        "inbox is an error naming the closest folder unless folders.create = true; the folders run "
        "would create are listed) and are writable, "
        "inbox, work, archive and failed share one filesystem mount (a rename probe), the weights "
        "load and match their provenance, the engine builds on its device, the metrics port can be "
        "bound (or is held by the daemon running on this work folder). Exit 78 naming the key on any "
        "error, with the message `run` would give.",
    )
    _add_config_argument(check, required=True)

    selftest = verbs.add_parser(
        "selftest",
        help="run one generated frame through the configured engine and folders, check it, print the latency",
        description="Run the start-up checks of check-config, then drop a generated 16-bit frame into an inbox, "
        "claim, read, enhance and commit it with the daemon's own functions, and check the output, the "
        "sidecar and both sha256 against the frame dropped. By default in a temporary hidden folder inside "
        "each configured folder (the same filesystem mounts), removed afterwards; --dry-run uses the "
        "configured folders under a hidden frame name that a running daemon never takes, and removes every "
        "file it made. Exit 0 passed, 1 the frame failed or a check did not hold, 78 a configuration error.",
    )
    _add_config_argument(selftest, required=True)
    selftest.add_argument(
        "--dry-run", action="store_true", help="run in the configured folders, leaving nothing behind"
    )
    selftest.add_argument(
        "--size", default="512x512", metavar="WIDTHxHEIGHT", help="size of the generated frame (default 512x512)"
    )

    prune = verbs.add_parser(
        "prune",
        help="one retention pass over archive and outbox ([retention]); --dry-run lists what it would remove",
        description="Prune finished frames (raw frame in the archive, output, preview, sidecar) oldest first, "
        "as far as the [retention] limits ask: max_age_days, archive_max_size, outbox_max_size, "
        "min_free_space. A raw frame goes only while its output and sidecar are both in place; nothing "
        "unfinished, nothing in inbox, work or failed. The running daemon does the same on a timer.",
    )
    _add_config_argument(prune, required=True)
    prune.add_argument("--dry-run", action="store_true", help="list what would be pruned; remove nothing")

    enhance = verbs.add_parser(
        "enhance",
        help="enhance files once with the configured engine, without the daemon",
        description="Enhance each FILE with the configured engine and write <stem>.tif (or <stem>.dcm "
        "for a DICOM input under output.format = auto or dicom) plus its sidecar <stem>.tif.json into "
        "--out (existing names get a ~N suffix). The input files are only read. Exit 1 if any file failed.",
    )
    enhance.add_argument(
        "files",
        nargs="+",
        type=Path,
        metavar="FILE",
        help="frames: TIFF, PNG, DICOM/DICONDE, .raw ([input.raw]) or .his",
    )
    enhance.add_argument("--out", required=True, type=Path, metavar="DIR", help="folder for the outputs")
    _add_config_argument(enhance, required=False)

    export = verbs.add_parser(
        "export-onnx",
        help="write enhancer weights as an ONNX model (optionally statically quantised to INT8)",
        description="Export the whole-frame enhancer of WEIGHTS (.safetensors) as an ONNX model with dynamic "
        "height and width, for engine.weights = MODEL.onnx (ONNX Runtime) or any ONNX tool. Its metadata records "
        "the illumination scale, the input's normalisation (the percentile window), the weights' sha256 and the "
        "model card's name. --quantize int8 writes a statically quantised model instead, calibrated on the "
        "--calibration frames (read as the daemon reads them). Exit 78 when the weights cannot be read or the "
        "onnx extra is missing, 1 when a calibration frame cannot be read.",
    )
    export.add_argument("weights", type=Path, metavar="WEIGHTS", help="the enhancer's .safetensors weights")
    export.add_argument("--out", required=True, type=Path, metavar="MODEL.onnx", help="the model to write")
    export.add_argument(
        "--quantize", choices=("int8",), default=None, help="write a statically quantised INT8 model instead"
    )
    export.add_argument(
        "--calibration",
        nargs="+",
        type=Path,
        default=[],
        metavar="FRAME",
        help="frames the INT8 ranges are calibrated on (TIFF, PNG, DICOM, ...): a few typical frames of the line",
    )
    export.add_argument(
        "--quant-format",
        choices=("qdq", "qoperator"),
        default="qoperator",
        help="INT8 graph form: qoperator (QLinearConv; the faster one on this project's CPU) or qdq "
        "(QuantizeLinear/DequantizeLinear pairs, which TensorRT takes as explicit INT8)",
    )

    bench = verbs.add_parser(
        "bench",
        help="benchmark the engine and the daemon on synthetic frames",
        description="Measure compute time, throughput and memory of the engines and the daemon.",
    )
    if with_bench:
        try:
            from drdaemon.bench.cli import add_bench_arguments
        except ImportError:
            pass  # the benchmark module is optional; `drdaemon bench` then says so
        else:
            add_bench_arguments(bench)
    return parser


def _add_config_argument(parser: argparse.ArgumentParser, required: bool) -> None:
    parser.add_argument(
        "--config",
        type=Path,
        required=required,
        metavar="FILE",
        help="TOML configuration (see config.example.toml)"
        + ("" if required else "; without it, defaults and DRDAEMON_* variables only"),
    )


def _config_error(error: ConfigError) -> int:
    print(f"drdaemon: configuration error\n{error}", file=sys.stderr)
    return EXIT_CONFIG


def cmd_check_config(args: argparse.Namespace) -> int:
    """Validate, then run every start-up check of ``run`` that needs neither the lock nor the inbox."""
    from drdaemon.errors import DeviceLost
    from drdaemon.logs import configure_logging
    from drdaemon.service.startup import check_start_up

    settings = load_settings(args.config)
    configure_logging(settings.logging)
    print(f"# effective configuration of {args.config} (environment applied)")
    print(settings_to_toml(settings), end="")
    if os.geteuid() == 0:
        print(
            "drdaemon: running as root; folders that run creates as root belong to root. Run it as the service user "
            "(sudo -u drdaemon drdaemon check-config ...) to check that user's access.",
            file=sys.stderr,
        )
    try:
        passed = check_start_up(settings, dry_run=True).passed
    except DeviceLost as exc:
        print(f"drdaemon: device lost while building the engine: {exc}", file=sys.stderr)
        return EXIT_DEVICE_LOST
    print("# start-up checks passed:")
    for line in passed:
        print(f"#   {line}")
    return EXIT_OK


def cmd_selftest(args: argparse.Namespace) -> int:
    """The install guide's last step: the start-up checks, then one frame end to end."""
    from drdaemon.errors import DeviceLost
    from drdaemon.logs import configure_logging
    from drdaemon.physics import parse_size
    from drdaemon.service.selftest import SelftestFailed, run_selftest
    from drdaemon.service.startup import check_start_up

    try:
        size = parse_size(args.size)
    except ValueError as exc:
        print(f"drdaemon: --size: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    settings = load_settings(args.config)
    configure_logging(settings.logging.model_copy(update={"level": "WARNING"}))
    try:
        found = check_start_up(settings)
        for line in found.passed:
            print(f"ok: {line}")
        report = run_selftest(settings, found.engines[0], dry_run=args.dry_run, size=size)
    except DeviceLost as exc:
        print(f"drdaemon: selftest FAILED: device lost: {exc}", file=sys.stderr)
        return EXIT_DEVICE_LOST
    except SelftestFailed as exc:
        print(f"drdaemon: selftest FAILED: {exc}", file=sys.stderr)
        return EXIT_SOME_FAILED
    for line in report.checks:
        print(f"ok: {line}")
    timings = ", ".join(f"{stage} {seconds:.3f}" for stage, seconds in report.timings.items() if stage != "wait")
    where = (
        "the configured folders (dry run, nothing left behind)"
        if args.dry_run
        else "a temporary tree in the configured folders"
    )
    print(
        f"selftest passed: {report.shape[1]} x {report.shape[0]} frame, engine {report.engine} on {report.device}, "
        f"in {where}; latency {report.latency_s:.3f} s from claim to sidecar ({timings} s)"
    )
    return EXIT_OK


def cmd_prune(args: argparse.Namespace) -> int:
    """One retention pass; with ``--dry-run`` the plan alone."""
    import time

    from drdaemon.folders.space import free_bytes
    from drdaemon.logs import configure_logging
    from drdaemon.service.pruning import retention_pass

    settings = load_settings(args.config)
    configure_logging(settings.logging)
    if not settings.retention.prunes():
        print("retention: no limit is set in [retention]; nothing to prune")
        return EXIT_OK
    try:
        result = retention_pass(settings.folders, settings.retention, free_bytes, dry_run=args.dry_run)
    except OSError as exc:
        print(f"drdaemon: cannot prune: {exc}", file=sys.stderr)
        return EXIT_SOME_FAILED
    done = result.plan.prunings if args.dry_run else result.pruned
    verb = "would prune" if args.dry_run else "pruned"
    for pruning in done:
        frame = pruning.frame
        finished = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(frame.finished))
        raw = str(frame.raw) if frame.raw is not None else "-"
        print(
            f"{verb}\t{pruning.policy}\t{finished}\t{frame.sidecar}\traw={raw}\t{frame.raw_bytes + frame.outbox_bytes} bytes"
        )
    freed = sum(p.frame.raw_bytes + p.frame.outbox_bytes for p in done)
    print(
        f"{verb} {len(done)} frame(s), {freed} bytes; {result.plan.held} kept by the rules (unfinished or raw without output)"
    )
    if result.plan.behind:
        print(f"limits still unmet: {', '.join(result.plan.behind)}")
    return EXIT_OK


def cmd_run(args: argparse.Namespace) -> int:
    import structlog

    from drdaemon.errors import DeviceLost
    from drdaemon.folders.claim import WorkFolderBusy
    from drdaemon.logs import configure_logging
    from drdaemon.service.daemon import Daemon

    settings = load_settings(args.config)
    configure_logging(settings.logging)
    if args.config is None:  # say where the folders are: a newcomer may not expect them in the current directory
        where = ", ".join(f"{name} {path}" for name, path in settings.folders)
        print(
            f"drdaemon: no --config: defaults and DRDAEMON_* variables only, folders relative to the current "
            f"directory {Path.cwd()}: {where}. Pass --config FILE (see config.example.toml) to choose them.",
            file=sys.stderr,
        )
    try:
        return Daemon(settings).run()
    except WorkFolderBusy as exc:
        print(f"drdaemon: {exc}", file=sys.stderr)
        return EXIT_BUSY
    except ConfigError:
        raise
    except DeviceLost as exc:  # at warm-up: let the service manager restart
        structlog.get_logger("drdaemon").error("device_lost", error=str(exc))
        return EXIT_DEVICE_LOST
    except Exception as exc:  # noqa: BLE001 - a bug: logged with its traceback, and the service manager restarts
        structlog.get_logger("drdaemon").exception("internal_error", error=f"{type(exc).__name__}: {exc}")
        return EXIT_INTERNAL_ERROR


def cmd_enhance(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from drdaemon.engines import build_checked_engines
    from drdaemon.errors import Stage
    from drdaemon.folders.claim import WorkItem
    from drdaemon.folders.commit import Finisher
    from drdaemon.io.formats import configured_output_format
    from drdaemon.logs import configure_logging
    from drdaemon.service.frame import as_frame_error, commit_frame, enhance_frame, load_frame, read_limits

    settings = load_settings(args.config)
    configure_logging(settings.logging)
    engine = build_checked_engines(settings.engine)[0]
    # Absolute paths, so that a sidecar still names its input and output wherever it is read.
    out = args.out.absolute()
    out.mkdir(parents=True, exist_ok=True)
    output = configured_output_format(settings.output, settings.engine)
    finisher = Finisher(out, archive=None, failed=None, preview=settings.output.preview_png, output_format=output)
    limits = read_limits(settings.input)
    failures = 0
    for path in tqdm(args.files, desc="enhance", unit="frame"):
        item = WorkItem(path=path.absolute(), original=path.absolute())
        try:
            done = enhance_frame(load_frame(item, limits), engine)
            commit_frame(done, finisher, retire_input=False)
        except Exception as exc:  # noqa: BLE001 - one file's failure, even a bug, must not stop the others
            failures += 1
            error = as_frame_error(Stage.ENHANCE, exc)
            tqdm.write(f"{path}: {error.stage.value} failed ({error.reason.value}): {error}", file=sys.stderr)
    print(f"{len(args.files) - failures} of {len(args.files)} frames enhanced into {args.out}")
    return EXIT_SOME_FAILED if failures else EXIT_OK


def cmd_export_onnx(args: argparse.Namespace) -> int:
    import tempfile

    from drdaemon.errors import FrameError
    from drdaemon.io.onnx_model import describe, export_onnx, quantize_onnx, require_onnx
    from drdaemon.io.readers import read_frame
    from drdaemon.io.weights import WeightsError, load_weights

    if args.calibration and args.quantize is None:
        print("drdaemon export-onnx: --calibration is used only with --quantize int8", file=sys.stderr)
        return EXIT_CONFIG
    if args.quantize and not args.calibration:
        print(
            "drdaemon export-onnx: --quantize int8 needs --calibration FRAME... (a few typical frames)", file=sys.stderr
        )
        return EXIT_CONFIG
    try:
        require_onnx()
        loaded = load_weights(args.weights)
    except WeightsError as exc:
        print(f"drdaemon export-onnx: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    frames = []
    for path in args.calibration:
        try:
            frames.append(read_frame(path).pixels)
        except (FrameError, OSError) as exc:
            print(f"drdaemon export-onnx: calibration frame {path}: {exc}", file=sys.stderr)
            return EXIT_SOME_FAILED
    print(f"exporting {args.weights} ...", file=sys.stderr)
    if args.quantize is None:
        info = export_onnx(loaded, args.out)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            float_model = export_onnx(loaded, Path(tmp) / "float32.onnx")
            print(f"calibrating on {len(frames)} frame(s) and quantising ({args.quant_format}) ...", file=sys.stderr)
            info = quantize_onnx(float_model.path, args.out, frames, args.quant_format)
    print(describe(info))
    return EXIT_OK


def cmd_bench(args: argparse.Namespace) -> int:
    try:
        from drdaemon.bench.cli import run_bench
    except ImportError as exc:
        print(f"drdaemon: the benchmark is not available in this installation ({exc})", file=sys.stderr)
        return EXIT_SOME_FAILED
    return run_bench(args)


_COMMANDS = {
    "run": cmd_run,
    "check-config": cmd_check_config,
    "selftest": cmd_selftest,
    "prune": cmd_prune,
    "enhance": cmd_enhance,
    "bench": cmd_bench,
    "export-onnx": cmd_export_onnx,
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    # The benchmark's options are only needed (and its module only imported) for `bench`.
    args = build_parser(with_bench="bench" in argv or "-h" in argv or "--help" in argv).parse_args(argv)
    if args.verb != "run":  # the daemon unblocks the stop signals once its handlers are in place
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM, signal.SIGINT, signal.SIGHUP})
    try:
        return _COMMANDS[args.verb](args)
    except ConfigError as error:
        return _config_error(error)


# -- printing the effective configuration ---------------------------------------------------
def settings_to_toml(settings: Settings) -> str:
    """The settings as TOML that :func:`drdaemon.config.load_settings` reads back; unset keys are left out."""
    return tomli_w.dumps(_without_unset(settings.model_dump(mode="json")))


def _without_unset(value: Any) -> Any:
    """``value`` with every None-valued key dropped, in nested tables and arrays of tables too (TOML has no null)."""
    if isinstance(value, dict):
        return {key: _without_unset(inner) for key, inner in value.items() if inner is not None}
    if isinstance(value, list):
        return [_without_unset(inner) for inner in value]
    return value


if __name__ == "__main__":
    sys.exit(main())
