"""The network and nothing else: the enhancer (:mod:`.network`), its pooling and its exact tiling.

Its weights files are io (:mod:`drdaemon.io.weights`); the frame's window is a kernel
(:mod:`drdaemon.kernels.window`).
"""
