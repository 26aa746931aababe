"""The radiograph CLIP: its captioned synthetic data, pretraining, judge, the oracle and the bundler.

Entry points (kept at their old names): ``python -m trainer.pretrain_clip``,
``python -m trainer.oracle``, ``python -m trainer.bundle``.
"""
