"""Decoder-only adaptation: the encoder frozen (BatchNorm statistics too) and encoded once per view."""

from __future__ import annotations

import torch

from models.finetune import InteractiveConfig, TrainConfig, fit, prepare_model
from models.finetune.data import NO_AUGMENT

from .helpers import squares, tiny_small


def _count_encoder_calls(sam) -> list[int]:
    calls = [0]
    sam.image_encoder.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


def test_decoder_mode_trains_only_prompt_encoder_and_decoder_and_keeps_bn_statistics(tmp_path):
    sam = prepare_model(tiny_small(), "decoder")
    trainable = {n for n, p in sam.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith(("prompt_encoder", "mask_decoder")) for n in trainable)
    before = {k: v.clone() for k, v in sam.state_dict().items()}
    cfg = TrainConfig(epochs=1, batch_size=4, lr=1e-2, interactive=InteractiveConfig(iterations=2), progress=False)
    fit(sam, squares(8, seed=1), squares(4, seed=2), cfg, tmp_path / "run", log=lambda s: None)
    after = sam.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith(("prompt_encoder", "mask_decoder")) for k in changed)
    assert torch.equal(before["image_encoder.stem.0.1.running_mean"], after["image_encoder.stem.0.1.running_mean"])


def test_cached_views_encode_each_image_once_per_view_and_survive_a_resume(tmp_path):
    train, val = squares(8, seed=3), squares(4, seed=4)
    cfg = TrainConfig(epochs=2, batch_size=4, lr=1e-3, cache_views=2, interactive=InteractiveConfig(iterations=2),
                      progress=False)
    sam = prepare_model(tiny_small(), "decoder")
    calls = _count_encoder_calls(sam)
    first = fit(sam, train, val, cfg, tmp_path / "run", log=lambda s: None)
    assert calls[0] == 2 * len(train) + len(val)  # caching only: no encoder pass during the epochs
    assert (tmp_path / "run" / "cache-train.pt").is_file() and (tmp_path / "run" / "cache-val.pt").is_file()

    more = TrainConfig(**{**cfg.__dict__, "epochs": 3})
    again = prepare_model(tiny_small(), "decoder")
    calls2 = _count_encoder_calls(again)
    resumed = fit(again, train, val, more, tmp_path / "run", resume=True, log=lambda s: None)
    assert calls2[0] == 0  # the caches are reused, not recomputed
    assert resumed.last_epoch == 3 and resumed.history[:2] == first.history[:2]


def test_views_are_different_augmentations(tmp_path):
    from models.finetune.trainer import build_cache

    sam = tiny_small()
    cache = build_cache(sam, squares(3, seed=5), 2, 0, TrainConfig().augment, tmp_path / "c.pt", lambda s: None)
    assert len(cache.features) == 2 and cache.features[0].dtype == torch.float16
    assert not torch.equal(cache.masks[0], cache.masks[1])  # flips/crops differ between views
    plain = build_cache(sam, squares(3, seed=5), 1, 0, NO_AUGMENT, tmp_path / "p.pt", lambda s: None)
    reread = build_cache(sam, squares(3, seed=5), 1, 0, NO_AUGMENT, tmp_path / "p.pt", lambda s: None)
    assert torch.equal(plain.features[0], reread.features[0])


def test_train_command_decoder_mode_writes_an_adapter_for_its_base(tmp_path):
    import json

    from models import load_model, save_weights
    from p2sam.train import main

    from .helpers import TINY_SMALL

    base = tmp_path / "base.pt"
    save_weights(tiny_small(), base, "small", TINY_SMALL, {"name": "base"})
    out = tmp_path / "run"
    argv = ["--dataset", "phantom", "--phantom-train", "8", "--phantom-val", "4", "--epochs", "1", "--batch-size", "4",
            "--iterations", "2", "--base", str(base), "--mode", "decoder", "--cache-views", "1", "--out", str(out),
            "--name", "tinyadapt", "--threads", "1", "--no-progress"]
    assert main(argv) == 0
    adapter = out / "adapter.pt"
    loaded = load_model(base, lora=adapter)
    assert loaded.card["name"] == "tinyadapt" and loaded.card["mode"] == "decoder"
    assert json.loads((out / "card.json").read_text())["modality"] == "CT"
    assert (out / "adapter.md").read_text().startswith("# Model card: tinyadapt")


def test_training_a_bundled_adapter_further_writes_an_adapter_on_the_adapters_own_base(tmp_path):
    """``--base kvasir_lite --mode decoder``: the new adapter replaces every module kvasir_lite
    held, so it names lite_medsam (kvasir_lite's base) and loads on its own."""
    import pytest

    from models import load_model
    from models.checkpoints import read_checkpoint
    from models.registry import bundled_models
    from p2sam.train import main

    if "kvasir_lite" not in bundled_models():
        pytest.skip("kvasir_lite is not bundled in this install")
    out = tmp_path / "run"
    argv = ["--dataset", "phantom", "--phantom-train", "2", "--phantom-val", "1", "--epochs", "1", "--batch-size", "2",
            "--iterations", "1", "--lr", "1e-2", "--base", "kvasir_lite", "--mode", "decoder", "--cache-views", "1",
            "--out", str(out), "--name", "further", "--threads", "2", "--no-progress"]
    assert main(argv) == 0
    raw = read_checkpoint(out / "adapter.pt")
    assert raw["base_weights"] == "lite_medsam"
    assert raw["base_sha256"] == read_checkpoint(load_model("kvasir_lite").files[-1])["base_sha256"]
    further, before = load_model(out / "adapter.pt"), load_model("kvasir_lite")
    key = "mask_decoder.iou_prediction_head.layers.0.weight"
    assert not torch.equal(further.sam.state_dict()[key], before.sam.state_dict()[key])
