"""The batched functional decoder equals SAM's own MaskDecoder, and padding changes nothing."""

from __future__ import annotations

import torch

from models.decoder import decode, encode_prompts

from .fixtures import color_sam


def _setup():
    sam = color_sam()
    torch.manual_seed(1)
    features = torch.randn(1, 256, 8, 8)
    return sam, features


def test_matches_segment_anything_mask_decoder():
    sam, features = _setup()
    pts = torch.tensor([[10.0, 20.0], [40.0, 33.0], [5.0, 60.0]])
    lab = torch.tensor([1.0, 1.0, 0.0])
    mask_in = torch.randn(1, 1, 32, 32)
    box = torch.tensor([4.0, 8.0, 50.0, 40.0])
    for boxes, masks in [(None, None), (None, mask_in), (box, mask_in)]:
        sparse, dense = sam.prompt_encoder(
            points=(pts[None], lab[None]), boxes=None if boxes is None else boxes[None], masks=masks
        )
        for multimask in (False, True):
            ref_masks, ref_iou = sam.mask_decoder(features, sam.prompt_encoder.get_dense_pe(), sparse, dense, multimask)
            prompts = encode_prompts(sam, [pts], [lab], boxes=[boxes], mask_inputs=masks)
            masks_out, iou_out = decode(sam, features, prompts, multimask=multimask)
            assert torch.allclose(masks_out, ref_masks, atol=1e-4), (boxes is None, masks is None, multimask)
            assert torch.allclose(iou_out, ref_iou, atol=1e-5)


def test_padded_batch_equals_one_by_one():
    """Candidates with 2, 4 and 6 points decoded together == decoded alone."""
    sam, features = _setup()
    gen = torch.Generator().manual_seed(3)
    pts = [torch.rand(n, 2, generator=gen) * 64 for n in (2, 4, 6)]
    labs = [torch.tensor([1.0] * (n - 1) + [0.0]) for n in (2, 4, 6)]
    together = encode_prompts(sam, pts, labs)
    assert together.key_padding is not None and together.key_padding.sum() == 4 + 2
    masks_b, iou_b = decode(sam, features, together)
    for i in range(3):
        masks_1, iou_1 = decode(sam, features, encode_prompts(sam, [pts[i]], [labs[i]]))
        assert torch.allclose(masks_b[i], masks_1[0], atol=1e-4)
        assert torch.allclose(iou_b[i], iou_1[0], atol=1e-5)


def test_persam_guidance_changes_the_decoding():
    sam, features = _setup()
    prompts = encode_prompts(sam, [torch.tensor([[20.0, 20.0]])], [torch.tensor([1.0])])
    plain, _ = decode(sam, features, prompts)
    bias = torch.linspace(0, 1, 64).reshape(1, 1, 1, 64)
    ref, _ = decode(sam, features, prompts, attn_sim=bias, guidance="reference")
    paper, _ = decode(sam, features, prompts, attn_sim=bias, guidance="paper")
    semantic, _ = decode(sam, features, prompts, target_embedding=torch.randn(1, 1, 256))
    assert not torch.allclose(plain, ref, atol=1e-3)
    assert not torch.allclose(ref, paper, atol=1e-3)
    assert not torch.allclose(plain, semantic, atol=1e-3)


def test_chunked_decoding_gives_the_same_answer():
    sam, features = _setup()
    gen = torch.Generator().manual_seed(5)
    pts = [torch.rand(n, 2, generator=gen) * 64 for n in (1, 3, 2, 5)]
    labs = [torch.ones(len(p)) for p in pts]
    prompts = encode_prompts(sam, pts, labs, mask_inputs=torch.randn(4, 1, 32, 32, generator=gen))
    whole, iou_whole = decode(sam, features, prompts, chunk_tokens=10**9)
    chunked, iou_chunked = decode(sam, features, prompts, chunk_tokens=128)  # 2 candidates per chunk
    assert torch.allclose(whole, chunked, atol=1e-4) and torch.allclose(iou_whole, iou_chunked, atol=1e-5)


def test_positional_encoding_cache_follows_new_weights():
    """Loading other weights into a model that has already decoded must not reuse a stale encoding."""
    sam, features = _setup()
    prompts = encode_prompts(sam, [torch.tensor([[20.0, 30.0]])], [torch.tensor([1.0])])
    before, _ = decode(sam, features, prompts)
    state = sam.state_dict()
    state["prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"] = torch.randn_like(
        state["prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"])
    sam.load_state_dict(state)
    prompts = encode_prompts(sam, [torch.tensor([[20.0, 30.0]])], [torch.tensor([1.0])])
    after, _ = decode(sam, features, prompts)
    sparse, dense = sam.prompt_encoder(points=(torch.tensor([[[20.0, 30.0]]]), torch.tensor([[1.0]])), boxes=None, masks=None)
    reference, _ = sam.mask_decoder(features, sam.prompt_encoder.get_dense_pe(), sparse, dense, False)
    assert not torch.allclose(before, after, atol=1e-3)
    assert torch.allclose(after, reference, atol=1e-4)


def test_shared_image_side_equals_materialised_dense_prompt():
    """Step (a) (no mask prompt) computes the first layer's image-side projections once for all
    candidates; the answer is the one of a batch whose dense prompts are separate copies, for a
    whole batch, a chunked one and with PerSAM guidance."""
    from models.decoder import PromptBatch

    sam, features = _setup()
    gen = torch.Generator().manual_seed(7)
    pts = [torch.rand(n, 2, generator=gen) * 64 for n in (1, 3, 2, 4)]
    labs = [torch.tensor([1.0] * (len(p) - 1) + [0.0]) for p in pts]
    shared = encode_prompts(sam, pts, labs)
    assert shared.dense.stride(0) == 0  # one no-mask embedding, broadcast
    copies = PromptBatch(sparse=shared.sparse, key_padding=shared.key_padding, dense=shared.dense.contiguous().clone())
    bias = torch.rand(4, 1, 1, 64, generator=gen)
    for kwargs in ({}, {"chunk_tokens": 128}, {"attn_sim": bias}):
        a, iou_a = decode(sam, features, shared, **kwargs)
        b, iou_b = decode(sam, features, copies, **kwargs)
        assert torch.allclose(a, b, atol=1e-4) and torch.allclose(iou_a, iou_b, atol=1e-5), kwargs
    # and the shared path really is different code: one row of image-side work, not four
    calls = []
    hook = sam.mask_decoder.transformer.layers[0].cross_attn_token_to_image.k_proj.register_forward_hook(
        lambda m, i, o: calls.append(o.shape[0]))
    decode(sam, features, shared)
    decode(sam, features, copies)
    hook.remove()
    assert calls == [1, 4]
