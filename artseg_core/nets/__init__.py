"""The torch networks (ResNet classifier, U-Net), their profiles and CPU/GPU acceleration helpers.

Imports nothing else from ArtSeg. Kept free of imports here so that ``artseg_core.nets.cpus`` needs no torch.
"""
