"""Data for training: the fixed split, folder reading, augmentation and batching."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from models.finetune.data import NO_AUGMENT, AugmentConfig, augment, batches, collate, resize_sample
from p2sam.datasets import DatasetError, folder_dataset, split_ids, window_slice


def test_split_is_deterministic_disjoint_and_800_100_100():
    ids = [f"id{i:04d}" for i in range(1000)]
    a = split_ids(ids)
    b = split_ids(list(reversed(ids)))  # file order never matters
    assert (a.train, a.val, a.test) == (b.train, b.val, b.test)
    assert (len(a.train), len(a.val), len(a.test)) == (800, 100, 100)
    assert not (set(a.train) & set(a.val) or set(a.train) & set(a.test) or set(a.val) & set(a.test))
    assert set(a.train) | set(a.val) | set(a.test) == set(ids)
    assert split_ids(ids, seed=1).test != a.test


def test_small_sets_keep_the_proportions():
    s = split_ids([str(i) for i in range(20)])
    assert (len(s.train), len(s.val), len(s.test)) == (16, 2, 2)


def _write_folder(root, n=10):
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        img = rng.integers(0, 255, (60, 80, 3), dtype=np.uint8)
        mask = np.zeros((60, 80), np.uint8)
        mask[10:30, 20:50] = 255
        Image.fromarray(img).save(root / "images" / f"s{i}.jpg")
        Image.fromarray(mask).save(root / "masks" / f"s{i}.png")


def test_folder_dataset_resizes_once_to_the_model_size(tmp_path):
    _write_folder(tmp_path)
    train = folder_dataset(tmp_path, 64, "train")
    test = folder_dataset(tmp_path, 64, "test")
    assert len(train) == 8 and len(test) == 1 and not set(train.ids) & set(test.ids)
    image, mask = train[0]
    assert image.shape == (48, 64, 3) and image.dtype == np.uint8 and mask.shape == (48, 64) and mask.dtype == bool
    assert 0.1 < mask.mean() < 0.2


def test_folder_without_masks_is_a_clear_error(tmp_path):
    (tmp_path / "images").mkdir()
    with pytest.raises(DatasetError, match="masks"):
        folder_dataset(tmp_path, 64)


def test_augment_keeps_image_and_mask_aligned():
    img = np.zeros((48, 64, 3), np.uint8)
    img[10:20, 30:40] = 255
    mask = img[..., 0] > 0
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):
        a_img, a_mask = augment(img, mask, 64, gen, AugmentConfig(jitter=0.0))
        assert max(a_mask.shape) <= 64 and a_img.shape[1:] == a_mask.shape
        if a_mask.any():
            assert a_img[0][a_mask].mean() > 200 and (a_img[0][~a_mask].mean() < 60)


def test_collate_pads_like_sam_preprocess():
    from tests.finetune.helpers import tiny_small

    sam = tiny_small()
    img, mask = resize_sample(np.full((30, 60, 3), 100, np.uint8), np.ones((30, 60), bool), 64)
    batch = collate([augment(img, mask, 64, torch.Generator(), NO_AUGMENT)], sam)
    ref = sam.preprocess(torch.from_numpy(img).permute(2, 0, 1)[None].float())
    assert torch.allclose(batch.images, ref, atol=1e-5)
    assert batch.valid[0, :32].all() and not batch.valid[0, 32:].any()
    assert batch.masks[0].sum() == 32 * 64


def test_batches_are_seeded_and_cover_everything():
    a = batches(10, 4, torch.Generator().manual_seed(0))
    b = batches(10, 4, torch.Generator().manual_seed(0))
    assert a == b and sorted(sum(a, [])) == list(range(10))
    assert [len(x) for x in batches(10, 4, None, drop_last=True)] == [4, 4]


def test_ct_window_maps_hu_to_uint8():
    out = window_slice(np.array([[-2000.0, -910.0, -160.0, 590.0, 3000.0]]))
    assert out.shape == (1, 5, 3) and out[0, :, 0].tolist() == [0, 0, 128, 255, 255]
