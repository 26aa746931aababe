"""``python -m trainer.pretrain_clip``: radiograph-CLIP pretraining (the work is in :mod:`trainer.radiograph.pretrain`)."""

from trainer.radiograph.pretrain import main

if __name__ == "__main__":
    raise SystemExit(main())
