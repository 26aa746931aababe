"""Daemon configuration: one TOML file, overridable by ``DRDAEMON_<TABLE>__<KEY>`` variables.

Environment variables win over the file so that a systemd drop-in or a container can
change one value without editing the shared file. Relative folder paths resolve against
the directory of the config file, so a config next to its data folders works wherever
the tree is copied.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import re
import tomllib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Literal, get_args

from pydantic import BaseModel, ByteSize, ConfigDict, Field, PositiveInt, ValidationError, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, SettingsError

from drdaemon import defaults
from drdaemon.defaults import Compression, PrecisionSetting
from drdaemon.io.readers import FRAME_FORMATS
from drdaemon.pipeline.presets import DEFAULT_PRESET, PRESETS, PresetName
from drdaemon.pipeline.steps import MatchStep, NetStep, Step


class ConfigError(Exception):
    """A configuration file that is missing, unreadable or invalid; the message names the key."""


class _Table(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class Folders(_Table):
    """The folder lifecycle: inbox -> work -> (outbox + archive) or failed.

    Iterating yields ``(name, path)`` for the five folders (not the ``create`` flag).
    ``create = false`` (the default) makes a missing inbox a configuration error that names
    the closest existing folder, so that a misspelled inbox is never watched empty; the other
    folders are the daemon's own and are created when missing. ``create = true`` creates a
    missing inbox too. Every folder the daemon creates is named in a ``folder_created`` log line.
    """

    inbox: Path = Path("inbox")
    outbox: Path = Path("outbox")
    archive: Path = Path("archive")
    failed: Path = Path("failed")
    work: Path = Path("work")
    create: bool = False

    def __iter__(self) -> Iterator[tuple[str, Path]]:  # type: ignore[override]  # the folders, not the flag
        for name in ("inbox", "outbox", "archive", "failed", "work"):
            yield name, getattr(self, name)

    def resolved(self, base: Path) -> Folders:
        paths = {name: (base / p) if not p.is_absolute() else p for name, p in self}
        return Folders(**paths, create=self.create)


#: ``[engine]`` keys that say where and how fast the engine runs, not what it makes of a frame
#: (the weights count by their content's hash, which the engine reports, not by their path).
RUNTIME_ENGINE_KEYS = frozenset(
    {
        "weights",
        "devices",
        "memory_budget_mb",
        "compile",
        "channels_last",
        "cudnn_benchmark",
        "warm_up_frame_size",
        "workers_per_device",
        "allow_pickle",
        "tensorrt",
        "tensorrt_cache",
    }
)


class PipelineConfig(_Table):
    """``[engine.pipeline]``: the ordered steps of ``engine.name = "pipeline"``, or a named preset.

    ``steps`` (``[[engine.pipeline.steps]]`` tables, or ``DRDAEMON_ENGINE__PIPELINE__STEPS`` as a
    JSON list) and ``preset`` exclude each other; with neither, the ``detail`` preset runs.
    """

    preset: PresetName | None = None
    steps: list[Step] = Field(default_factory=list)

    @model_validator(mode="after")
    def _preset_or_steps(self) -> PipelineConfig:
        if self.preset is not None and self.steps:
            raise ValueError(
                f"set either preset ({self.preset!r}) or steps, not both "
                "(DRDAEMON_ENGINE__PIPELINE__STEPS='[]' clears the file's steps)"
            )
        return self

    def preset_name(self) -> str | None:
        """The preset that runs, or None for the configured steps."""
        return None if self.steps else (self.preset or DEFAULT_PRESET)

    def resolved_steps(self) -> tuple[Step, ...]:
        name = self.preset_name()
        return tuple(self.steps) if name is None else PRESETS[name]


class EngineConfig(_Table):
    """Which enhancer runs, and its parameters.

    ``name = "auto"`` picks the learned engine when ``weights`` is set and the classical
    CLAHE engine otherwise, so the daemon works out of the box with no weights and no torch
    work. ``name = "net"`` without ``weights`` runs the weights shipped with the package
    (:data:`drdaemon.defaults.SHIPPED_WEIGHTS`).
    """

    #: An engine of :data:`drdaemon.engines.registry.ENGINES` or ``auto``; the registry checks the
    #: name when the engine is built (``check-config``, start-up), naming the known engines.
    name: str = Field("auto", pattern=r"^[a-z][a-z0-9_-]*$")
    weights: Path | None = None
    # Percentile window applied to every frame before enhancement.
    low_percentile: float = Field(defaults.LOW_PERCENTILE, ge=0.0, lt=50.0)
    high_percentile: float = Field(defaults.HIGH_PERCENTILE, gt=50.0, le=100.0)
    # Classical engine.
    clahe_clip_limit: float = Field(defaults.CLAHE_CLIP_LIMIT, gt=0.0)
    clahe_tile_grid: int = Field(defaults.CLAHE_TILE_GRID, ge=1, le=64)
    gamma: float = Field(defaults.GAMMA, gt=0.0)
    # Learned engine.
    devices: list[str] = Field(default_factory=lambda: ["auto"])
    # auto: the fastest precision that meets the project's bound on the engine's device
    # (:func:`drdaemon.defaults.precision_for_device`: bfloat16 on a CPU, float16 on CUDA).
    precision: PrecisionSetting = defaults.PRECISION
    memory_budget_mb: int = Field(defaults.MEMORY_BUDGET_MB, ge=64)
    compile: bool = False
    channels_last: bool = True
    cudnn_benchmark: bool = True
    # The detector's frame size (height, width): warm-up runs one frame of it, so the first
    # real frame pays no first-pass costs (allocation, cuDNN's algorithm search).
    warm_up_frame_size: tuple[PositiveInt, PositiveInt] | None = None
    workers_per_device: int = Field(2, ge=1, le=8)
    allow_pickle: bool = False
    # ONNX weights (engine.weights = "MODEL.onnx") on a CUDA device: TensorRT's provider first,
    # its engine cache in the work folder (drdaemon/engines/onnx_runtime.py).
    tensorrt: bool = False
    # TensorRT's engine and timing caches; unset: ".tensorrt-cache" in folders.work.
    tensorrt_cache: Path | None = None
    # Pipeline engine.
    pipeline: PipelineConfig = Field(default_factory=PipelineConfig)

    def configuration_sha256(self) -> str:
        """sha256 of the method and the parameters that shape every enhanced frame.

        A DICOM output's series is one per source series and engine configuration: this, the
        method's name and the weights' sha256 together.
        """
        shaping = self.model_dump(mode="json", exclude={*RUNTIME_ENGINE_KEYS, "pipeline"})
        shaping["name"] = self.effective_name()
        if shaping["name"] == "pipeline":  # the steps that run (a preset's as in this release)
            shaping["pipeline"] = [
                # a net step's weights count by their content's hash too, not by their path
                step.model_dump(mode="json", exclude={"weights"} if isinstance(step, NetStep) else None)
                for step in self.pipeline.resolved_steps()
            ]
        return hashlib.sha256(json.dumps(shaping, sort_keys=True).encode("utf-8")).hexdigest()

    def effective_name(self) -> str:
        """The engine that runs: ``auto`` resolved to ``net`` (with weights) or ``classical``."""
        if self.name == "auto":
            return "net" if self.weights is not None else "classical"
        return self.name


class ServiceConfig(_Table):
    """The daemon's host threads (:mod:`drdaemon.service.threads`); 0 picks a default from the core count."""

    readers: int = Field(0, ge=0, le=64)
    writers: int = Field(0, ge=0, le=64)


class WatchConfig(_Table):
    stability_wait_s: float = Field(1.0, ge=0.0)
    # A file unchanged this long that still does not parse as a whole image is taken anyway
    # and fails with a reason file, instead of waiting in the inbox forever.
    incomplete_grace_s: float = Field(30.0, ge=0.0)
    rescan_interval_s: float = Field(10.0, gt=0.0)
    polling: bool = False
    poll_interval_s: float = Field(1.0, gt=0.0)
    # The default: every suffix of the reader registry (drdaemon.io.readers), lower and upper case.
    # DICOM files without a suffix are recognised by content: add a pattern that names them
    # (e.g. "IM*" or "*") for a station that writes them so.
    patterns: list[str] = Field(default_factory=FRAME_FORMATS.watch_patterns)


class RawInputConfig(_Table):
    """The layout of headerless ``.raw`` detector frames (``.his`` files carry their own)."""

    width: PositiveInt
    height: PositiveInt
    dtype: Literal["uint8", "uint16", "float32"] = "uint16"
    byte_order: Literal["little", "big"] = "little"
    header_bytes: int = Field(0, ge=0)


class InputConfig(_Table):
    """Guards against frames whose header promises more than a station can hold."""

    max_pixels: int = Field(defaults.MAX_PIXELS, ge=1)
    max_bytes: int = Field(defaults.MAX_BYTES, ge=1)
    raw: RawInputConfig | None = None
    # Bytes the decoded pixels may take (checked from the header, before decoding); unset: max_bytes.
    max_decoded_bytes: int | None = Field(None, ge=1)


#: A DICOM UID root: dot-separated numbers without leading zeros, short enough to add a suffix.
UID_ROOT_PATTERN = r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$"


class OutputConfig(_Table):
    """The output file: its format (:mod:`drdaemon.io.formats`), compression and preview.

    ``format = "auto"`` writes a DICOM output for a DICOM input and a TIFF for any other;
    ``"dicom"`` refuses inputs that are not DICOM (a DICOM output is derived from its source).
    """

    format: Literal["auto", "tiff", "dicom"] = "auto"
    compression: Compression = defaults.COMPRESSION
    preview_png: bool = False
    dicom_uid_root: str | None = Field(None, pattern=UID_ROOT_PATTERN, max_length=40)
    dicom_transfer_syntax: Literal["explicit", "input"] = "explicit"


class MetricsConfig(_Table):
    enabled: bool = True
    address: str = "127.0.0.1"
    port: int = Field(9464, ge=0, le=65535)


class RetentionConfig(_Table):
    """Pruning of finished frames from archive and outbox, and the free-space floor of claiming.

    Every limit is off when unset. Sizes take bytes or a unit (``"2 TB"``, ``"500 GiB"``).
    See :mod:`drdaemon.folders.retention` for what may be pruned (never an unfinished frame).
    """

    # Frames finished longer ago than this are pruned (their raw frame, output, preview, sidecar).
    max_age_days: float | None = Field(None, gt=0.0)
    # The oldest frames are pruned while the folder's files take more than this.
    archive_max_size: ByteSize | None = None
    outbox_max_size: ByteSize | None = None
    # The oldest frames are pruned while the archive's or the outbox's filesystem has less free space.
    min_free_space: ByteSize | None = None
    # Seconds between two pruning passes of the running daemon.
    interval_s: float = Field(300.0, gt=0.0)
    # Claiming pauses while the outbox's, archive's or failed folder's filesystem has less free space.
    claim_min_free_space: ByteSize | None = None

    @model_validator(mode="after")
    def _prune_before_pausing(self) -> RetentionConfig:
        floor, pause = self.min_free_space, self.claim_min_free_space
        if floor is not None and pause is not None and floor <= pause:
            raise ValueError(
                "retention.min_free_space must be above retention.claim_min_free_space, so that pruning "
                "frees space before claiming pauses"
            )
        return self

    def prunes(self) -> bool:
        """Whether any pruning limit is set (else the daemon runs no pruning thread)."""
        limits = (self.max_age_days, self.archive_max_size, self.outbox_max_size, self.min_free_space)
        return any(limit is not None for limit in limits)


class LoggingConfig(_Table):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["auto", "json", "console"] = "auto"


class Settings(BaseSettings):
    """The whole daemon configuration."""

    model_config = SettingsConfigDict(
        env_prefix="DRDAEMON_", env_nested_delimiter="__", extra="forbid", validate_assignment=True
    )

    folders: Folders = Field(default_factory=Folders)
    engine: EngineConfig = Field(default_factory=EngineConfig)
    service: ServiceConfig = Field(default_factory=ServiceConfig)
    watch: WatchConfig = Field(default_factory=WatchConfig)
    input: InputConfig = Field(default_factory=InputConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    retention: RetentionConfig = Field(default_factory=RetentionConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Earlier sources win: the environment overrides the file's values (passed as init).
        return (env_settings, init_settings)


ENV_PREFIX = "DRDAEMON_"


def environment_keys(environ: Mapping[str, str]) -> dict[tuple[str, ...], str]:
    """The configuration keys that ``DRDAEMON_<TABLE>__<KEY>`` variables set, and each variable's name."""
    keys: dict[tuple[str, ...], str] = {}
    for name in environ:
        if name.upper().startswith(ENV_PREFIX) and len(name) > len(ENV_PREFIX):
            keys[tuple(part.lower() for part in name[len(ENV_PREFIX) :].split("__"))] = name
    return keys


def from_environment(key: str, environ: Mapping[str, str] | None = None) -> str:
    """`` (from the environment variable DRDAEMON_X__Y)`` when one sets the dotted ``key``, else ``""``."""
    variable = _variable_for(tuple(key.split(".")), environment_keys(os.environ if environ is None else environ))
    return "" if variable is None else f" (from the environment variable {variable})"


def closest_choice(typed: str, choices: list[str] | tuple[str, ...]) -> str:
    """``; did you mean 'x'?`` naming the choice closest to a misspelt ``typed``, else ``""``."""
    matches = difflib.get_close_matches(typed.lower(), list(choices), n=1, cutoff=0.6)
    return f"; did you mean {matches[0]!r}?" if matches else ""


def _variable_for(loc: tuple[str, ...], keys: dict[tuple[str, ...], str]) -> str | None:
    """The variable that set the value at ``loc`` (or a table above it), if one did."""
    for length in range(len(loc), 0, -1):
        variable = keys.get(tuple(part.lower() for part in loc[:length]))
        if variable is not None:
            return variable
    return None


def _table_model(loc: tuple[str, ...]) -> type[BaseModel] | None:
    """The model of the table that holds the key at ``loc`` (``Settings`` for a top-level key)."""
    model: type[BaseModel] = Settings
    for part in loc[:-1]:
        field = model.model_fields.get(part)
        if field is None:
            return None
        inner = next(
            (
                t
                for t in (field.annotation, *get_args(field.annotation))
                if isinstance(t, type) and issubclass(t, BaseModel)
            ),
            None,
        )
        if inner is None:
            return None
        model = inner
    return model


def suggestion(item: Mapping[str, Any]) -> str:
    """``; did you mean 'x'?`` for a misspelt key or choice, else an empty string."""
    loc = tuple(str(part) for part in item["loc"])
    if item["type"] == "extra_forbidden" and loc:
        model = _table_model(loc)
        choices = list(model.model_fields) if model is not None else []
        typed = loc[-1]
    elif item["type"] == "literal_error" and isinstance(item.get("input"), str):
        choices = re.findall(r"'([^']*)'", str(item.get("ctx", {}).get("expected", "")))
        typed = item["input"]
    else:
        return ""
    matches = difflib.get_close_matches(typed.lower(), choices, n=1, cutoff=0.6)
    return f"; did you mean {matches[0]!r}?" if matches else ""


def _format_validation_error(error: ValidationError, source: str, environ: Mapping[str, str] | None = None) -> str:
    """One line per error naming the key, and the variable when the value came from the environment."""
    keys = environment_keys(os.environ if environ is None else environ)
    lines = []
    blamed_file = blamed_env = False
    for item in error.errors():
        loc = tuple(str(part) for part in item["loc"])
        key = ".".join(loc) or "(top level)"
        variable = _variable_for(loc, keys)
        if variable is not None:
            key = f"{key} (from the environment variable {variable})"
            blamed_env = True
        else:
            blamed_file = True
        message = item["msg"]
        if item["type"] == "extra_forbidden":
            message = "unknown key"
        value = item.get("input")
        shown = "" if item["type"] == "extra_forbidden" or isinstance(value, dict) else f" (got {value!r})"
        lines.append(f"  {key}: {message}{shown}{suggestion(item)}")
    where = ([source] if blamed_file else []) + (["the environment"] if blamed_env else [])
    lines.insert(0, f"invalid configuration in {' and '.join(where)}:")
    lines.append("Every key is documented in config.example.toml; environment variables are DRDAEMON_<TABLE>__<KEY>.")
    return "\n".join(lines)


def _step_paths_resolved(step: Step, base: Path) -> Step:
    """``step`` with a relative ``match`` reference or ``net`` weights resolved against ``base``."""
    if isinstance(step, MatchStep) and step.reference is not None and not step.reference.is_absolute():
        return step.model_copy(update={"reference": base / step.reference})
    if isinstance(step, NetStep) and step.weights is not None and not step.weights.is_absolute():
        return step.model_copy(update={"weights": base / step.weights})
    return step


def load_settings(path: Path | None) -> Settings:
    """Read ``path`` (or defaults only, when None), apply the environment, resolve folders."""
    data: dict[str, Any] = {}
    base = Path.cwd()
    source = "defaults and environment"
    if path is not None:
        path = Path(path)
        source = str(path)
        if not path.is_file():
            raise ConfigError(f"configuration file not found: {path}")
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError, OSError) as exc:
            raise ConfigError(f"cannot parse {path}: {exc}") from exc
        base = path.resolve().parent
    try:
        settings = Settings(**data)
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(exc, source)) from exc
    except SettingsError as exc:  # a DRDAEMON_* value that a list or table key cannot parse
        raise ConfigError(
            f"{exc} ({exc.__cause__}): a list or a table in a DRDAEMON_* variable is JSON, e.g. "
            """DRDAEMON_ENGINE__PIPELINE__STEPS='[{"op": "gaussian", "sigma": 1.0}]'"""
        ) from exc
    settings.folders = settings.folders.resolved(base)
    if settings.engine.tensorrt_cache is None:
        settings.engine.tensorrt_cache = settings.folders.work / ".tensorrt-cache"
    elif not settings.engine.tensorrt_cache.is_absolute():
        settings.engine.tensorrt_cache = base / settings.engine.tensorrt_cache
    settings.engine.pipeline.steps = [_step_paths_resolved(step, base) for step in settings.engine.pipeline.steps]
    if settings.engine.weights is not None and not settings.engine.weights.is_absolute():
        settings.engine.weights = base / settings.engine.weights
    return settings
