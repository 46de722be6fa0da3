"""Shared fixtures: real default weights (fetched once per machine), shared data, tiny models."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def shared_data_root() -> Path | None:
    """The benchmark data folder (FOCSAM_DATA, default ../shared/data), or None if absent."""
    root = Path(os.environ.get("FOCSAM_DATA", REPO.parent / "shared" / "data"))
    return root if root.is_dir() else None


@pytest.fixture(scope="session")
def shared_data() -> Path:
    root = shared_data_root()
    if root is None:
        pytest.skip("benchmark data not present (set FOCSAM_DATA)")
    return root


@pytest.fixture(scope="session")
def vit_t_path() -> Path:
    """The real MobileSAM weights, resolved through the registry (cache, else download)."""
    from napari_focsam.core.models.weights import resolve_weights

    if os.environ.get("NAPARI_FOCSAM_OFFLINE") == "1":
        try:
            return resolve_weights("vit_t", download=False)
        except Exception as exc:  # offline and not cached: nothing to test against
            pytest.skip(f"vit_t weights not cached and offline: {exc}")
    return resolve_weights("vit_t")


@pytest.fixture(scope="session")
def mobile_sam(vit_t_path):
    """The real MobileSAM model on the CPU (loaded once per test session)."""
    from napari_focsam.core.models import load_checkpoint

    return load_checkpoint(vit_t_path)


def make_tiny_focsam(refiner_depth: int = 0, seed: int = 0):
    """A small, randomly initialised FocSAM with the real architecture classes (fast on CPU)."""
    from napari_focsam.modeling.focsam import FocSAM
    from napari_focsam.modeling.image_encoder_vit import ImageEncoderViT, ViTConfig

    torch.manual_seed(seed)
    encoder = ImageEncoderViT(ViTConfig(embed_dim=32, depth=2, num_heads=2, global_attn_indexes=(1,)))
    refiner = None
    if refiner_depth:
        from napari_focsam.modeling.focus_refiner import FocusRefiner

        refiner = FocusRefiner(depth=refiner_depth, mlp_ratio=1.0)
    return FocSAM(encoder, focus_refiner=refiner, model_type="tiny_test").eval()


@pytest.fixture
def tiny_focsam():
    return make_tiny_focsam()


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory):
    """A checkpoint file of :func:`make_tiny_focsam` (for the CLI tests)."""
    from napari_focsam.core.models import save_checkpoint

    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    save_checkpoint(make_tiny_focsam(), path)
    return path


@pytest.fixture
def loads(monkeypatch):
    """Records every model load (to show that a check came before any work)."""
    import napari_focsam.core.models as models

    seen = []
    real = models.load_model

    def load(*args, **kwargs):
        seen.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(models, "load_model", load)
    return seen


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """One torch thread for the whole suite: on CI's 2 shared cores (Xvfb and Qt beside us),
    oversubscribed OpenMP threads made the tests several times slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
