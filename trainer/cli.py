"""``python -m trainer``: parse the command line, build the config, run, report.

Exit codes: 0 done, 130 stopped by Ctrl-C or SIGTERM (after checkpointing), 2 bad command line or config,
3 CLIP unavailable (offline without a local checkpoint), 4 unusable data or checkpoint, 5 the ``train``
extra is not installed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from trainer.shared.config import TrainConfig, TrainConfigError, add_set_option, load_config, override

EXIT_USAGE, EXIT_CLIP, EXIT_DATA, EXIT_MISSING_EXTRA, EXIT_INTERRUPTED = 2, 3, 4, 5, 130

#: Modules of the ``train`` extra (pyproject.toml), by the name Python imports them as.
TRAIN_EXTRA_MODULES = frozenset({"open_clip", "torchvision", "tensorboard"})


def missing_extra(exc: ModuleNotFoundError) -> str | None:
    """What to install when ``exc`` is a module of the ``train`` extra, else None."""
    top = (exc.name or "").split(".")[0]
    if top not in TRAIN_EXTRA_MODULES:
        return None
    return (
        f"the trainer needs the 'train' extra, which is not installed (no module {top!r}). Install it with\n"
        "  pip install 'drdaemon[train]'\n"
        "or, in a clone of the repository, pip install -e '.[train]' (the daemon itself does not need it)"
    )


EPILOG = """\
examples:
  python -m trainer --abnormal data/abnormal --normal data/normal --out runs/casting/weights.safetensors
  python -m trainer ... --clip-weights /models/RN101.pt          # offline: a local OpenAI checkpoint
  python -m trainer ... --clip radiograph-clip --clip-weights bundled --set loss.feature_norm='"input"'
                                                                  # the radiograph CLIP shipped with drdaemon
  python -m trainer ... --resume                                  # continue from the run's checkpoint
  torchrun --nproc_per_node=4 -m trainer ...                      # DistributedDataParallel, one GPU each
  python -m trainer ... --set schedule.total_iters=200 --set optim.enhancer_batch=4
  python -m trainer ... --scheme cyclegan --set cyclegan.constant_iters=5000   # CycleGAN, no CLIP

Checkpoints, TensorBoard logs (tensorboard --logdir RUN_DIR/tensorboard) and preview images go to
RUN_DIR, by default the --out path without its suffix plus '.run'. The weights file gets a model
card beside it (NAME.model_card.json).
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m trainer",
        description="Train the drdaemon enhancer without paired labels: learned CLIP prompts tell well "
        "from abnormally exposed frames, and the enhancer learns to move its output toward "
        "'well exposed' while keeping the input's structure and the CLAHE prior's contrast "
        "(as seen by CLIP's feature maps).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--abnormal",
        type=Path,
        required=True,
        help="folder of abnormally exposed frames (TIFF, PNG, DICOM or .his, as the daemon reads them; not recursive)",
    )
    parser.add_argument(
        "--normal", type=Path, required=True, help="folder of well exposed frames, not of the same parts (unpaired)"
    )
    parser.add_argument(
        "--out",
        type=Path,
        required=True,
        help="weights file to export (.safetensors), loaded by drdaemon's learned engine",
    )
    parser.add_argument(
        "--config", type=Path, default=None, help="training config TOML; every key is documented in train.example.toml"
    )
    parser.add_argument(
        "--clip",
        default=None,
        metavar="MODEL",
        help="open_clip model name (default RN101-quickgelu), a model config shipped with the trainer "
        "(radiograph-clip, tiny-rn) or path of an open_clip model config JSON; must have a ResNet "
        "visual tower (sets clip.model)",
    )
    parser.add_argument(
        "--clip-weights",
        default=None,
        metavar="SOURCE",
        help="CLIP weights: a pretrained tag (default openai), a checkpoint file (OpenAI JIT "
        "archive, state dict, .safetensors), local-dir:DIR, bundled (the weights shipped for "
        "--clip radiograph-clip), or none for random initialisation (sets clip.weights)",
    )
    parser.add_argument(
        "--scheme",
        choices=("clip", "cyclegan"),
        default=None,
        help="clip (default): CLIP-guided prompts and CLAHE prior; cyclegan: two generators "
        "(abnormal -> well exposed and back) and two PatchGAN discriminators, settings in "
        "[cyclegan]; the forward generator is exported (sets run.scheme)",
    )
    parser.add_argument(
        "--resume", action="store_true", help="continue exactly from RUN_DIR/checkpoint.pt (same data, config and CLIP)"
    )
    add_set_option(parser, "schedule.total_iters=200")
    parser.add_argument(
        "--device",
        default=None,
        help="auto (default: this process's GPU if any), cpu, cuda or cuda:N (sets run.device)",
    )
    parser.add_argument("--seed", type=int, default=None, help="seed for initialisation and data order (run.seed)")
    parser.add_argument(
        "--deterministic",
        action="store_true",
        help="deterministic algorithms only (slower on GPU; exact resume is guaranteed on CPU)",
    )
    return parser


def overrides_from(args: argparse.Namespace) -> list[str]:
    """The dedicated options as ``--set`` overrides (they win over the config file)."""
    extra = list(args.overrides)
    for key, value in (
        ("clip.model", args.clip),
        ("clip.weights", args.clip_weights),
        ("run.device", args.device),
        ("run.seed", args.seed),
        ("run.scheme", args.scheme),
    ):
        if value is not None:
            extra.append(override(key, value))
    if args.deterministic:
        extra.append(override("run.deterministic", True))
    return extra


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        cfg = load_config(args.config, overrides_from(args))
    except TrainConfigError as exc:
        print(f"trainer: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        return _train(args, cfg)
    except ModuleNotFoundError as exc:
        message = missing_extra(exc)
        if message is None:
            raise
        print(f"trainer: {message}", file=sys.stderr)
        return EXIT_MISSING_EXTRA


def _train(args: argparse.Namespace, cfg: TrainConfig) -> int:
    # Imported after parsing so --help and config errors answer without loading torch.
    from trainer.clip.scheme import Trainer
    from trainer.cyclegan.scheme import CycleGanTrainer
    from trainer.shared.clip_weights import ClipUnavailable
    from trainer.shared.data import DataError
    from trainer.shared.distributed import init_distributed, shutdown
    from trainer.shared.errors import TrainerError

    ctx = init_distributed(cfg.run.device)
    scheme = CycleGanTrainer if cfg.run.scheme == "cyclegan" else Trainer
    try:
        trainer = scheme(cfg, args.abnormal, args.normal, args.out, resume=args.resume, ctx=ctx)
        result = trainer.run()
    except ClipUnavailable as exc:
        print(f"trainer: {exc}", file=sys.stderr)
        return EXIT_CLIP
    except (DataError, TrainerError) as exc:
        print(f"trainer: {exc}", file=sys.stderr)
        return EXIT_DATA
    except KeyboardInterrupt:
        if ctx.is_main:
            print("trainer: interrupted; continue from the last checkpoint with --resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        shutdown(ctx)
    if ctx.is_main:
        print(
            f"trainer: {result.iterations} iterations in {result.duration_s:.1f} s; "
            f"weights {result.weights} (sha256 {result.weights_sha256}); model card {result.card}"
        )
    return 0
