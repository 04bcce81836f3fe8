"""Files: reading images, atomic writes, the model file, per-image outputs, label and mask lists, result tables.

Imports only :mod:`artseg_core.imgproc` from ArtSeg.
"""
from artseg_core.io.files import atomic_write, write_png, write_text, write_tiff
from artseg_core.io.images import IMAGE_SUFFIXES, ColourImageWarning, ImageReadError, list_images, read_image, \
    read_image_with_meta

__all__ = ["ImageReadError", "ColourImageWarning", "IMAGE_SUFFIXES", "read_image", "read_image_with_meta",
           "list_images", "atomic_write", "write_tiff", "write_text", "write_png"]
