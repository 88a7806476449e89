"""Scientific image and label I/O: 8/16-bit and float PNG/TIFF, multi-page TIFF, normalisation, label masks.

``reading.read_image`` keeps a file's own bit depth; ``normalise.normalise`` makes an IMAGE
from it (channel choice, none / min-max / percentile); ``labels.labels_to_mask`` makes a MASK
from a label image. No module here imports ComfyUI.
"""

from .labels import LabelMask, labels_to_mask
from .normalise import CHANNELS, NORMALISATIONS, Normalised, normalise
from .reading import ImageReadError, ImageStack, read_image

__all__ = ["CHANNELS", "NORMALISATIONS", "ImageReadError", "ImageStack", "LabelMask", "Normalised",
           "labels_to_mask", "normalise", "read_image"]
