"""Batched prompting of SAM's mask decoder, with the additions P²SAM and PerSAM need.

SAM's own ``MaskDecoder`` decodes a batch of prompt sets only if they all have the same number of
tokens. Retrieval candidates differ in their number of points, so here each candidate's sparse
tokens are right-padded and a key-padding mask keeps the padding out of every attention where
tokens are keys (token self-attention and image-to-token attention). A padded batch then gives the
same result as decoding each candidate alone, in one call.

The same functional forward adds PerSAM's target-guided attention (a per-location bias on the
token-to-image attention) and target-semantic prompting (the prior's mean feature added to the
tokens), reproducing the reference code: the bias is added *after* the softmax and followed by a
second softmax (``guidance="reference"``); the paper's wording, a bias on the logits before the
softmax, is ``guidance="paper"``.

Coordinates: point and box prompts are in the model's input frame (the resized, unpadded image),
``(x, y)`` = (column, row) in pixels, as ``SamPredictor.predict_torch`` expects.
Shapes: ``B`` candidates, ``T`` sparse tokens, ``g`` the embedding grid, low-res masks ``4g x 4g``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from segment_anything.modeling import Sam
from segment_anything.modeling.transformer import Attention
from torch.nn import functional as F

Guidance = Literal["reference", "paper"]


@dataclass
class PromptBatch:
    """Encoded prompts for B candidates on one image."""

    sparse: torch.Tensor  # B x T x 256, right-padded
    key_padding: torch.Tensor | None  # B x T, True where a token is padding (None: no padding)
    dense: torch.Tensor  # B x 256 x g x g


def encode_prompts(
    sam: Sam,
    points: Sequence[torch.Tensor | None],
    labels: Sequence[torch.Tensor | None],
    boxes: Sequence[torch.Tensor | None] | None = None,
    mask_inputs: torch.Tensor | None = None,
) -> PromptBatch:
    """Encode one prompt set per candidate.

    points[i]: N_i x 2 (x, y) in the input frame, or None; labels[i]: N_i (1 positive,
    0 negative); boxes[i]: 4 (x0, y0, x1, y1) in the input frame or None; mask_inputs:
    B x 1 x 4g x 4g low-res logits or None. SAM's own padding point (added when there is no box)
    is kept, exactly as ``SamPredictor`` does.
    """
    pe = sam.prompt_encoder
    n = len(points)
    boxes = boxes if boxes is not None else [None] * n
    tokens = []
    for pts, lab, box in zip(points, labels, boxes):
        pts_arg = (pts[None].float(), lab[None].float()) if pts is not None else None
        box_arg = box.reshape(1, 4).float() if box is not None else None
        sparse, _ = pe(points=pts_arg, boxes=box_arg, masks=None)
        tokens.append(sparse[0])
    lengths = [t.shape[0] for t in tokens]
    width = max(lengths)
    device = pe._get_device()
    sparse = torch.zeros((n, width, pe.embed_dim), device=device)
    for i, t in enumerate(tokens):
        sparse[i, : t.shape[0]] = t
    key_padding = None
    if min(lengths) != width:
        key_padding = torch.arange(width, device=device)[None, :] >= torch.tensor(lengths, device=device)[:, None]
    if mask_inputs is not None:
        dense = pe._embed_masks(mask_inputs)
    else:
        g = pe.image_embedding_size
        dense = pe.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(n, -1, g[0], g[1])
    return PromptBatch(sparse=sparse, key_padding=key_padding, dense=dense)


def _attend(
    attn: Attention,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_bias: torch.Tensor | None = None,
    attn_sim: torch.Tensor | None = None,
    guidance: Guidance = "reference",
) -> torch.Tensor:
    """``segment_anything`` Attention with an additive key bias and PerSAM's location bias."""
    return _attend_projected(attn, attn.q_proj(q), attn.k_proj(k), attn.v_proj(v), key_bias, attn_sim, guidance)


def _attend_projected(
    attn: Attention,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_bias: torch.Tensor | None = None,
    attn_sim: torch.Tensor | None = None,
    guidance: Guidance = "reference",
) -> torch.Tensor:
    """``_attend`` on already projected q, k, v (B x N x C'); a batch of 1 is broadcast to the others'."""
    b = max(q.shape[0], k.shape[0])
    q = attn._separate_heads(q, attn.num_heads).expand(b, -1, -1, -1)
    k = attn._separate_heads(k, attn.num_heads).expand(b, -1, -1, -1)
    v = attn._separate_heads(v, attn.num_heads).expand(b, -1, -1, -1)
    if attn_sim is None:  # fused kernel; same maths as segment-anything's explicit softmax
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=key_bias)
        return attn.out_proj(attn._recombine_heads(out))
    logits = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])
    if key_bias is not None:
        logits = logits + key_bias
    if attn_sim is not None and guidance == "paper":
        logits = logits + attn_sim
    weights = torch.softmax(logits, dim=-1)
    if attn_sim is not None and guidance == "reference":
        weights = torch.softmax(weights + attn_sim, dim=-1)
    return attn.out_proj(attn._recombine_heads(weights @ v))


# On CPUs a batch larger than the caches is slower per candidate than a smaller one: past this
# many image tokens (candidates x g x g) ``decode`` works through the batch in chunks.
CPU_CHUNK_TOKENS = 8192


def decode(
    sam: Sam,
    image_embedding: torch.Tensor,
    prompts: PromptBatch,
    multimask: bool = False,
    attn_sim: torch.Tensor | None = None,
    target_embedding: torch.Tensor | None = None,
    guidance: Guidance = "reference",
    chunk_tokens: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode B candidates on one image embedding (1 x 256 x g x g) in one call.

    Returns low-res logits B x M x 4g x 4g and predicted IoU B x M, with M = 1 (single mask,
    SAM's mask token 0) or M = 3 (multimask tokens 1..3), like ``MaskDecoder.forward``.
    ``attn_sim``: 1 x 1 x 1 x g*g (or B x ...) PerSAM location bias; ``target_embedding``:
    1 x 1 x 256. ``chunk_tokens`` bounds the image tokens processed at once (default: all on a
    GPU, ``CPU_CHUNK_TOKENS`` on a CPU); chunking does not change the results.
    """
    b = prompts.sparse.shape[0]
    g_tokens = image_embedding.shape[-2] * image_embedding.shape[-1]
    if chunk_tokens is None and image_embedding.device.type == "cpu":
        chunk_tokens = CPU_CHUNK_TOKENS
    step = b if chunk_tokens is None else max(1, chunk_tokens // g_tokens)
    cache: dict = {}  # image-side work shared by every chunk (see ``_decode``)
    if step >= b:
        return _decode(sam, image_embedding, prompts, multimask, attn_sim, target_embedding, guidance, cache)
    outs = []
    for i in range(0, b, step):
        part = PromptBatch(
            sparse=prompts.sparse[i : i + step],
            key_padding=None if prompts.key_padding is None else prompts.key_padding[i : i + step],
            dense=prompts.dense[i : i + step],
        )
        sim = attn_sim[i : i + step] if attn_sim is not None and attn_sim.shape[0] == b > 1 else attn_sim
        outs.append(_decode(sam, image_embedding, part, multimask, sim, target_embedding, guidance, cache))
    return torch.cat([o[0] for o in outs]), torch.cat([o[1] for o in outs])


def _decode(
    sam: Sam,
    image_embedding: torch.Tensor,
    prompts: PromptBatch,
    multimask: bool,
    attn_sim: torch.Tensor | None,
    target_embedding: torch.Tensor | None,
    guidance: Guidance,
    cache: dict | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One decoder pass. When every candidate has the same dense prompt (no mask prompt: SAM's
    no-mask embedding, e.g. cascade step (a)) and the image is one embedding, the image side is
    the same for all of them until the first image-to-token attention: its projections (the
    first layer's image keys, values and queries) are computed once, for one row, and broadcast
    (``cache`` carries them across chunks of one ``decode`` call). Same numbers, less work."""
    md = sam.mask_decoder
    tr = md.transformer
    b = prompts.sparse.shape[0]
    output_tokens = torch.cat([md.iou_token.weight, md.mask_tokens.weight], dim=0)
    tokens = torch.cat([output_tokens.unsqueeze(0).expand(b, -1, -1), prompts.sparse], dim=1)
    n_out = output_tokens.shape[0]

    key_bias = None
    if prompts.key_padding is not None:
        pad = torch.cat([torch.zeros((b, n_out), dtype=torch.bool, device=tokens.device), prompts.key_padding], dim=1)
        key_bias = torch.zeros(pad.shape, device=tokens.device).masked_fill(pad, float("-inf"))[:, None, None, :]

    dense = prompts.dense
    shared = image_embedding.shape[0] == 1 and (dense.shape[0] == 1 or dense.stride(0) == 0)
    if shared:  # one dense prompt for all: keep one image-side row until it diverges
        src = image_embedding + dense[:1]
    else:
        src = image_embedding + dense  # broadcasts 1 -> B
        if src.shape[0] != b:
            src = src.expand(b, -1, -1, -1)
    h, w = src.shape[2:]
    keys = src.flatten(2).transpose(1, 2).contiguous()  # B x HW x C, laid out once for every projection
    key_pe = _dense_pe(sam)

    # PerSAM's reference mutates the point embedding in place, so the token positional term
    # carries the target embedding too: reproduce that.
    point_pe = tokens if target_embedding is None else tokens + target_embedding
    queries = point_pe
    for layer in tr.layers:
        if target_embedding is not None and layer is not tr.layers[0]:
            queries = queries + target_embedding
        # token self-attention (tokens are keys: mask padding)
        if layer.skip_first_layer_pe:
            queries = _attend(layer.self_attn, queries, queries, queries, key_bias)
        else:
            q = queries + point_pe
            queries = queries + _attend(layer.self_attn, q, q, queries, key_bias)
        queries = layer.norm1(queries)
        # tokens attend to the image (PerSAM's location bias applies here)
        q = queries + point_pe
        t2i, i2t = layer.cross_attn_token_to_image, layer.cross_attn_image_to_token
        if keys.shape[0] == 1 and b > 1:  # shared image side (first layer, one dense prompt)
            if cache is None or "image_side" not in cache:
                k = keys + key_pe
                projected = (t2i.k_proj(k), t2i.v_proj(keys), i2t.q_proj(k))
                if cache is not None:
                    cache["image_side"] = projected
            img_k, img_v, img_q = projected if cache is None else cache["image_side"]
            queries = layer.norm2(queries + _attend_projected(t2i, t2i.q_proj(q), img_k, img_v, None, attn_sim, guidance))
            queries = layer.norm3(queries + layer.mlp(queries))
            q = queries + point_pe
            keys = layer.norm4(keys + _attend_projected(i2t, img_q, i2t.k_proj(q), i2t.v_proj(queries), key_bias))
            continue
        k = keys + key_pe  # the image side is unchanged until norm4: used by both attentions
        queries = layer.norm2(queries + _attend(t2i, q, k, keys, None, attn_sim, guidance))
        queries = layer.norm3(queries + layer.mlp(queries))
        # image attends to the tokens (tokens are keys: mask padding)
        q = queries + point_pe
        keys = layer.norm4(keys + _attend(i2t, k, q, queries, key_bias))
    q = queries + point_pe
    if target_embedding is not None:
        q = q + target_embedding
    k = keys + key_pe
    queries = tr.norm_final_attn(queries + _attend(tr.final_attn_token_to_image, q, k, keys))

    iou_token_out = queries[:, 0, :]
    wanted = range(1, md.num_mask_tokens) if multimask else range(1)
    hyper = torch.stack([md.output_hypernetworks_mlps[i](queries[:, 1 + i, :]) for i in wanted], dim=1)
    masks = _upscale_and_project(md.output_upscaling, keys, hyper, h, w)
    iou = md.iou_prediction_head(iou_token_out)[:, list(wanted)]
    return masks, iou


def _dense_pe(sam: Sam) -> torch.Tensor:
    """The positional encoding of the image grid (1 x HW x C), cached until the model's random
    Fourier matrix changes (another device, or new weights loaded into it)."""
    encoder = sam.prompt_encoder
    matrix = encoder.pe_layer.positional_encoding_gaussian_matrix
    key = (matrix.device, matrix.data_ptr(), matrix._version)
    cached = getattr(encoder, "_p2sam_dense_pe", None)
    if cached is None or cached[0] != key:
        with torch.no_grad():
            cached = (key, encoder.get_dense_pe().flatten(2).transpose(1, 2).contiguous())
        encoder._p2sam_dense_pe = cached
    return cached[1]


def _upscale_and_project(upscaling: torch.nn.Sequential, keys: torch.Tensor, hyper: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """SAM's output upscaling (2 x ConvTranspose2d(k=2, s=2), LayerNorm2d, GELU) and the
    hypernetwork product, computed as two GEMMs on channels-last tokens.

    A stride-2, kernel-2 transposed convolution maps each input pixel to its own 2x2 output block,
    so it is one matrix product per pixel; this is faster on CPUs than the convolution and gives
    the same numbers. keys: B x (h*w) x C; hyper: B x M x C/8. Returns B x M x 4h x 4w.
    """
    conv1, norm, act1, conv2, act2 = upscaling
    b = keys.shape[0]
    c1, c2 = conv1.out_channels, conv2.out_channels
    w1 = conv1.weight.permute(0, 2, 3, 1).reshape(conv1.in_channels, 4 * c1)  # (ki, kj, out) order
    w2 = conv2.weight.permute(0, 2, 3, 1).reshape(c1, 4 * c2)
    y = torch.addmm(conv1.bias.repeat(4), keys.reshape(-1, keys.shape[-1]), w1).reshape(-1, c1)
    y = act1(F.layer_norm(y, (c1,), norm.weight, norm.bias, norm.eps))
    z = act2(torch.addmm(conv2.bias.repeat(4), y, w2)).reshape(b, h * w * 16, c2)
    m = torch.bmm(z, hyper.transpose(1, 2))  # B x (h*w*16) x M; rows ordered (i, j, ki, kj, li, lj)
    n_masks = hyper.shape[1]
    m = m.reshape(b, h, w, 2, 2, 2, 2, n_masks).permute(0, 7, 1, 3, 5, 2, 4, 6)
    return m.reshape(b, n_masks, 4 * h, 4 * w)


def upscale_logits(sam: Sam, low_res: torch.Tensor, input_size: tuple[int, int], original_size: tuple[int, int]) -> torch.Tensor:
    """Low-res logits (B x M x 4g x 4g) -> logits at the original image size (``Sam.postprocess_masks``)."""
    return sam.postprocess_masks(low_res, input_size=input_size, original_size=original_size)


def logits_on_grid(low_res: torch.Tensor, grid: int) -> torch.Tensor:
    """Low-res logits (B x 1 x 4g x 4g) bilinearly resized to the feature grid (B x g x g)."""
    return F.interpolate(low_res, size=(grid, grid), mode="bilinear", align_corners=False)[:, 0]
