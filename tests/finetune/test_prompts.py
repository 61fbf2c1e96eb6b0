"""Interactive prompt sampling: where points go, what the first prompt is, how it is encoded."""

from __future__ import annotations

import torch

from models.decoder import encode_prompts
from models.finetune.prompts import PromptState, add_points, encode_training_prompts, error_points, first_prompts, gt_box

from .helpers import tiny_small


def _masks():
    gt = torch.zeros(2, 32, 32, dtype=torch.bool)
    gt[:, 8:20, 8:20] = True
    pred = torch.zeros_like(gt)
    pred[:, 14:26, 14:26] = True  # overlaps: FN = gt \ pred, FP = pred \ gt
    valid = torch.ones_like(gt)
    return pred, gt, valid


def test_positives_in_false_negatives_negatives_in_false_positives():
    pred, gt, valid = _masks()
    gen = torch.Generator().manual_seed(0)
    points, labels = error_points(pred, gt, valid, [200, 50], gen)
    assert [len(p) for p in points] == [200, 50]
    for pts, labs, p, g in zip(points, labels, pred, gt):
        cols, rows = pts[:, 0].long(), pts[:, 1].long()  # (x, y) = (column, row)
        fn, fp = g & ~p, p & ~g
        assert bool(fn[rows[labs == 1], cols[labs == 1]].all())
        assert bool(fp[rows[labs == 0], cols[labs == 0]].all())
        assert 0 < int((labs == 1).sum()) < len(labs)  # both kinds of error are sampled


def test_error_points_stay_inside_the_valid_area():
    pred, gt, valid = _masks()
    valid[:, :, 16:] = False  # right half is padding
    points, _ = error_points(pred, gt, valid, [100, 100], torch.Generator().manual_seed(1))
    assert all(bool((p[:, 0] < 16).all()) for p in points)


def test_first_prompts_cover_none_point_and_box():
    _, gt, valid = _masks()
    gt = gt.repeat(30, 1, 1)
    valid = valid.repeat(30, 1, 1)
    state = first_prompts(gt, valid, torch.Generator().manual_seed(0))
    assert set(state.kinds) == {"none", "point", "box"}
    for kind, pts, labs, box, g in zip(state.kinds, state.points, state.labels, state.boxes, gt):
        if kind == "point":
            x, y = pts[0].long()
            assert labs.tolist() == [1] and bool(g[y, x])
        elif kind == "box":
            assert len(pts) == 0 and box is not None
            assert bool((box[:2] <= box[2:]).all()) and bool((box >= 0).all()) and bool((box <= 31).all())
        else:
            assert len(pts) == 0 and box is None
    only_none = first_prompts(gt, valid, torch.Generator(), kind_probs=(1.0, 0.0, 0.0))
    assert set(only_none.kinds) == {"none"}


def test_empty_ground_truth_gets_no_prompt():
    gt = torch.zeros(4, 16, 16, dtype=torch.bool)
    state = first_prompts(gt, torch.ones_like(gt), torch.Generator(), kind_probs=(0.0, 0.5, 0.5))
    assert state.kinds == ["none"] * 4
    assert gt_box(gt[0]) is None


def test_encoding_matches_the_engine_and_stops_default_gradients():
    sam = tiny_small()
    pts = [torch.tensor([[10.0, 12.0], [30.0, 40.0]]), torch.zeros(0, 2), torch.zeros(0, 2)]
    labs = [torch.tensor([1, 0]), torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long)]
    boxes = [None, torch.tensor([4.0, 5.0, 40.0, 50.0]), None]
    state = PromptState(points=pts, labels=labs, boxes=boxes)
    ours = encode_training_prompts(sam, state)
    ref = encode_prompts(sam, [pts[0], None, None], [labs[0].float(), None, None], boxes=boxes)
    assert torch.allclose(ours.sparse, ref.sparse, atol=1e-6)
    assert torch.equal(ours.key_padding, ref.key_padding)
    assert torch.allclose(ours.dense, ref.dense)
    # gradient reaches no-mask only through the prompt-free sample, not-a-point never here
    (ours.sparse.sum() + ours.dense.sum()).backward()
    pe = sam.prompt_encoder
    assert pe.not_a_point_embed.weight.grad is None
    assert torch.allclose(pe.no_mask_embed.weight.grad, torch.full((1, 256), 8.0 * 8.0))  # one sample x g x g
    sam.zero_grad(set_to_none=True)
    encode_training_prompts(sam, PromptState(points=pts[:1], labels=labs[:1], boxes=[None]), stop_gradient=False).sparse.sum().backward()
    assert pe.not_a_point_embed.weight.grad is not None


def test_points_accumulate_and_mask_prompt_is_detached():
    pts = [torch.tensor([[1.0, 2.0]])]
    state = PromptState(points=pts, labels=[torch.tensor([1])], boxes=[torch.tensor([0.0, 0.0, 5.0, 5.0])])
    logits = torch.randn(1, 1, 32, 32, requires_grad=True)
    nxt = add_points(state, [torch.tensor([[3.0, 4.0], [5.0, 6.0]])], [torch.tensor([0, 1])], logits)
    assert nxt.points[0].tolist() == [[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]
    assert nxt.labels[0].tolist() == [1, 0, 1]
    assert nxt.boxes[0] is not None and not nxt.mask_input.requires_grad
