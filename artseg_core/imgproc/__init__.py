"""Image operations on numpy arrays (no torch, no files): normalisation, quality scores, post-processing,
inpainting and tiling. The lowest layer: imports nothing else from ArtSeg."""
