"""Unpaired CLIP-guided training of the drdaemon enhancer (prompt learning plus a CLAHE prior).

``python -m trainer --help`` for the command; ``docs/method.md`` for the method. The trainer imports
the daemon's network, normalisation, readers and weights format; the daemon never imports
the trainer.
"""
