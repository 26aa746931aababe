"""Building the learned network's workers: for ``engine.name = "net"`` and for the pipeline's ``net`` steps.

One function, so that both run the same code: ``.onnx`` weights on ONNX Runtime
(:mod:`drdaemon.engines.onnx_runtime`, the ``onnx`` extra), anything else on PyTorch
(:mod:`drdaemon.engines.net`). Neither backend is imported before it is asked for.
"""

from __future__ import annotations

from drdaemon.config import EngineConfig
from drdaemon.engines.base import Engine


def build_learned_engines(config: EngineConfig, key: str = "engine.weights") -> list[Engine]:
    """The learned engine's workers for ``config`` (its weights, precision, window and devices);
    ``key`` names the weights in configuration errors (``engine.pipeline.steps.1.net.weights``)."""
    if config.weights is not None and config.weights.suffix.lower() == ".onnx":
        from drdaemon.engines.onnx_runtime import build_onnx_engines

        return [*build_onnx_engines(config, key)]
    from drdaemon.engines.net import build_net_engines

    return [*build_net_engines(config, key)]


__all__ = ["build_learned_engines"]
