"""`p2sam train-latent`: fit the Probabilistic-SAM-style latent head on a frozen backbone.

    p2sam train-latent --weights kvasir --data ../shared/data/kvasir-seg --out models/weights/kvasir_latent.pt

The head file is found by the service beside its model (``<model>_latent.pt``) and used by the
``latent`` sampler. No multi-annotator data exists here: the head learns the spread of masks
perturbed the way annotators disagree (models/latent_train.py), and its card says so.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def add_arguments(name: str, parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--weights", required=True, help="backbone weights file or bundled name (kept frozen)")
    parser.add_argument("--data", help="Kvasir-SEG-like folder (images/, masks/); its train split is used")
    parser.add_argument("--dataset", choices=["folder", "phantom"], default="folder")
    parser.add_argument("--count", type=int, default=800, help="phantom: number of synthetic slices")
    parser.add_argument("--limit", type=int, default=None, help="use at most this many training samples")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--beta", type=float, default=10.0, help="weight of the KL term")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--out", required=True, help="head file to write (name it <model>_latent.pt beside the model)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from models import P2SAMEngine, load_model
    from models.latent import save_latent
    from models.latent_train import LatentTrainConfig, train_latent_head

    from .datasets import folder_dataset, phantom_slices

    if args.threads:
        torch.set_num_threads(args.threads)
    loaded = load_model(args.weights)
    engine = P2SAMEngine(loaded.sam)
    size = loaded.sam.image_encoder.img_size
    if args.dataset == "folder":
        if not args.data:
            print("p2sam train-latent: --data is required for --dataset folder", file=sys.stderr)
            return 2
        samples = list(folder_dataset(args.data, size, "train", limit=args.limit))
        data_note = f"{Path(args.data).name}: train split ({len(samples)} images, split seed 0)"
    else:
        samples = list(phantom_slices(size, args.limit or args.count, args.seed))
        data_note = f"synthetic CT phantom slices ({len(samples)}, seed {args.seed})"
    cfg = LatentTrainConfig(epochs=args.epochs, lr=args.lr, beta=args.beta, batch_size=args.batch_size, seed=args.seed)
    t0 = time.perf_counter()

    def on_epoch(epoch: int, loss: float) -> None:
        print(f"epoch {epoch + 1}/{cfg.epochs} loss {loss:.4f} ({time.perf_counter() - t0:.0f} s)", flush=True)

    head, history = train_latent_head(engine, samples, cfg, on_epoch=on_epoch)
    card = {
        "summary": f"latent uncertainty head for {loaded.name}",
        "data": data_note,
        "annotators": "none available: trained on masks perturbed like annotator disagreement "
                      "(smooth boundary shift + dilation/erosion), not on real multi-annotator data",
        "command": "p2sam train-latent " + " ".join(sys.argv[2:]),
        "seed": args.seed,
        "epochs": cfg.epochs,
        "beta": cfg.beta,
        "losses": [round(v, 4) for v in history.losses],
        "seconds": round(time.perf_counter() - t0, 1),
        "terms": (loaded.card or {}).get("terms", "as the backbone's"),
    }
    path = save_latent(head, args.out, base_sha256=loaded.sha256, card=card)
    print(f"wrote {path}")
    return 0
