"""Shared fixtures: tiny random-init timm ViTs (no downloads)."""
from __future__ import annotations

import timm
import torch
import pytest

TINY = dict(img_size=64, patch_size=8, depth=2, embed_dim=64, num_heads=2)


def tiny_vit(name: str = "deit_tiny_patch16_224", num_classes: int = 10, **overrides) -> torch.nn.Module:
    """A small random-init timm ViT; ``name`` picks the family (distilled, registers, …)."""
    torch.manual_seed(0)
    kwargs = {**TINY, **overrides}
    return timm.create_model(name, pretrained=False, num_classes=num_classes, **kwargs).eval()


@pytest.fixture
def images() -> torch.Tensor:
    return torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(1))


def expect_file_error(loader, path, *fragments: str) -> str:
    """``loader(path)`` raises a ValueError whose message names ``path`` and holds every fragment."""
    with pytest.raises(ValueError) as caught:
        loader(path)
    message = str(caught.value)
    assert str(path) in message, message
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    return message


@pytest.fixture
def one_thread():
    """Run a test in one thread: with tiny models a second thread only adds synchronisation, which
    dominates on a shared, loaded machine (use with ``pytestmark = pytest.mark.usefixtures("one_thread")``)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
