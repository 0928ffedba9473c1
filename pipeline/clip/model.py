"""Loading an open_clip model and embedding images and texts with it.

Users name a model as open_clip does: a model name plus a pretrained tag (``ViT-L-14`` +
``openai``) or a local checkpoint path; a custom architecture comes with its JSON config.  The
tag ``synthetic-world`` names the tiny model this project trains on its own synthetic images
(tests and the sample build, where no real weights can be downloaded); it resolves to a local
checkpoint, built once and cached, and from there loads through the same open_clip call.

On CUDA the stage is fed from the GPU: JPEGs are decoded by nvJPEG in batches and resized,
cropped and normalised there (``clip_preprocess.SplitPreprocess.pixels``); PNGs and JPEGs nvJPEG
cannot take are decoded by PIL on the thread pool and join the batch.  Reduced precision is the
weights' own dtype (open_clip's ``pure_bf16``/``pure_fp16``), not autocast, so no forward pass
re-casts the weights; ``benchmarks/clip_throughput.py`` measures both.  The CPU path is unchanged:
fp32 weights, PIL decode and geometry on the thread pool.
"""

from __future__ import annotations

import contextlib
import difflib
import io
import json
import logging
import math
import os
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, List, Optional, Sequence

import numpy as np

from .preprocess import SplitPreprocess, gpu_decodable

if TYPE_CHECKING:  # torch is imported lazily: Beam launchers need not load it
    import torch
from ..errors import UserError
from ..recipe import ClipConfig

log = logging.getLogger(__name__)
SYNTHETIC_TAG = "synthetic-world"
# How bf16/fp16 is applied on CUDA: "pure" casts every weight once (open_clip's pure_bf16; torch's
# LayerNorm still accumulates in fp32), "autocast" keeps fp32 weights and runs the forward under
# torch.autocast, which re-casts the weights on every call and keeps LayerNorms and the residual
# stream in fp32.  benchmarks/clip_throughput.py measures both.
CUDA_LOWP = "pure"
_OPEN_CLIP_PRECISION = {"bf16": "pure_bf16", "fp16": "pure_fp16"}
# A GPU batch goes to the model in chunks of at least this many images, at most GPU_CHUNKS of them:
# nvJPEG decodes chunk i+1 (on its own engines) while the model runs chunk i.
MIN_GPU_CHUNK = 64
GPU_CHUNKS = 2


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def resolve_precision(precision: str, device: str) -> str:
    if precision != "auto":
        return precision
    return "bf16" if device.startswith("cuda") else "fp32"


class ClipConfigError(UserError, ValueError):
    """A clip section that names a model, tag, checkpoint or config open_clip cannot load."""


_CHECKPOINT_SUFFIXES = (".bin", ".pt", ".pth", ".safetensors", ".ckpt")


def _is_path(pretrained: str) -> bool:
    return "/" in pretrained or pretrained.startswith(".") or pretrained.endswith(_CHECKPOINT_SUFFIXES)


def check_clip(cfg: ClipConfig) -> None:
    """Fail fast, on the launching machine, for what would otherwise fail on every worker: an
    unknown model name, a tag open_clip does not have for the model, a checkpoint or model config
    that is missing or does not load."""
    import open_clip

    from ..sample import tiny_clip

    if cfg.model_config:
        try:
            json.loads(Path(cfg.model_config).read_text())
            open_clip.add_model_config(cfg.model_config)
        except (OSError, ValueError) as e:
            raise ClipConfigError(f"clip.model_config {cfg.model_config}: not a readable model config ({e})") from e
    if cfg.model == tiny_clip.TINY_MODEL_NAME:
        tiny_clip.register_tiny_config()
    known = open_clip.list_models()
    if cfg.model not in known:
        close = difflib.get_close_matches(cfg.model, known, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else "; a custom architecture needs clip.model_config"
        raise ClipConfigError(f"clip.model {cfg.model!r} is not a model open_clip knows{hint}")
    pretrained = cfg.pretrained
    if pretrained in (None, SYNTHETIC_TAG):
        if pretrained == SYNTHETIC_TAG and cfg.model != tiny_clip.TINY_MODEL_NAME:
            raise ClipConfigError(
                f"clip.pretrained {SYNTHETIC_TAG!r} only exists for model {tiny_clip.TINY_MODEL_NAME!r}"
            )
        return
    if _is_path(pretrained):
        if "://" in pretrained:
            from apache_beam.io.filesystems import FileSystems

            if not FileSystems.exists(pretrained):
                raise ClipConfigError(f"clip.pretrained: no checkpoint at {pretrained}")
            return
        path = Path(pretrained)
        if not path.is_file():
            raise ClipConfigError(f"clip.pretrained: no checkpoint file at {pretrained}")
        if path.suffix != ".safetensors":
            import torch

            try:  # mmap: reads the archive's index, not the weights
                torch.load(path, map_location="cpu", mmap=True, weights_only=True)
            except Exception as e:  # noqa: BLE001 - any failure to load is the user's file
                raise ClipConfigError(f"clip.pretrained: {pretrained} does not load as a checkpoint ({e})") from e
        return
    tags = open_clip.list_pretrained_tags_by_model(cfg.model)
    if pretrained not in tags:
        raise ClipConfigError(
            f"clip.pretrained {pretrained!r} is not a tag of {cfg.model} (open_clip has: {', '.join(tags) or 'none'}); "
            "or give the path of a checkpoint file"
        )


def resolve_pretrained(cfg: ClipConfig) -> Optional[str]:
    """The pretrained argument open_clip gets: a tag, a path, or the tiny model's checkpoint."""
    from ..sample import tiny_clip

    if cfg.model == tiny_clip.TINY_MODEL_NAME:
        tiny_clip.register_tiny_config()
        if cfg.pretrained in (None, SYNTHETIC_TAG):
            return str(tiny_clip.ensure_tiny_clip(log=log.info))
    elif cfg.pretrained == SYNTHETIC_TAG:
        raise ValueError(f"pretrained {SYNTHETIC_TAG!r} only exists for model {tiny_clip.TINY_MODEL_NAME!r}")
    return cfg.pretrained


@dataclass
class ClipModel:
    model: object
    preprocess: object
    tokenizer: object
    device: str
    precision: str
    # CPU decode and resize release the GIL: a few threads keep a model fed (and cost little on CPU).
    threads: int = field(default_factory=lambda: min(8, os.cpu_count() or 1))
    compile: bool = False  # torch.compile the image forward (CUDA only; compiles on first use)
    gpu_decode: Optional[bool] = None  # None: decode and preprocess on the GPU when on CUDA

    def __post_init__(self):
        import torch

        self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="clip-preprocess")
        self.split = SplitPreprocess.from_transform(self.preprocess)
        self.on_cuda = self.device.startswith("cuda")
        self.input_dtype = input_dtype(self.model)
        lowp = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.precision)
        # Autocast only where the weights are still fp32 (precision asked for, not already cast).
        self.autocast_dtype = lowp if self.on_cuda and lowp and self.input_dtype == torch.float32 else None
        self.compile = bool(self.compile and self.on_cuda)
        self.image_forward = _compiled(self.model.encode_image) if self.compile else self.model.encode_image
        self.gpu_decode = self._gpu_decode_works() if self.gpu_decode is not False else False
        self._streams = threading.local()

    def _autocast(self):
        import torch

        if self.autocast_dtype is not None:
            return torch.autocast("cuda", dtype=self.autocast_dtype)
        return contextlib.nullcontext()

    def pixels_from_bytes(self, encoded: Sequence[bytes]) -> "torch.Tensor":
        """Decode and preprocess encoded images on the thread pool: the model's input, on CPU."""
        import torch

        batch = torch.stack(list(self._pool.map(self._prepare, encoded)))
        return self.split.normalize(batch) if self.split else batch

    def _prepare(self, data: bytes):
        image = decode_rgb(data)
        return self.split.cpu(image) if self.split else self.preprocess(image)

    def embed_encoded(self, encoded: Sequence[bytes], chunk: Optional[int] = None) -> np.ndarray:
        """L2-normalised float32 embeddings of encoded images, decoding ahead while the model runs.

        On CUDA (``gpu_decode``) see ``_embed_decoding_on_gpu``.  Otherwise the pool decodes and
        preprocesses the whole batch in order; every ``chunk`` images go to the model as soon as
        they are ready.  On CUDA the forward pass is asynchronous, so the next chunk is being
        prepared while the GPU works on this one; results are copied back once.
        """
        import torch

        if self.gpu_decode:
            return self._embed_decoding_on_gpu(encoded, chunk)
        chunk = CPU_FORWARD if not self.on_cuda else chunk or max(16, len(encoded) // 4)
        outputs, ready = [], []
        with torch.inference_mode(), self._autocast():
            for tensor in self._pool.map(self._prepare, encoded):
                ready.append(tensor)
                if len(ready) == chunk:
                    outputs.append(self._encode_images(ready))
                    ready = []
            if ready:
                outputs.append(self._encode_images(ready))
            emb = torch.nn.functional.normalize(torch.cat(outputs).float(), dim=-1)
        return emb.cpu().numpy().astype(np.float32)

    def _encode_images(self, tensors: list):
        import torch

        # No pin_memory(): page-locking a fresh batch cost more than the copy (measured on an H100).
        pixels = torch.stack(tensors).to(self.device, non_blocking=True)
        pixels = self.split.normalize(pixels) if self.split else pixels
        return _fixed_size(self.image_forward, pixels.to(self.input_dtype), None if self.on_cuda else CPU_FORWARD)

    # --- the GPU path ---------------------------------------------------------------------------

    def _embed_decoding_on_gpu(self, encoded: Sequence[bytes], chunk: Optional[int]) -> np.ndarray:
        """Decode, preprocess and embed on the GPU, chunk by chunk, overlapping decode and model.

        Each chunk is decoded and preprocessed on a side stream (``_device_pixels``) while the
        model's forward of the previous chunk, already queued on the current stream, runs: nvJPEG
        blocks the host only for its own work, and the hardware JPEG engines are not the SMs the
        model uses.  The current stream waits for the chunk's pixels before its forward, and the
        pixels are recorded on it so their memory is not reused early.
        """
        import torch

        n = len(encoded)
        chunk = chunk or max(MIN_GPU_CHUNK, math.ceil(n / GPU_CHUNKS))
        side = self._side_stream()
        compute = torch.cuda.current_stream(torch.device(self.device))
        outputs = []
        with torch.inference_mode():
            for start in range(0, n, chunk):
                with torch.cuda.stream(side):
                    pixels = self._device_pixels(encoded[start : start + chunk], side)
                compute.wait_stream(side)
                pixels.record_stream(compute)
                with self._autocast():
                    outputs.append(self.image_forward(pixels))
                del pixels
            emb = torch.nn.functional.normalize(torch.cat(outputs).float(), dim=-1)
        return emb.cpu().numpy().astype(np.float32)

    def pixels_on_device(self, encoded: Sequence[bytes]) -> "torch.Tensor":
        """The model's input for encoded images, decoded and preprocessed with torch on the model's
        device: the GPU path's preprocessing (on a CPU model: libjpeg-turbo instead of nvJPEG)."""
        import torch

        if self.split is None:
            raise ValueError("the model's transform is not of the usual shape; use pixels_from_bytes")
        stream = torch.cuda.current_stream(torch.device(self.device)) if self.on_cuda else None
        with torch.inference_mode():
            return self._device_pixels(encoded, stream)

    def _device_pixels(self, encoded: Sequence[bytes], stream) -> "torch.Tensor":
        """torchvision's JPEG decoder for the JPEGs nvJPEG can take, PIL (on the pool, meanwhile)
        for the rest; then the tensor geometry and normalisation, queued on ``stream`` (the
        current stream; None on the CPU)."""
        import torch

        device = torch.device(self.device)
        on_gpu = [i for i, data in enumerate(encoded) if gpu_decodable(data, self.split.resize_side)]
        skip = set(on_gpu)
        # the rest is decoded and resized by PIL, as on the CPU path (the tensor resize leaves an
        # image already at the model's size as it is)
        pending = {i: self._pool.submit(self._prepare_chw, data) for i, data in enumerate(encoded) if i not in skip}
        images: list = [None] * len(encoded)
        if on_gpu:
            if stream is not None:
                # torchvision's nvJPEG writes its output from its own stream as soon as the caching
                # allocator hands the memory out; memory freed on this stream (the last chunk's
                # preprocessing) may still be read by kernels queued here, so let them finish first.
                stream.synchronize()
            for i, image in zip(on_gpu, self._decode_jpegs([encoded[i] for i in on_gpu], device)):
                if image is None:
                    pending[i] = self._pool.submit(decode_chw, encoded[i])
                else:
                    images[i] = image
        for i, future in pending.items():
            images[i] = future.result().to(device, non_blocking=True)
        return self.split.pixels(images, self.input_dtype)

    def _prepare_chw(self, data: bytes):
        return self._prepare(data).permute(2, 0, 1)

    def _decode_jpegs(self, encoded: Sequence[bytes], device) -> list:
        """torchvision's JPEG decode to RGB on ``device`` (batched nvJPEG on CUDA); on an error each
        image alone, None where that fails too (a failed batch returns nothing, so one bad file must
        not cost the others their GPU decode)."""
        import torch
        from torchvision.io import ImageReadMode, decode_jpeg

        with warnings.catch_warnings():
            # bytes are read-only (nvJPEG only reads them); torchvision >= 0.29 marks its decoders
            # deprecated in favour of TorchCodec, which the pinned stack does not ship.
            warnings.filterwarnings("ignore", message=".*not writable.*")
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            tensors = [torch.frombuffer(data, dtype=torch.uint8) for data in encoded]
            try:
                return decode_jpeg(tensors, mode=ImageReadMode.RGB, device=device)
            except (RuntimeError, ValueError) as e:
                if device.type == "cuda":
                    torch.cuda.synchronize(device)  # no write of the failed batch may still be pending
                log.warning("nvJPEG batch of %d failed (%s); decoding one by one", len(tensors), str(e)[:200])
            out = []
            for tensor in tensors:
                try:
                    out.append(decode_jpeg([tensor], mode=ImageReadMode.RGB, device=device)[0])
                except (RuntimeError, ValueError):
                    if device.type == "cuda":
                        torch.cuda.synchronize(device)
                    out.append(None)
            return out

    def _side_stream(self):
        """One decode stream per calling thread (a shared model serves several callers at once)."""
        import torch

        stream = getattr(self._streams, "stream", None)
        if stream is None:
            stream = self._streams.stream = torch.cuda.Stream(device=torch.device(self.device))
        return stream

    def _gpu_decode_works(self) -> bool:
        """GPU decode needs CUDA, a transform of the usual shape and torchvision built with nvJPEG."""
        import torch

        if not self.on_cuda or self.split is None:
            if self.gpu_decode:
                log.warning(
                    "GPU decode asked for but the model is on %s or its transform is unusual; decoding on the CPU",
                    self.device,
                )
            return False
        from PIL import Image

        buf = io.BytesIO()
        Image.new("RGB", (16, 16), (200, 100, 50)).save(buf, format="JPEG")
        image = self._decode_jpegs([buf.getvalue()], torch.device(self.device))[0]
        if image is None or tuple(image.shape) != (3, 16, 16):
            log.warning(
                "nvJPEG is not usable here (torchvision %s); decoding on the CPU", __import__("torchvision").__version__
            )
            return False
        return True

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        import torch

        tokens = self.tokenizer(list(texts)).to(self.device, non_blocking=True)
        size = None if self.on_cuda else CPU_FORWARD
        with torch.inference_mode(), self._autocast():
            emb = _fixed_size(self.model.encode_text, tokens, size)
            emb = torch.nn.functional.normalize(emb.float(), dim=-1)
        return emb.cpu().numpy().astype(np.float32)


# On the CPU every forward pass has this many rows (the last one padded by repeating its last
# row): oneDNN/MKL pick kernels by shape, and a row's float bits changed with the batch size the
# runner happened to form (measured: sizes 1-3 and odd text batches differ in the last bits from
# larger ones), which moved rounded similarities and broke byte-identical shards between runners.
# At a fixed size and memory layout a row's result does not depend on its batch-mates or position.
CPU_FORWARD = 16


def _fixed_size(forward, batch, size: Optional[int]):
    """``forward(batch)``, run on exactly ``size`` rows at a time when a size is given."""
    import torch

    if size is None:
        return forward(batch)
    if len(batch) > size:
        return torch.cat([_fixed_size(forward, batch[i : i + size], size) for i in range(0, len(batch), size)])
    n = len(batch)
    if n < size:
        batch = torch.cat([batch, batch[-1:].expand(size - n, *batch.shape[1:])])
    # one memory layout too: the normalised pixels are a channels-last view, a padded batch is
    # not, and oneDNN's convolutions give other bits for the two
    return forward(batch.contiguous())[:n]


def load_clip(cfg: ClipConfig, *, lowp: str = CUDA_LOWP, gpu_decode: Optional[bool] = None) -> ClipModel:
    """The configured model, ready to embed.  ``lowp`` (see CUDA_LOWP) and ``gpu_decode`` are for
    benchmarks and tests; on the CPU the weights stay fp32 whatever the precision says."""
    import open_clip

    if lowp not in ("pure", "autocast"):
        raise ValueError(f"lowp must be pure or autocast, not {lowp!r}")
    if cfg.model_config:
        open_clip.add_model_config(cfg.model_config)
    device = resolve_device(cfg.device)
    precision = resolve_precision(cfg.precision, device)
    pretrained = resolve_pretrained(cfg)
    weights = _OPEN_CLIP_PRECISION.get(precision, "fp32") if device.startswith("cuda") and lowp == "pure" else "fp32"
    if device == "cpu" and cfg.cpu_threads:
        import torch

        # torch runs as many threads as there are cores in every process: with several worker
        # processes (or worker threads) on one machine that oversubscribes the cores several times.
        torch.set_num_threads(cfg.cpu_threads)
    log.info("loading CLIP %s (%s) on %s, %s (weights %s)", cfg.model, pretrained, device, precision, weights)
    model, _, preprocess = open_clip.create_model_and_transforms(
        cfg.model, pretrained=pretrained, device=device, precision=weights
    )
    model.eval()
    return ClipModel(
        model,
        preprocess,
        open_clip.get_tokenizer(cfg.model),
        device,
        precision,
        compile=cfg.compile,
        gpu_decode=gpu_decode,
    )


def _compiled(forward):
    """torch.compile'd ``forward`` with the batch dimension dynamic from the first call: batches
    and chunks come in several sizes, and each new static size would compile again."""
    import torch

    compiled = torch.compile(forward)

    def run(pixels):
        torch._dynamo.maybe_mark_dynamic(pixels, 0)
        return compiled(pixels)

    return run


def input_dtype(model):
    """The dtype the image tower takes: that of its first (patch or stem) convolution's weights."""
    import torch

    visual = getattr(model, "visual", model)
    conv = getattr(visual, "conv1", None)
    if isinstance(getattr(conv, "weight", None), torch.Tensor):
        return conv.weight.dtype
    for p in visual.parameters():
        return p.dtype
    return torch.float32


def decode_rgb(data: bytes):
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        return im.convert("RGB")


def decode_chw(data: bytes):
    """PIL's RGB decode as a uint8 3xHxW tensor (the GPU path's fallback for what nvJPEG can't take)."""
    import torch

    return torch.from_numpy(np.array(decode_rgb(data), dtype=np.uint8)).permute(2, 0, 1)


def texts_of(samples) -> List[str]:
    return [s.caption or "" for s in samples]
