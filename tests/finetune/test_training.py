"""The training loop on a tiny synthetic set: it learns, it resumes exactly, LoRA trains what it should."""

from __future__ import annotations

import pytest
import torch

from models.finetune import AugmentConfig, InteractiveConfig, TrainConfig, fit, prepare_model
from models.finetune.data import collate
from models.finetune.interactive import train_step
from models.finetune.state import cosine_warmup, load_state, make_optimizer
from models.lora import TRAINED_MODULES

from .helpers import squares, tiny_small, tiny_vit

QUICK = TrainConfig(
    epochs=2, batch_size=4, lr=2e-3, warmup_epochs=0.5, seed=3, progress=False,
    interactive=InteractiveConfig(iterations=3, max_new_points=3),
    augment=AugmentConfig(crop_p=0.3, shrink_p=0.3),
)


class Interrupt(Exception):
    pass


def _silent(_: str) -> None:
    pass


def test_training_steps_lower_the_loss():
    sam = tiny_small()
    data = squares(8, seed=1)
    batch = collate([(torch.from_numpy(i).permute(2, 0, 1).float(), torch.from_numpy(m)) for i, m in data], sam)
    opt = make_optimizer(list(sam.parameters()), 2e-3)
    gen = torch.Generator().manual_seed(0)
    cfg = InteractiveConfig(iterations=2, max_new_points=3)
    sam.train()
    losses = [sum(train_step(sam, batch, opt, gen, cfg).loss) for _ in range(8)]
    assert sum(losses[-2:]) < 0.8 * sum(losses[:2]), losses


def test_warm_start_loss_is_dice_plus_bce():
    from models.finetune.losses import segmentation_loss

    logits = torch.randn(2, 16, 16)
    target = (torch.rand(2, 16, 16) > 0.7).float()
    ref = segmentation_loss(logits, torch.zeros(2), target)
    warm = segmentation_loss(logits, torch.zeros(2), target, kind="bce")
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, target)
    assert warm.total.item() == pytest.approx(ref.dice + bce.item() + ref.iou_mse, rel=1e-5)
    assert ref.total.item() == pytest.approx(ref.dice + 20 * ref.focal + ref.iou_mse, rel=1e-5)


def test_fit_writes_states_and_selects_by_validation(tmp_path):
    sam = tiny_small()
    result = fit(sam, squares(8, seed=1), squares(4, seed=2), QUICK, tmp_path, log=_silent)
    assert result.last_epoch == 2 and len(result.history) == 2
    assert all("val_dice" in h and h["iterations"] == 3 for h in result.history)
    best = load_state(tmp_path / "best.pt")
    assert best["val_dice"] == pytest.approx(max(h["val_dice"] for h in result.history))
    last = load_state(tmp_path / "last.pt")
    assert last["epoch"] == 1 and set(last) >= {"model", "optimizer", "scheduler", "rng", "history", "config"}


def test_pretraining_phase_uses_fewer_iterations(tmp_path):
    cfg = TrainConfig(**{**QUICK.__dict__, "epochs": 2, "pretrain_epochs": 1, "pretrain_iterations": 1})
    result = fit(tiny_small(), squares(4), squares(2, seed=5), cfg, tmp_path, log=_silent)
    assert [h["iterations"] for h in result.history] == [1, 3]


def test_resume_continues_from_the_saved_epoch_with_identical_state(tmp_path):
    train, val = squares(8, seed=1), squares(4, seed=2)
    straight = tiny_small()
    fit(straight, train, val, QUICK, tmp_path / "a", log=_silent)

    def stop_after_first_epoch(msg: str) -> None:
        if msg.startswith("epoch 1/"):
            raise Interrupt

    with pytest.raises(Interrupt):
        fit(tiny_small(), train, val, QUICK, tmp_path / "b", log=stop_after_first_epoch)
    assert load_state(tmp_path / "b" / "last.pt")["epoch"] == 0
    resumed = tiny_small(seed=99)  # a different initialisation: everything must come from the state
    messages = []
    fit(resumed, train, val, QUICK, tmp_path / "b", resume=True, log=messages.append)
    assert messages[0].startswith("resumed") and "after epoch 1" in messages[0]
    assert not any(m.startswith("epoch 1/") for m in messages)
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    a, b = load_state(tmp_path / "a" / "last.pt"), load_state(tmp_path / "b" / "last.pt")
    assert a["history"][-1]["loss"] == b["history"][-1]["loss"]
    assert torch.equal(a["rng"]["data"], b["rng"]["data"])
    assert a["scheduler"]["last_epoch"] == b["scheduler"]["last_epoch"]


def test_lora_mode_trains_only_lora_and_the_listed_modules():
    sam = prepare_model(tiny_vit(), "lora", lora_rank=2)
    trainable = {n for n, p in sam.named_parameters() if p.requires_grad}
    assert any("lora_" in n for n in trainable)
    assert all("lora_" in n or n.startswith(TRAINED_MODULES) for n in trainable)
    assert not any(n.startswith("image_encoder.blocks") and "lora_" not in n for n in trainable)
    before = {n: p.detach().clone() for n, p in sam.named_parameters()}
    data = squares(4, seed=4)
    batch = collate([(torch.from_numpy(i).permute(2, 0, 1).float(), torch.from_numpy(m)) for i, m in data], sam)
    opt = make_optimizer([p for p in sam.parameters() if p.requires_grad], 1e-2)
    sam.train()
    train_step(sam, batch, opt, torch.Generator().manual_seed(0), InteractiveConfig(iterations=2))
    changed = {n for n, p in sam.named_parameters() if not torch.equal(p, before[n])}
    assert changed and changed <= trainable
    assert any("lora_" in n for n in changed) and any(n.startswith("mask_decoder") for n in changed)


def test_lora_needs_a_vit():
    from models.checkpoints import CheckpointError

    with pytest.raises(CheckpointError):
        prepare_model(tiny_small(), "lora")


def test_cosine_schedule_with_warmup():
    assert cosine_warmup(0, 4, 20) == pytest.approx(0.25)
    assert cosine_warmup(3, 4, 20) == pytest.approx(1.0)
    assert cosine_warmup(12, 4, 20) == pytest.approx(0.01 + 0.99 * 0.5)
    assert cosine_warmup(20, 4, 20) == pytest.approx(0.01)


def test_train_command_writes_loadable_weights_and_a_model_card(tmp_path):
    import json

    from models import load_model
    from p2sam.train import main

    from .helpers import TINY_SMALL

    out = tmp_path / "run"
    argv = ["--dataset", "phantom", "--phantom-train", "8", "--phantom-val", "4", "--epochs", "1", "--batch-size", "4",
            "--iterations", "2", "--small-config", json.dumps(TINY_SMALL), "--out", str(out), "--name", "tinyct",
            "--threads", "1", "--no-progress"]
    assert main(argv) == 0
    loaded = load_model(out / "weights.pt")
    assert loaded.sam.image_encoder.img_size == 64
    card = (out / "weights.md").read_text()
    assert card.startswith("# Model card: tinyct") and "--phantom-train 8" in card and "Terms of use" in card
    assert json.loads((out / "card.json").read_text())["metrics"]["best_epoch"] == 1
