"""Head ablations on one frozen, shared backbone: validation split only.

    python bench/head_ablation.py features --checkpoint RUN/best --world WORLD --out FEATS.npz
    python bench/head_ablation.py features --backbone-file B.safetensors --world WORLD --out FEATS.npz
    python bench/head_ablation.py run --features FEATS.npz --rows spem spem:boundary=margin ... [--seeds 0 1] \
        [--gallery-size 100]

Why frozen features: a full training run costs 5-7 CPU-minutes on this machine, an ablation grid
needs dozens of rows, and the heads are what the rows change. ``features`` encodes the world's
train and validation splits once with a trained checkpoint (the issue's "one shared backbone every
head fine-tunes from", without the fine-tuning); ``run`` trains each head from its initialisation on
the cached train features (AdamW, fixed steps, no selection) and scores the validation split once.
The test split is never read.

A row is ``METHOD[:KEY=VALUE,...]``; keys are head config fields, plus ``multi_positive=true``
(SPEM only: training uses the world's match sets as positives, ``positives=`` of the loss).
Per row it reports validation t2v R@1 against the match sets, and how well each per-query signal
predicts "top-1 not in the match set" (AUROC; higher = better): the head's uncertainty of its
top-1 pair, minus the raw top-1 score, minus the top1-top2 margin, and the Pearson correlation of
the uncertainty with the pair cosine (the issue's "restates the similarity" check).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))


def encode(args) -> None:
    import torch

    torch.set_num_threads(1)
    from probret.train.checkpoint import load_checkpoint
    from probret.train.datasets import _world_matches, load_split
    from probret.train.evaluate import encode_texts, encode_videos

    if args.checkpoint:
        model, _ = load_checkpoint(args.checkpoint)
    else:  # open_clip weights, e.g. quality protocol v2's shared backbone (meanP's head: no parameters)
        from probret.train.config import ModelConfig
        from probret.train.model import RetrievalModel

        model = RetrievalModel.from_config(ModelConfig(backbone=args.backbone, pretrained=str(args.backbone_file),
                                                       method="meanp", num_frames=args.num_frames))
    model.eval()
    out = {}
    for split in ("train", "val"):
        data = load_split("procedural", args.world, split)
        frames, failed = encode_videos(model, data, batch_size=64, num_workers=0, device="cpu", progress=False)
        text = encode_texts(model, data.texts, batch_size=64, device="cpu")
        out[f"{split}_frames"] = frames.numpy()
        out[f"{split}_sentence"] = text.sentence.numpy()
        out[f"{split}_tokens"] = text.tokens.numpy()
        out[f"{split}_mask"] = text.mask.numpy()
        out[f"{split}_index"] = np.asarray(data.text_video_index)
        if split == "train":
            by_text, _ = _world_matches(Path(args.world) / "world.json")
            ids = data.video_ids
            pos = {v: k for k, v in enumerate(ids)}
            rel = [[pos[m] for m in by_text.get((ids[j], " ".join(t.split())), [ids[j]]) if m in pos]
                   for t, j in zip(data.texts, data.text_video_index)]
        else:
            rel = data.relevant
            out["val_kind"] = _query_kinds(Path(args.world) / "world.json", data)
        out[f"{split}_relevant"] = _pack(rel)
    out["logit_scale"] = np.float32(model.logit_scale().item())
    np.savez(args.out, **out)
    print(f"wrote {args.out}: train {out['train_frames'].shape}, val {out['val_frames'].shape}")


KINDS = ("full", "partial", "short")


def _query_kinds(world_json: Path, data) -> np.ndarray:
    """Index into KINDS of every evaluation caption (protocol-v2 worlds record it; else "full")."""
    captions = json.loads(world_json.read_text())["captions"].values()
    kind = {(c["video_id"], " ".join(c["caption"].split())): c.get("kind", "full") for c in captions if c.get("eval")}
    ids = data.video_ids
    return np.array([KINDS.index(kind.get((ids[j], " ".join(t.split())), "full"))
                     for t, j in zip(data.texts, data.text_video_index)], dtype=np.int64)


def _pack(rel) -> np.ndarray:
    """Match sets as a dense (N_text, max_size) int array padded with -1 (npz without pickles)."""
    width = max(len(r) for r in rel)
    arr = np.full((len(rel), width), -1, dtype=np.int64)
    for i, r in enumerate(rel):
        arr[i, : len(r)] = r
    return arr


def _unpack(arr: np.ndarray) -> list[list[int]]:
    return [[int(v) for v in row if v >= 0] for row in arr]


def parse_row(row: str) -> tuple[str, dict]:
    method, _, rest = row.partition(":")
    kw = {}
    for item in filter(None, rest.split(",")):
        key, value = item.split("=", 1)
        try:
            kw[key] = json.loads(value)
        except json.JSONDecodeError:
            kw[key] = value
    return method, kw


_TRAINED: dict = {}


def train_head(method, kw, feats, *, seed, steps, batch, lr):
    """Train (or reuse: rows that differ only in inference / num_samples share one training)."""
    infer = {k: kw.pop(k) for k in ("inference", "num_samples") if k in kw}
    key = (method, json.dumps(kw, sort_keys=True), seed, steps, batch, lr)
    if key not in _TRAINED:
        head = _train(method, dict(kw), feats, seed=seed, steps=steps, batch=batch, lr=lr)
        defaults = {k: getattr(head.config, k) for k in ("inference", "num_samples") if hasattr(head.config, k)}
        _TRAINED[key] = (head, defaults)
    head, defaults = _TRAINED[key]
    for k, v in {**defaults, **infer}.items():
        setattr(head.config, k, v)
    return head


def _train(method, kw, feats, *, seed, steps, batch, lr):
    import torch

    from probret.train.methods import TextFeatures, create_head

    multi = bool(kw.pop("multi_positive", False))
    torch.manual_seed(seed)
    frames = torch.from_numpy(feats["train_frames"])
    text = TextFeatures(torch.from_numpy(feats["train_sentence"]), torch.from_numpy(feats["train_tokens"]),
                        torch.from_numpy(feats["train_mask"]))
    index = feats["train_index"]
    rel = [set(r) for r in _unpack(feats["train_relevant"])]
    head = create_head(method, embed_dim=frames.shape[-1], num_frames=frames.shape[1], **kw)
    params = list(head.parameters())
    if not params:  # meanP: nothing to train on a frozen backbone
        steps = 0
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01) if params else None
    gen = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    scale = torch.tensor(float(feats["logit_scale"]))
    head.train()
    for _ in range(steps):
        # one caption per video, B distinct videos (a batch never holds the same clip twice)
        vids = rng.choice(frames.shape[0], batch, replace=False)
        caps = np.array([rng.choice(np.flatnonzero(index == v)) for v in vids])
        extra = {}
        if multi:
            extra["positives"] = torch.tensor([[int(v) in rel[c] for v in vids] for c in caps])
        out = head.loss(text.select(torch.from_numpy(caps)), frames[torch.from_numpy(vids)], logit_scale=scale,
                        generator=gen, **extra)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
    return head


def validate(head, feats, *, seed, gallery_size: int | None = None) -> dict:
    """One row's validation scores. ``gallery_size`` G scores each query against its own video's
    block of G consecutive validation videos only, its match set cut to that block: the protocol's
    ``galleries`` section (bench/quality_finetune.py ``confine_to_galleries``, setting 11). The
    video-to-text R@1 needs the whole split's columns, so the row leaves it out then."""
    import torch

    from probret.engine.calibration import fit_on_scores
    from probret.engine.metrics import retrieval_metrics
    from probret.engine.uncertainty import auroc, top1_correct
    from probret.train.methods import TextFeatures

    head.eval()
    frames = torch.from_numpy(feats["val_frames"])
    text = TextFeatures(torch.from_numpy(feats["val_sentence"]), torch.from_numpy(feats["val_tokens"]),
                        torch.from_numpy(feats["val_mask"]))
    rel = _unpack(feats["val_relevant"])
    with torch.no_grad():
        out = head.score(text, frames, generator=torch.Generator().manual_seed(seed))
    sims = out.scores.numpy().astype(np.float64)
    unc = None if out.uncertainty is None else out.uncertainty.numpy().astype(np.float64)
    index = feats["val_index"]
    if gallery_size:
        from quality_finetune import confine_to_galleries

        sims, rel, unc = confine_to_galleries(sims, rel, index, gallery_size, unc)
        index = np.asarray(index) % gallery_size
    metrics = retrieval_metrics(sims, index, relevant=rel)
    correct = top1_correct(sims, relevant=rel)
    kinds = feats.get("val_kind")
    top = np.sort(sims, 1)[:, ::-1]
    row = {"R1": metrics["t2v_semantic"]["R1"], "R1_own": metrics["t2v"]["R1"], "v2t_R1": metrics["v2t"]["R1"],
           "auroc_score": auroc(-top[:, 0], ~correct), "auroc_margin": auroc(-(top[:, 0] - top[:, 1]), ~correct)}
    if gallery_size:
        del row["v2t_R1"]
    if kinds is not None:
        for k, name in enumerate(KINDS):
            if (kinds == k).any():
                row[f"R1_{name}"] = float(100.0 * correct[kinds == k].mean())
    if unc is not None:
        q_unc = unc[np.arange(len(sims)), sims.argmax(1)]
        row["auroc_uncertainty"] = auroc(q_unc, ~correct)
        row["pearson_unc_vs_cos"] = float(np.corrcoef(unc.reshape(-1), sims.reshape(-1))[0, 1])
    # calibrated confidences, each cross-fitted over the validation queries (even / odd halves)
    _, report = fit_on_scores(sims, rel, unc)
    for name, m in report.items():
        row[f"cal[{name}].ece"] = m["ece_top1"]
        row[f"cal[{name}].auroc"] = m["auroc_top1"]
    return row


def run(args) -> None:
    import torch

    torch.set_num_threads(1)
    feats = dict(np.load(args.features))
    results = []
    for row in args.rows:
        per_seed = []
        for seed in args.seeds:
            method, kw = parse_row(row)
            t = time.time()
            head = train_head(method, dict(kw), feats, seed=seed, steps=args.steps, batch=args.batch, lr=args.lr)
            r = validate(head, feats, seed=seed, gallery_size=args.gallery_size)
            r["seconds"] = round(time.time() - t, 1)
            per_seed.append(r)
        keys = [k for k in per_seed[0] if k != "seconds"]
        mean = {k: float(np.mean([p[k] for p in per_seed])) for k in keys}
        std = {k: float(np.std([p[k] for p in per_seed], ddof=1)) if len(per_seed) > 1 else 0.0 for k in keys}
        results.append({"row": row, "mean": mean, "std": std, "seeds": args.seeds, "per_seed": per_seed})
        cells = " ".join(f"{k}={mean[k]:.3f}" for k in keys if not k.startswith("cal["))
        print(f"{row:55s} {cells} ({sum(p['seconds'] for p in per_seed):.0f} s)", flush=True)
    if args.out:
        from common import machine

        Path(args.out).write_text(json.dumps({"machine": machine(), "settings": {k: v for k, v in vars(args).items()
                                                                                 if k != "func"},
                                              "results": results}, indent=2) + "\n")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(required=True)
    f = sub.add_parser("features")
    src = f.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="a probret-train checkpoint (RUN/last)")
    src.add_argument("--backbone-file", help="open_clip weights of --backbone (e.g. a protocol's backbone.safetensors)")
    f.add_argument("--backbone", default="test-cnn-small", help="with --backbone-file (default: %(default)s)")
    f.add_argument("--num-frames", type=int, default=8, help="with --backbone-file (default: %(default)s)")
    f.add_argument("--world", required=True)
    f.add_argument("--out", required=True)
    f.set_defaults(func=encode)
    r = sub.add_parser("run")
    r.add_argument("--features", required=True)
    r.add_argument("--rows", nargs="+", required=True)
    r.add_argument("--seeds", nargs="+", type=int, default=[0])
    r.add_argument("--steps", type=int, default=400)
    r.add_argument("--batch", type=int, default=32)
    r.add_argument("--lr", type=float, default=1e-3)
    r.add_argument("--gallery-size", type=int, default=None,
                   help="score in galleries of this many consecutive validation videos (the protocol's "
                        "galleries section; default: one gallery of the whole split)")
    r.add_argument("--out", default=None)
    r.set_defaults(func=run)
    args = p.parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
