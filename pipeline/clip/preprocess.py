"""open_clip's eval transform, split so the CPU does only what must happen on the CPU.

The transform is Resize -> CenterCrop -> RGB -> ToTensor -> Normalize.  Two ways to run it:

* CPU geometry (``cpu`` then ``normalize``): PIL resizes and crops on the stage's threads and yields
  uint8 pixels; the float conversion and normalisation run batched on the model's device.  The
  same transform objects do the geometry, so the pixels are the ones open_clip would make.  This is
  the CPU device's path and the GPU's fallback.
* Tensor geometry (``pixels``): decoded uint8 CHW tensors (nvJPEG's output on a GPU) are resized,
  cropped and normalised with torch on whatever device they are on, batched per input size.  On an
  H100 the CPU path was bound by PIL's decode + bicubic resize under the GIL (about 1,500 images/s
  on 8 or 16 threads, under ViT-L/14's 1,800 images/s); on the GPU that work is a few kernels.
  The maths follows PIL's: antialiased resize of the shorter side (the same size rule, from
  torchvision), output rounded to 8 bits as PIL does, then the centre crop; pixel values differ from
  PIL's by about one level (float separable passes against PIL's fixed point), see the tests.

``gpu_decodable`` says from a JPEG's header whether nvJPEG can take it, so that PNGs, CMYK or
12-bit JPEGs go to PIL instead of failing (and with them the whole batched decode).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Dict, List, Optional, Sequence, Tuple

import numpy as np

if TYPE_CHECKING:  # torch is imported lazily, as in clip_model
    import torch


class SplitPreprocess:
    def __init__(self, geometry, mean, std):
        self.geometry = geometry  # PIL -> PIL (resize, crop); also read by the tensor path
        self.mean = mean
        self.std = std
        self._constants: Dict[Tuple[str, object], tuple] = {}

    @classmethod
    def from_transform(cls, transform) -> Optional["SplitPreprocess"]:
        """Split a torchvision Compose of the usual shape; None for anything else (use it whole)."""
        from torchvision import transforms as T

        steps = list(getattr(transform, "transforms", []))
        names = [type(t).__name__ for t in steps]
        if len(steps) < 3 or not isinstance(steps[-1], T.Normalize) or "ToTensor" not in names[-2]:
            return None
        geometry = [t for t in steps[:-2] if isinstance(t, (T.Resize, T.CenterCrop))]
        others = [n for t, n in zip(steps[:-2], names[:-2]) if not isinstance(t, (T.Resize, T.CenterCrop))]
        if any(n not in ("MaybeConvertMode", "_convert_to_rgb") for n in others):
            return None
        return cls(T.Compose(geometry), tuple(steps[-1].mean), tuple(steps[-1].std))

    @property
    def resize_side(self) -> int:
        """The shorter side the Resize step makes (0 when there is none)."""
        from torchvision import transforms as T

        for step in self.geometry.transforms:
            if isinstance(step, T.Resize):
                size = step.size
                return size if isinstance(size, int) else min(size)
        return 0

    def cpu(self, image):
        """PIL image -> uint8 HWC tensor of the model's input size."""
        import torch

        return torch.from_numpy(np.asarray(self.geometry(image.convert("RGB")), dtype=np.uint8).copy())

    def normalize(self, batch):
        """uint8 NHWC on any device -> normalised float32 NCHW on the same device."""
        import torch

        mean = torch.tensor(self.mean, device=batch.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=batch.device).view(1, 3, 1, 1)
        return (batch.permute(0, 3, 1, 2).float().div_(255.0) - mean) / std

    # --- the tensor path ------------------------------------------------------------------------

    def pixels(self, images: Sequence["torch.Tensor"], dtype=None) -> "torch.Tensor":
        """uint8 RGB CHW tensors of any sizes, on one device -> the normalised NCHW model input there.

        Images of one size are resized as one batch (the pipeline's image stage makes most of them
        the same size, so a batch is usually one group); ``dtype`` is the model's input dtype.
        """
        import torch

        if not images:
            raise ValueError("no images")
        groups: Dict[tuple, List[int]] = {}
        for i, image in enumerate(images):
            if image.dim() != 3 or image.shape[0] != 3:
                raise ValueError(f"expected a 3xHxW RGB tensor, got shape {tuple(image.shape)}")
            groups.setdefault(tuple(image.shape), []).append(i)
        out = None
        for index in groups.values():
            batch = self.geometry_tensor(torch.stack([images[i] for i in index]))
            if len(groups) == 1:
                out = batch
                break
            if out is None:
                out = batch.new_empty((len(images), *batch.shape[1:]))
            out[torch.tensor(index, device=batch.device)] = batch
        scale, shift = self._scale_shift(out.device)
        # (x / 255 - mean) / std as one multiply-add: x * (1 / (255 std)) - mean / std
        out = torch.addcmul(shift, out, scale)
        return out if dtype is None else out.to(dtype)

    def geometry_tensor(self, batch: "torch.Tensor") -> "torch.Tensor":
        """uint8 (or 0..255 float) NCHW -> float NCHW after the transform's resize and crop steps.

        Uses the steps' own parameters and torchvision's functional ops (so the output size rule is
        the one the PIL path uses); antialias is always on, as PIL always antialiases.
        """
        from torchvision import transforms as T
        from torchvision.transforms import functional as TF

        x = batch.float()
        for step in self.geometry.transforms:
            if isinstance(step, T.Resize):
                resized = TF.resize(x, step.size, step.interpolation, step.max_size, antialias=True)
                if resized is not x:  # PIL works on 8-bit images: clip and round as it does
                    x = resized.clamp_(0, 255).round_()
            elif isinstance(step, T.CenterCrop):
                x = TF.center_crop(x, step.size)
            else:  # from_transform admits nothing else
                raise TypeError(f"unexpected geometry step {step!r}")
        return x

    def _scale_shift(self, device):
        import torch

        key = str(device)
        if key not in self._constants:
            mean = torch.tensor(self.mean, dtype=torch.float64)
            std = torch.tensor(self.std, dtype=torch.float64)
            self._constants[key] = (
                (1.0 / (255.0 * std)).float().view(1, 3, 1, 1).to(device),
                (-mean / std).float().view(1, 3, 1, 1).to(device),
            )
        return self._constants[key]


# --- which images nvJPEG gets ------------------------------------------------------------------

# SOF markers nvJPEG decodes: baseline, extended sequential and progressive Huffman.  Lossless,
# hierarchical and arithmetic-coded JPEGs go to PIL.
_NVJPEG_SOF = {0xC0, 0xC1, 0xC2}
_ALL_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
# Luma sampling (H, V) with 1x1 chroma that nvJPEG knows: 4:4:4, 4:2:2, 4:2:0, 4:4:0, 4:1:1, 4:1:0.
_NVJPEG_LUMA_SAMPLING = {(1, 1), (2, 1), (2, 2), (1, 2), (4, 1), (4, 2)}


def gpu_decodable(data: bytes, min_side: int = 0) -> bool:
    """Whether a file is a JPEG that nvJPEG decodes to the RGB PIL would give, at least
    ``min_side`` pixels on its shorter side.

    Images the model must enlarge go to PIL for decode and resize alike: measured on an H200,
    the GPU path's upscaled small images (48x40, 600x90) drifted from PIL's (cosine 0.96 with the
    tiny CLIP) while every downscaled one agreed (> 0.999); the pipeline's image stage makes most
    images at least the model's size, so this costs little.

    Reads the markers up to the frame header: 8-bit, 1 (grey) or 3 (YCbCr) components in a common
    chroma subsampling, not RGB-coded; and the file must end with the end-of-image marker.
    Everything else (PNG, CMYK/YCCK, 12-bit, arithmetic coding, a broken header, a truncated file
    or trailing bytes) is decoded by PIL, so it fails or succeeds as on the CPU path (PIL refuses a
    truncated JPEG that libjpeg and nvJPEG would fill with grey).  Hand-written because PIL's
    header parse (Image.open) costs ~7x more per image (3 against 22 us measured), which would be
    felt at ViT-B/32 rates (20,000 images/s on an H100).
    """
    n = len(data)
    if n < 4 or data[0] != 0xFF or data[1] != 0xD8 or data[-2] != 0xFF or data[-1] != 0xD9:
        return False
    pos, adobe_transform = 2, None
    while pos + 4 <= n:
        if data[pos] != 0xFF:
            return False
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0x01, 0xD8) or 0xD0 <= marker <= 0xD7:  # no length field
            pos += 2
            continue
        length = (data[pos + 2] << 8) | data[pos + 3]
        if length < 2 or pos + 2 + length > n:
            return False
        segment = data[pos + 4 : pos + 2 + length]
        if marker == 0xEE and segment[:5] == b"Adobe" and len(segment) >= 12:
            adobe_transform = segment[11]
        if marker in _ALL_SOF:
            if marker not in _NVJPEG_SOF or len(segment) < 6:
                return False
            precision, height, width, components = (
                segment[0],
                (segment[1] << 8) | segment[2],
                (segment[3] << 8) | segment[4],
                segment[5],
            )
            if precision != 8 or height == 0 or width == 0 or components not in (1, 3):
                return False
            if min(height, width) < min_side:
                return False
            if len(segment) < 6 + 3 * components:
                return False
            if components == 1:
                return True
            ids = bytes(segment[6 + 3 * c] for c in range(3))
            if adobe_transform == 0 or (adobe_transform is None and ids == b"RGB"):
                return False  # RGB stored without the YCbCr transform (libjpeg's two signs of it)
            sampling = [(segment[7 + 3 * c] >> 4, segment[7 + 3 * c] & 0x0F) for c in range(3)]
            return sampling[0] in _NVJPEG_LUMA_SAMPLING and sampling[1] == sampling[2] == (1, 1)
        if marker == 0xDA:  # scan before any frame header
            return False
        pos += 2 + length
    return False
