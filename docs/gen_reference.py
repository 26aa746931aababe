"""Write the generated parts of the reference pages from the code, or check that they are current.

    python docs/gen_reference.py          # rewrite the generated blocks in docs/reference/*.md
    python docs/gen_reference.py --check  # exit 1, naming each stale page, if any block differs

A reference page is prose written by hand around blocks that this script owns::

    <!-- BEGIN GENERATED: configuration -->
    ... (rewritten on every run: do not edit by hand) ...
    <!-- END GENERATED: configuration -->

What each block is made from, so that it cannot drift from the code:

* ``configuration``: the pydantic models of :mod:`drdaemon.config` (every table and key, its type,
  bounds, default and ``DRDAEMON_<TABLE>__<KEY>`` name); the one-line meaning of a key is its
  ``Field(description=...)`` where the model has one, else :data:`KEY_MEANINGS` here. A key
  without a meaning, or a meaning for a key that no longer exists, is an error.
* ``pipeline-steps``, ``pipeline-presets``: the step models of the pipeline (``op``, docstring,
  parameters with bounds and defaults) and its named presets.
* ``sidecar``: the sidecar's pydantic models (every key, its type, whether it may be null), with
  :data:`SIDECAR_MEANINGS`.
* ``metrics``: the collectors of the daemon's metrics object (name, type, labels, help text).
* ``frame-formats``: the reader registry (:data:`drdaemon.io.readers.FRAME_FORMATS`), one row per
  format in the order a file is recognised.
* ``cli-*``: the ``--help`` output of every entry point, run as a user runs it.

The test ``tests/test_docs.py`` runs ``--check``, so a change to a model, a step, a metric or a
flag that leaves its page behind fails CI with the command that fixes it.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import types
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from annotated_types import Ge, Gt, Le, Lt, MaxLen, MinLen
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = ROOT / "docs" / "reference"

#: The meaning of every configuration key without a ``Field(description=...)``, by dotted key.
KEY_MEANINGS: dict[str, str] = {
    "folders.inbox": "where the DR station drops raw frames",
    "folders.outbox": "enhanced frames `<stem>.tif` (or `.dcm`) and their sidecars `<stem>.tif.json`",
    "folders.archive": "raw frames, byte-identical, after their output is committed",
    "folders.failed": "frames that could not be processed, each with `<name>.reason.json`",
    "folders.work": "frames being processed; finished or redone after a crash; holds the lock `.drdaemon.lock`",
    "folders.create": "`true`: create a missing inbox too; `false`: a missing inbox is a configuration error naming the closest existing folder (the other folders are always created, each named in a `folder_created` log line)",
    "engine.name": "the engine: `auto` = `net` when `weights` is set, else `classical`; see [Engines](../explanation/engines.md)",
    "engine.weights": 'the enhancer\'s `.safetensors` file (relative to the config file); unset with `name = "net"`: the shipped weights',
    "engine.low_percentile": "robust window: raw values below this percentile map to black",
    "engine.high_percentile": "... and above this percentile to white",
    "engine.clahe_clip_limit": "CLAHE contrast limit (higher = stronger local contrast); `classical`",
    "engine.clahe_tile_grid": "CLAHE tiles per side (8 = an 8 x 8 grid); `classical`",
    "engine.gamma": "applied after enhancement; < 1 brightens, > 1 darkens; `classical`",
    "engine.devices": "`net`: `auto` (`cuda:0` if CUDA is visible, else the CPU), `cpu`, `cuda:N`; several for several GPUs; a configured GPU that is missing stops the start, never a CPU fallback",
    "engine.precision": "`net`: autocast precision of the network's trunk (the illumination head and the division stay float32); `auto`: the fastest that meets the precision bound on the engine's device (bfloat16 on a CPU, float16 on CUDA)",
    "engine.memory_budget_mb": "`net`: frames whose estimated peak exceeds this run in exact tiles (the same result as the whole frame)",
    "engine.compile": "`net`: `torch.compile` the network (slower start, faster frames); set `warm_up_frame_size` with it",
    "engine.channels_last": "`net`: channels-last layout (faster convolutions on tensor cores and on the CPU in bfloat16)",
    "engine.cudnn_benchmark": "`net`: cuDNN times its algorithms on the first frame of each size and keeps the fastest; `float32` never means TF32",
    "engine.warm_up_frame_size": "`net`: the detector's `[height, width]`: warm-up runs one frame of it before the daemon is ready, so the first real frame is not slower",
    "engine.workers_per_device": "`net`: frames in flight per GPU (overlaps copies with compute; the CPU always gets one)",
    "engine.allow_pickle": "`net`: accept a `.pt` pickle checkpoint, read with `weights_only=True`",
    "engine.tensorrt": "`net` with `.onnx` weights on `cuda:N`: TensorRT's provider first (see the ONNX how-to)",
    "engine.tensorrt_cache": "TensorRT's engine and timing caches; unset: `.tensorrt-cache` in `folders.work`",
    "engine.pipeline.preset": "`pipeline`: a named pipeline ([presets](pipeline-steps.md#presets)); with neither `preset` nor `steps`: `detail`",
    "engine.pipeline.steps": "`pipeline`: `[[engine.pipeline.steps]]` tables, `op` and its parameters ([steps](pipeline-steps.md)); from the environment a JSON list; excludes `preset`",
    "service.readers": "reader threads (read, hash, decode, window); 0 = half the logical cores, at most 6, never fewer than the engines",
    "service.writers": "writer threads (encode, write, fsync, sidecar); 0 = as for `readers`",
    "watch.stability_wait_s": "a file must keep its size and mtime this long (and parse as a whole image) before it is taken",
    "watch.incomplete_grace_s": "a stable file that never parses as a whole image is taken after this and fails with a reason",
    "watch.rescan_interval_s": "full inbox rescan, catching events inotify drops in bursts",
    "watch.polling": "`true`: no inotify, scan every `poll_interval_s` (network mounts: NFS, SMB)",
    "watch.poll_interval_s": "scan period in polling mode",
    "watch.patterns": "file names taken from the inbox (dot-files, `*.part`, `*.tmp` never); DICOM without a suffix needs a pattern such as `IM*`",
    "input.max_pixels": "frames whose header claims more pixels fail as `too_large`",
    "input.max_bytes": "files larger than this fail as `too_large`",
    "input.max_decoded_bytes": "bytes the decoded pixels may take, checked from the header before decoding; unset: `max_bytes`",
    "input.raw": "the layout of headerless `.raw` frames; unset: `.raw` files fail as `unsupported`",
    "input.raw.width": "pixels per row",
    "input.raw.height": "rows",
    "input.raw.dtype": "sample type",
    "input.raw.byte_order": "byte order of multi-byte samples",
    "input.raw.header_bytes": "bytes before the first pixel",
    "output.format": "`auto`: DICOM for a DICOM input, TIFF for any other; `tiff` always; `dicom` only (other inputs fail as `unsupported`)",
    "output.compression": "the TIFF output's lossless compression, all but `none` with the horizontal predictor ([which one](frame-formats.md#output-compression))",
    "output.preview_png": "also write `<stem>.preview.png`, 8-bit, long side at most 1024 px",
    "output.dicom_uid_root": "DICOM: new UIDs are made under this root (your organisation's); unset: pydicom's root with a random or hashed suffix",
    "output.dicom_transfer_syntax": "DICOM: `explicit` VR little endian, or `input`: the input's syntax where it is lossless and an encoder is installed",
    "metrics.enabled": "serve Prometheus metrics",
    "metrics.address": "the address `/metrics` listens on",
    "metrics.port": "its port; 0 picks a free one (logged at start-up)",
    "retention.max_age_days": "prune frames finished longer ago than this",
    "retention.archive_max_size": 'prune the oldest frames while the archive\'s files take more (bytes, or `"2 TB"`, `"500 GiB"`)',
    "retention.outbox_max_size": "prune the oldest frames while the outbox's files take more",
    "retention.min_free_space": "prune the oldest frames while the archive's or the outbox's filesystem has less free space",
    "retention.interval_s": "seconds between two pruning passes of the running daemon",
    "retention.claim_min_free_space": "claiming pauses while the outbox's, archive's or failed folder's filesystem has less free space; below `min_free_space`",
    "logging.level": "the lowest level logged",
    "logging.format": "`auto`: JSON lines unless stderr is a terminal; `json`; `console`",
}

#: The meaning of every sidecar key, by dotted key (``input.dicom`` stands for ``output.dicom`` too).
SIDECAR_MEANINGS: dict[str, str] = {
    "schema_version": "1; bumped only if a key changes meaning (keys are added, never renamed)",
    "input": "the raw frame",
    "input.claim": "the random id of the claim that made this sidecar; a sidecar vouches for an output only for its own claim",
    "input.path": "where the raw frame rests now (the archive), byte-identical to what arrived",
    "input.original_path": "where it arrived (the inbox); bytes that are not UTF-8 shown as `\\xNN`",
    "input.original_path_hex": "the exact bytes of `original_path` in hex, only when they are not valid UTF-8",
    "input.sha256": "hash of the raw frame exactly as archived",
    "input.bytes": "its size in bytes",
    "input.shape": "`[height, width]`",
    "input.dtype": "the decoded sample type",
    "input.format": "`tiff`, `png`, `dicom`, `raw`, `his`",
    "input.dicom": "a DICOM input's identity",
    "input.dicom.study_instance_uid": "",
    "input.dicom.series_instance_uid": "",
    "input.dicom.sop_instance_uid": "",
    "input.dicom.sop_class_uid": "",
    "input.dicom.transfer_syntax_uid": "",
    "input.raw": "the geometry a `.raw` or `.his` frame was read with",
    "input.raw.width": "",
    "input.raw.height": "",
    "input.raw.dtype": "",
    "input.raw.byte_order": "",
    "input.raw.header_bytes": "",
    "input.raw.frames": "frames in the file (always 1 for a frame that was read)",
    "input.raw.source": "`config` for `[input.raw]`, `his` for the file's own header",
    "output": "the enhanced frame",
    "output.path": "the output file",
    "output.sha256": "hash of the output file",
    "output.bytes": "its size in bytes",
    "output.shape": "`[height, width]`, the input's",
    "output.dtype": "`uint16`",
    "output.compression": "the TIFF compression, or the DICOM transfer syntax's keyword (`ExplicitVRLittleEndian`)",
    "output.preview": "the 8-bit preview PNG (`output.preview_png`)",
    "output.format": "`tiff` or `dicom`",
    "output.dicom": "a DICOM output's identity (new SOP instance, series hashed from the source series and the engine configuration)",
    "engine": "what enhanced the frame",
    "engine.name": "the engine that ran (`classical`, `pipeline`, `net`, ...; `auto` resolved)",
    "engine.parameters": "every parameter that shaped the frame and what the engine measured on it (the window, a pipeline's steps, the network's precision and scale, ...)",
    "engine.weights_sha256": "the learned engine's weights file hash; for a pipeline with `net` steps that of their weights (the sha256 of their hashes, in step order joined by commas, when the steps run different files); null for the others",
    "software": "versions, and the device that ran the frame",
    "software.drdaemon": "",
    "software.python": "",
    "software.numpy": "",
    "software.opencv": "",
    "software.tifffile": "",
    "software.torch": "",
    "software.pydicom": "",
    "software.device": "`cpu`, `cuda:0`, ...",
    "timings": "seconds per stage: `wait`, `read`, `window`, `enhance`, `write`, and the engine's own sub-stages",
    "started_utc": "when the frame was claimed (ISO 8601, UTC)",
    "finished_utc": "when its sidecar was written",
}

#: How each pipeline op is implemented (the docstring says what it does).
STEP_IMPLEMENTATION: dict[str, str] = {
    "normalise": "NumPy percentile, OpenCV affine; the robust window the other engines use",
    "gaussian": "`cv2.GaussianBlur` (4 sigma, mirrored borders)",
    "median": "`cv2.medianBlur` up to 5; `scipy.ndimage.median_filter` above (OpenCV takes 16-bit medians up to 5 only); replicated borders",
    "nlm": "`cv2.fastNlMeansDenoising` on 16 bits, L1 patch distance; the noise sigma from the wavelet noise estimate",
    "match": "NumPy: a 65536-level histogram and a lookup table from `np.interp` of its quantiles onto the reference's (`skimage.exposure.match_histograms` on the 16-bit rendition)",
    "equalise": "the `he` engine's kernel",
    "clahe": "the classical engine's CLAHE kernel (OpenCV, 4096 levels)",
    "unsharp": "OpenCV",
    "gamma": "`cv2.pow`",
    "morphology": "`cv2.morphologyEx`",
    "tophat": "`cv2.morphologyEx`",
    "multiscale": "`cv2.pyrDown`/`pyrUp`; no band is formed at full resolution",
    "net": 'a worker of the learned engine (`drdaemon/engines/net.py`, or `onnx_runtime.py` for `.onnx` weights), built by the code that builds `engine.name = "net"`; PyTorch (ONNX Runtime) on the CPU or CUDA',
}

#: The entry points whose ``--help`` the CLI page shows, in the page's order.
CLI_COMMANDS: dict[str, list[str]] = {
    "cli-drdaemon": ["-m", "drdaemon", "--help"],
    "cli-run": ["-m", "drdaemon", "run", "--help"],
    "cli-check-config": ["-m", "drdaemon", "check-config", "--help"],
    "cli-selftest": ["-m", "drdaemon", "selftest", "--help"],
    "cli-prune": ["-m", "drdaemon", "prune", "--help"],
    "cli-enhance": ["-m", "drdaemon", "enhance", "--help"],
    "cli-bench": ["-m", "drdaemon.bench", "--help"],
    "cli-synth": ["-m", "drdaemon.synth", "--help"],
    "cli-evaluate": ["-m", "drdaemon.evaluate", "--help"],
    "cli-trainer": ["-m", "trainer", "--help"],
    "cli-pretrain-clip": ["-m", "trainer.pretrain_clip", "--help"],
    "cli-bundle": ["-m", "trainer.bundle", "--help"],
    "cli-trainer-bench": ["-m", "trainer.bench", "--help"],
    "cli-oracle": ["-m", "trainer.oracle", "--help"],
}


# --- types, bounds and defaults ------------------------------------------------------------


def type_name(annotation: Any) -> str:
    """A reader's name for a field's type: ``"a" | "b"`` for a Literal, ``list of ...``, ``... or unset``."""
    origin = get_origin(annotation)
    args = get_args(annotation)
    if origin is Annotated:
        return type_name(args[0])
    if origin is Literal:
        return " \\| ".join(f'`"{a}"`' if isinstance(a, str) else f"`{a}`" for a in args)
    if origin in (Union, types.UnionType):
        present = [a for a in args if a is not type(None)]
        names = list(dict.fromkeys(type_name(a) for a in present))  # a union of tables is one "table"
        name = " \\| ".join(names)
        return f"{name}, or unset" if len(present) < len(args) else name
    if origin is list:
        return f"list of {type_name(args[0])}"
    if origin is tuple:
        return "[" + ", ".join(type_name(a) for a in args) + "]"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "table"
    readable = {"Path": "path", "ByteSize": "size", "PositiveInt": "int > 0", "bool": "bool"}
    name = getattr(annotation, "__name__", str(annotation))
    return readable.get(name, name)


def bounds(field: FieldInfo) -> str:
    """The field's numeric and length bounds, e.g. ``≥ 0, < 50``."""
    parts: list[str] = []
    for item in field.metadata:
        if isinstance(item, Ge):
            parts.append(f"≥ {item.ge}")
        elif isinstance(item, Gt):
            parts.append(f"> {item.gt}")
        elif isinstance(item, Le):
            parts.append(f"≤ {item.le}")
        elif isinstance(item, Lt):
            parts.append(f"< {item.lt}")
        elif isinstance(item, MinLen):
            parts.append(f"at least {item.min_length} long")
        elif isinstance(item, MaxLen):
            parts.append(f"at most {item.max_length} long")
        elif type(item).__name__ == "_PydanticGeneralMetadata" and getattr(item, "pattern", None):
            pattern = str(item.pattern)  # a pattern with "|" cannot be shown in a table cell's code
            parts.append("dotted numbers" if "|" in pattern else f"matching `{pattern}`")
    return ", ".join(parts)


def plain(docstring: str | None, whole: bool = False) -> str:
    """A docstring (its first paragraph unless ``whole``) as one Markdown line (reST roles to `code`)."""
    text = (docstring or "").strip()
    text = " ".join((text if whole else text.split("\n\n")[0]).split())
    text = re.sub(r":\w+:`~?([^`]+)`", r"`\1`", text)
    return text.replace("``", "`")


def default_of(field: FieldInfo) -> Any:
    if field.default_factory is not None:
        return field.default_factory()  # type: ignore[call-arg]
    return None if field.default is PydanticUndefined else field.default


def shown(value: Any) -> str:
    """A default as it is written in TOML."""
    if value is None:
        return "unset"
    if isinstance(value, BaseModel):
        return "(table)"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, str | Path):
        return f'`"{value}"`'
    if isinstance(value, list | tuple):
        if value and isinstance(value[0], BaseModel):
            return "(tables)"
        return "`[" + ", ".join(shown(v).strip("`") for v in value) + "]`"
    return f"`{value}`"


def model_of(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model a field holds (through ``| None``), or None for a plain value."""
    candidates = get_args(annotation) if get_origin(annotation) in (Union, types.UnionType) else (annotation,)
    for candidate in candidates:
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


# --- the blocks ----------------------------------------------------------------------------


def configuration() -> str:
    from drdaemon.config import Settings

    lines: list[str] = []
    seen: set[str] = set()

    def table(model: type[BaseModel], path: list[str]) -> None:
        dotted = ".".join(path)
        doc = plain(model.__doc__)
        lines.extend([f"### `[{dotted}]`", ""])
        if doc and not doc.startswith("Usage docs"):
            lines.extend([doc, ""])
        lines.extend(["| key | type | default | environment variable | meaning |", "|---|---|---|---|---|"])
        nested: list[tuple[type[BaseModel], list[str]]] = []
        for name, field in model.model_fields.items():
            key = ".".join([*path, name])
            sub = model_of(field.annotation)
            if sub is not None:
                nested.append((sub, [*path, name]))
                if default_of(field) is not None:  # a table that is always there is its own heading
                    continue
            seen.add(key)
            meaning = field.description or KEY_MEANINGS.get(key)
            if meaning is None:
                raise SystemExit(f"configuration key {key} has no meaning: add Field(description=...) or KEY_MEANINGS")
            kind = type_name(field.annotation)
            limit = bounds(field)
            if key == "engine.name":  # a name the engine registry accepts, not any string the pattern allows
                from drdaemon.engines.registry import ENGINES

                kind, limit = " \\| ".join(f'`"{n}"`' for n in ENGINES.accepted_names()), ""
            env = "DRDAEMON_" + "__".join(p.upper() for p in [*path, name])
            lines.append(
                f"| `{name}` | {kind}{' (' + limit + ')' if limit else ''} | {shown(default_of(field))} | "
                f"`{env}` | {meaning} |"
            )
        lines.append("")
        for sub, sub_path in nested:
            table(sub, sub_path)

    for name, field in Settings.model_fields.items():
        sub = model_of(field.annotation)
        assert sub is not None, name
        table(sub, [name])
    stale = sorted(set(KEY_MEANINGS) - seen)
    if stale:
        raise SystemExit(f"KEY_MEANINGS names keys the configuration does not have: {', '.join(stale)}")
    return "\n".join(lines).rstrip() + "\n"


def step_models() -> list[type[BaseModel]]:
    from drdaemon.pipeline.steps import Step

    union = get_args(Step)[0]
    return list(get_args(union))


def pipeline_steps() -> str:
    lines: list[str] = []
    ops: set[str] = set()
    for model in step_models():
        op = model.model_fields["op"].default
        ops.add(op)
        lines.extend([f"### `{op}`", "", plain(model.__doc__, whole=True), ""])
        params = [(n, f) for n, f in model.model_fields.items() if n != "op"]
        if params:
            lines.extend(["| parameter | type | default |", "|---|---|---|"])
            for name, field in params:
                limit = bounds(field)
                kind = type_name(field.annotation)
                lines.append(f"| `{name}` | {kind}{' (' + limit + ')' if limit else ''} | {shown(default_of(field))} |")
            lines.append("")
        else:
            lines.extend(["No parameters.", ""])
        if op not in STEP_IMPLEMENTATION:
            raise SystemExit(f"pipeline op {op!r} has no entry in STEP_IMPLEMENTATION")
        lines.extend([f"Implementation: {STEP_IMPLEMENTATION[op]}.", ""])
    stale = sorted(set(STEP_IMPLEMENTATION) - ops)
    if stale:
        raise SystemExit(f"STEP_IMPLEMENTATION names ops the pipeline does not have: {', '.join(stale)}")
    return "\n".join(lines).rstrip() + "\n"


def pipeline_presets() -> str:
    from drdaemon.pipeline.presets import DEFAULT_PRESET, PRESETS

    lines = ["| preset | steps, in order, with every parameter |", "|---|---|"]
    for name, steps in PRESETS.items():
        rendered = []
        for step in steps:
            params = {k: v for k, v in step.model_dump().items() if k != "op"}
            args = ", ".join(f"{k} = {shown(v).strip('`')}" for k, v in params.items())
            rendered.append(f"`{step.op}`" + (f" ({args})" if args else ""))
        label = f"`{name}`" + (" (default)" if name == DEFAULT_PRESET else "")
        lines.append(f"| {label} | {', '.join(rendered)} |")
    return "\n".join(lines) + "\n"


def walk(model: type[BaseModel], path: list[str]) -> Iterator[tuple[str, FieldInfo]]:
    for name, field in model.model_fields.items():
        yield ".".join([*path, name]), field
        sub = model_of(field.annotation)
        if sub is not None:
            yield from walk(sub, [*path, name])


def sidecar() -> str:
    from drdaemon.io.sidecar import Sidecar

    lines = ["| key | type | meaning |", "|---|---|---|"]
    seen: set[str] = set()
    for key, field in walk(Sidecar, []):
        lookup = key.replace("output.dicom", "input.dicom", 1) if key.startswith("output.dicom.") else key
        seen.add(lookup)
        meaning = field.description or SIDECAR_MEANINGS.get(lookup)
        if meaning is None:
            raise SystemExit(f"sidecar key {key} has no meaning: add Field(description=...) or SIDECAR_MEANINGS")
        kind = type_name(field.annotation).replace(", or unset", ", or null").replace("table", "object")
        if kind.startswith("dict"):
            kind = "object"
        lines.append(f"| `{key}` | {kind} | {meaning} |")
    stale = sorted(set(SIDECAR_MEANINGS) - seen)
    if stale:
        raise SystemExit(f"SIDECAR_MEANINGS names keys the sidecar does not have: {', '.join(stale)}")
    return "\n".join(lines) + "\n"


def metrics() -> str:
    from prometheus_client import CollectorRegistry
    from prometheus_client.metrics import MetricWrapperBase

    from drdaemon.service.prometheus import DaemonMetrics

    daemon_metrics = DaemonMetrics(registry=CollectorRegistry())
    lines = ["| metric | type | labels | what |", "|---|---|---|---|"]
    rows = []
    for collector in vars(daemon_metrics).values():
        if not isinstance(collector, MetricWrapperBase):
            continue
        (family,) = collector.describe()
        name = family.name + ("_total" if family.type == "counter" else "")
        # prometheus_client keeps a collector's label names only in this attribute.
        labels = ", ".join(f"`{label}`" for label in collector._labelnames)
        rows.append(f"| `{name}` | {family.type} | {labels} | {family.documentation} |")
    return "\n".join(lines + sorted(rows)) + "\n"


def frame_formats() -> str:
    from drdaemon.io.readers import FRAME_FORMATS

    lines = [
        "| Input | `input.format` | Suffixes | Recognised by | Read | Options |",
        "|---|---|---|---|---|---|",
    ]
    for fmt in FRAME_FORMATS:
        suffixes = ", ".join(f"`{suffix}`" for suffix in fmt.suffixes)
        recognised = fmt.recognised_by.replace("*", "\\*")  # II*/MM*: not emphasis
        lines.append(f"| {fmt.title} | `{fmt.name}` | {suffixes} | {recognised} | {fmt.reads} | {fmt.options} |")
    return "\n".join(lines) + "\n"


def cli_help(argv: list[str]) -> Callable[[], str]:
    def run() -> str:
        env = {**os.environ, "COLUMNS": "100", "PYTHONPATH": str(ROOT), "NO_COLOR": "1"}
        env.pop("FORCE_COLOR", None)
        result = subprocess.run(
            [sys.executable, *argv], capture_output=True, text=True, env=env, cwd=ROOT, timeout=300, check=False
        )
        if result.returncode != 0:
            raise SystemExit(f"python {' '.join(argv)} exited {result.returncode}:\n{result.stderr}")
        return "```text\n" + result.stdout.rstrip() + "\n```\n"

    return run


#: Every generated block: its name, the page it lives on and what makes it.
BLOCKS: dict[str, tuple[str, Callable[[], str]]] = {
    "configuration": ("configuration.md", configuration),
    "pipeline-steps": ("pipeline-steps.md", pipeline_steps),
    "pipeline-presets": ("pipeline-steps.md", pipeline_presets),
    "sidecar": ("sidecar.md", sidecar),
    "metrics": ("metrics.md", metrics),
    "frame-formats": ("frame-formats.md", frame_formats),
    **{name: ("cli.md", cli_help(argv)) for name, argv in CLI_COMMANDS.items()},
}

MARKER = re.compile(
    r"(<!-- BEGIN GENERATED: (?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- END GENERATED: (?P=name) -->)", re.S
)


def render(page: Path, made: dict[str, str]) -> str:
    """The page with each of its generated blocks replaced by what the code says now."""
    text = page.read_text(encoding="utf-8")
    found: set[str] = set()

    def replace(match: re.Match[str]) -> str:
        name = match["name"]
        found.add(name)
        if name not in made:
            raise SystemExit(f"{page.name}: unknown generated block {name!r}")
        return match[1] + made[name] + match[4]

    text = MARKER.sub(replace, text)
    wanted = {name for name, (file, _) in BLOCKS.items() if file == page.name}
    missing = wanted - found
    if missing:
        raise SystemExit(f"{page.name}: missing generated blocks {sorted(missing)} (add their BEGIN/END markers)")
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if a page is stale")
    parser.add_argument(
        "--pages", type=Path, default=REFERENCE, help="the reference pages' folder (default docs/reference)"
    )
    args = parser.parse_args(argv)
    with ThreadPoolExecutor(max_workers=4) as pool:  # the --help blocks are subprocesses
        futures = {name: pool.submit(make) for name, (_, make) in BLOCKS.items()}
        made = {name: future.result() for name, future in futures.items()}
    stale = []
    for file in sorted({file for file, _ in BLOCKS.values()}):
        page = args.pages / file
        new = render(page, made)
        if new != page.read_text(encoding="utf-8"):
            stale.append(page)
            if not args.check:
                page.write_text(new, encoding="utf-8")
    if args.check and stale:
        names = ", ".join(str(p) for p in stale)
        print(f"stale reference pages: {names}; run: python docs/gen_reference.py", file=sys.stderr)
        return 1
    for page in stale:
        print(f"rewrote {page}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
