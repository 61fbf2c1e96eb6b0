"""Backbone loading: Meta, fine-tuned (timm names, nested), LoRA, project files, and clear errors."""

from __future__ import annotations

import pytest
import torch

from models import CheckpointError, build_sam, load_model, save_weights
from models.checkpoints import merge_loralib, normalize_keys


def _one_line(exc: pytest.ExceptionInfo) -> str:
    text = str(exc.value)
    assert "\n" not in text and len(text) < 400, text
    return text


@pytest.fixture(scope="module")
def vit_b():
    torch.manual_seed(0)
    return build_sam("vit_b")


def test_meta_checkpoint_backbone_is_recognised(vit_b, tmp_path):
    path = tmp_path / "sam_vit_b.pth"
    torch.save(vit_b.state_dict(), path)
    loaded = load_model(path)
    assert loaded.backbone == "vit_b" and len(loaded.sha256) == 64
    key = "image_encoder.blocks.3.attn.qkv.weight"
    assert torch.equal(loaded.sam.state_dict()[key], vit_b.state_dict()[key])


def test_fine_tuned_timm_names_nested_under_model(vit_b, tmp_path):
    state = {}
    for key, value in vit_b.state_dict().items():
        key = key.replace(".mlp.lin1.", ".mlp.fc1.").replace(".mlp.lin2.", ".mlp.fc2.")
        state[f"module.{key}"] = value
    path = tmp_path / "finetuned.pth"
    torch.save({"model": state, "epoch": 7}, path)
    loaded = load_model(path, backbone="vit_b")
    key = "image_encoder.blocks.5.mlp.lin2.weight"
    assert torch.equal(loaded.sam.state_dict()[key], vit_b.state_dict()[key])


def test_lora_adapter_file_loads_on_its_base(vit_b, tmp_path):
    """Train-time LoRA (peft) -> adapter file -> merged into a fresh copy of the base."""
    from models.lora import add_lora, save_lora_file

    base_path = tmp_path / "base.pth"
    torch.save(vit_b.state_dict(), base_path)
    tuned = load_model(base_path).sam
    add_lora(tuned, rank=2, alpha=2.0)
    trainable = {n for n, p in tuned.named_parameters() if p.requires_grad}
    assert any("lora_B" in n for n in trainable) and "mask_decoder.iou_token.weight" in trainable
    assert not any(n.endswith("blocks.0.mlp.lin1.weight") for n in trainable)
    with torch.no_grad():
        for name, param in tuned.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.02)
        tuned.mask_decoder.iou_token.weight.add_(1.0)
    x = torch.randn(1, 64, 64, 768)
    expected = tuned.image_encoder.blocks[0].attn(x)
    adapter = save_lora_file(tuned, tmp_path / "adapter.pt", base_backbone="vit_b", base_sha256="x")
    loaded = load_model(base_path, lora=adapter)
    assert loaded.name == "base+adapter"
    assert torch.allclose(loaded.sam.image_encoder.blocks[0].attn(x), expected, atol=1e-4)
    assert torch.equal(loaded.sam.mask_decoder.iou_token.weight, tuned.mask_decoder.iou_token.weight)
    assert type(loaded.sam.image_encoder.blocks[0].attn.qkv) is torch.nn.Linear  # merged, no LoRA overhead


def test_reference_loralib_weights_are_merged():
    torch.manual_seed(0)
    d, r = 6, 1
    base = torch.randn(3 * d, d)
    a = torch.randn(3 * r, d)
    b = torch.randn(3 * d, r)
    proj, pa, pb = torch.randn(d, d), torch.randn(r, d), torch.randn(d, r)
    merged = merge_loralib({"x.qkv.weight": base, "x.qkv.lora_A": a, "x.qkv.lora_B": b, "x.proj.weight": proj, "x.proj.lora_A": pa, "x.proj.lora_B": pb})
    expected_qkv = base.clone()
    for g in range(3):  # q, k, v each get their own rank-r update
        expected_qkv[g * d : (g + 1) * d] += b[g * d : (g + 1) * d] @ a[g * r : (g + 1) * r] / r
    assert torch.allclose(merged["x.qkv.weight"], expected_qkv, atol=1e-5)
    assert torch.allclose(merged["x.proj.weight"], proj + pb @ pa / r, atol=1e-5)
    assert not any("lora" in k for k in merged)


def test_normalize_keys_maps_timm_mlp_names():
    out = normalize_keys({"image_encoder.blocks.0.mlp.fc1.weight": torch.zeros(1)})
    assert list(out) == ["image_encoder.blocks.0.mlp.lin1.weight"]


def test_project_weights_round_trip(tmp_path):
    torch.manual_seed(0)
    sam = build_sam("small")
    path = save_weights(sam, tmp_path / "tiny.pt", "small", {"img_size": 256}, {"data": "test"})
    loaded = load_model(path)
    assert loaded.backbone == "small" and loaded.card == {"data": "test"} and loaded.grid_size == 32
    for key, value in sam.state_dict().items():
        assert torch.allclose(loaded.sam.state_dict()[key].float(), value.float(), atol=1e-2), key


def test_missing_checkpoint(tmp_path):
    with pytest.raises(CheckpointError) as exc:
        load_model(tmp_path / "nope.pth")
    assert "not found" in _one_line(exc) and "nope.pth" in str(exc.value)


def test_truncated_checkpoint(tmp_path):
    torch.manual_seed(0)
    good = save_weights(build_sam("small"), tmp_path / "good.pt", "small", None, {})
    data = good.read_bytes()
    bad = tmp_path / "truncated.pt"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError) as exc:
        load_model(bad)
    assert "truncated.pt" in _one_line(exc) and "truncated or corrupt" in str(exc.value)


def test_mismatched_checkpoint_names_file_and_backbone(vit_b, tmp_path):
    path = tmp_path / "sam_vit_b.pth"
    torch.save(vit_b.state_dict(), path)
    with pytest.raises(CheckpointError) as exc:
        load_model(path, backbone="vit_l")
    text = _one_line(exc)
    assert "sam_vit_b.pth" in text and "vit_l" in text and "looks like a vit_b checkpoint" in text


def test_not_a_state_dict(tmp_path):
    path = tmp_path / "list.pt"
    torch.save([1, 2, 3], path)
    with pytest.raises(CheckpointError) as exc:
        load_model(path, backbone="small")
    assert "no state dict" in _one_line(exc)


def test_pickled_objects_need_opt_in(tmp_path):
    path = tmp_path / "pickled.pt"
    torch.save({"model": build_sam("small").state_dict(), "args": _Args()}, path)
    with pytest.raises(CheckpointError) as exc:
        load_model(path, backbone="small")
    assert "P2SAM_ALLOW_PICKLED_CHECKPOINTS" in _one_line(exc)
    assert load_model(path, backbone="small", allow_pickle=True).backbone == "small"


class _Args:  # stands in for the argparse.Namespace the reference stores in its checkpoints
    lr = 1e-4
