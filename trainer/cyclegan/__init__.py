"""The CycleGAN scheme (``--scheme cyclegan``): two enhancers, two PatchGAN discriminators."""
