"""Antialiased bicubic shrinking of an RGB picture with torch's uint8 kernel.

The image stage shrinks every downloaded photo with an antialiased bicubic filter (the filter
whose support widens with the scale, as Pillow's ``resize(..., BICUBIC)``: what keeps the output
above img2dataset's in PSNR, ``benchmarks/image_quality.py``).  Pillow computes it in plain C, one
tap at a time; that was as much of the image stage's CPU as the JPEG decode.  torch (a dependency
already, for CLIP) has the same filter for uint8 channels-last pictures with AVX2 and integer
arithmetic: about 2.5x Pillow's speed on the benchmark's photographs (docs/benchmarks.md), the
same PSNR, and the same bytes from its generic, AVX2 and AVX-512 kernels and on any number of
threads (a test compares the generic kernel's output with the vectorised one's).  Its rounding
differs from Pillow's (at most 2 levels, in a few pixels): ``process.PIXELS_VERSION`` numbers it.

torch is imported on the first call, so a process that shrinks no picture does not pay for it
(about 2 CPU-seconds a process).  Its intra-op thread count is left as it is (the CLIP stage sets
it on the CPU): one thread per call would cost ~15% less CPU per picture than two when two image
threads shrink at once, but the setting is the whole process's.
"""

from __future__ import annotations

import threading
import warnings
from typing import Tuple

import numpy as np
from PIL import Image

__all__ = ["shrink"]

_torch = None
_lock = threading.Lock()
# The pixels are handed to torch as a read-only view of Pillow's buffer (no copy); torch warns that
# it cannot protect such an array from writes.  Nothing writes to it.
warnings.filterwarnings("ignore", message="The given NumPy array is not writable", category=UserWarning)


def _load():
    global _torch
    with _lock:
        if _torch is None:
            import torch
            import torch.nn.functional  # noqa: F401  (interpolate)

            _torch = torch
    return _torch


def shrink(img: Image.Image, size: Tuple[int, int], box: Tuple[int, int, int, int]) -> Image.Image:
    """``img`` (RGB) resized to ``size`` (width, height; not larger than the picture) with the
    antialiased bicubic filter, then the window ``box`` (left, top, right, bottom) of the result."""
    torch = _torch or _load()
    # Pillow's pixels (HWC) seen as NCHW channels-last: the layout the vectorised kernel reads
    nchw = torch.from_numpy(np.asarray(img)).permute(2, 0, 1).unsqueeze(0)
    with torch.inference_mode():
        out = torch.nn.functional.interpolate(
            nchw, size=(size[1], size[0]), mode="bicubic", antialias=True, align_corners=False
        )
    left, top, right, bottom = box
    window = out[0, :, top:bottom, left:right].permute(1, 2, 0).contiguous()
    return Image.fromarray(window.numpy(), "RGB")
