"""The CLIP-guided scheme (``--scheme clip``, docs/method.md): prompts, losses, the frozen CLIP's views, the trainer."""
