"""Pictures of written digits read as light ink on a dark ground, as MNIST stores them."""

from __future__ import annotations

import numpy as np

from rnnkit.errors import UserError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif")  # what a picture input may be


def read_ink(path) -> np.ndarray:
    """(H, W) float32 in [0, 255]: the picture in grey (ITU-R 601 luma), inverted when its
    background is light (the border's median above mid-grey). A one-line UserError when the file
    is not an image."""
    from PIL import Image, UnidentifiedImageError

    try:
        img = Image.open(path)
        img.load()
    except (OSError, UnidentifiedImageError) as e:
        raise UserError(f"{path}: not a readable PNG/JPEG image ({e.__class__.__name__})") from None
    grey = np.asarray(img.convert("L"), dtype=np.float32)
    border = np.concatenate([grey[0], grey[-1], grey[:, 0], grey[:, -1]])
    return 255.0 - grey if np.median(border) > 127 else grey


def border_median(grey: np.ndarray) -> float:
    return float(np.median(np.concatenate([grey[0], grey[-1], grey[:, 0], grey[:, -1]])))
