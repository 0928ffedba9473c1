"""The split preprocessing gives the pixels open_clip's own transform gives."""
from __future__ import annotations

import random

import open_clip
import pytest
import torch

from pipeline import synthetic
from pipeline.clip_preprocess import SplitPreprocess


@pytest.mark.parametrize("size", [(300, 200), (224, 224), (120, 400)])
def test_split_equals_the_whole_transform(size):
    _, _, preprocess = open_clip.create_model_and_transforms("ViT-B-32")  # random weights: only the transform
    split = SplitPreprocess.from_transform(preprocess)
    assert split is not None
    image = synthetic.render(synthetic.random_scene(random.Random(size[0])), *size)
    whole = preprocess(image)
    parts = split.normalize(split.cpu(image).unsqueeze(0))[0]
    assert parts.shape == whole.shape == (3, 224, 224)
    assert torch.allclose(parts, whole, atol=1e-5)


def test_unusual_transforms_are_used_whole():
    from torchvision import transforms as T

    assert SplitPreprocess.from_transform(T.Compose([T.RandomHorizontalFlip(), T.ToTensor(),
                                                     T.Normalize((0.5,) * 3, (0.5,) * 3)])) is None
    assert SplitPreprocess.from_transform(lambda im: im) is None
