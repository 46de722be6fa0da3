"""Our MobileSAM (vit_t) against the reference MobileSAM ``SamPredictor``, side by side.

    python benchmarks/bench_vs_reference.py --ref-path /tmp/refpkgs [--threads 1] [--repeats 7]
        [--data-root ../shared/data] [--encoder-precision fp32|bf16|auto]

The reference is the Apache-2.0 ``mobilesam-mirror`` package, installed only in a scratch folder
(never a dependency of napari-focsam)::

    python -m pip download --no-deps mobilesam-mirror -d /tmp/ref
    python -m pip install --no-deps --target /tmp/refpkgs /tmp/ref/mobilesam_mirror-*.whl

It imports a few helpers of ``timm`` and ``torchvision``; installing torchvision would replace
the CPU torch, so this script registers small stand-ins for exactly those helpers in
``sys.modules`` before importing the reference (see :func:`install_reference_stand_ins`).

Both predictors load the same ``vit_t`` weights and see the same RGB uint8 images:
a 1024x1024 crop and a full 1030x1349 nuclei image (coelho2009 ``dna-1.png``) and a 321x481
photo (GrabCut ``124080.jpg``). For each image it times, interleaved (the order alternates
between repeats) and as medians:

- embedding: ``FocSAMPredictor.embed`` vs ``SamPredictor.set_image`` (resize, normalise, encoder);
- one click: one positive point, single mask, mask at full image resolution
  (``FocSAMPredictor.step`` vs ``SamPredictor.predict(multimask_output=False)``),

- region click: the same click with the full-resolution mask from
  ``modeling.mask_resize.logits_to_mask_roi`` (computed only around the object; same mask),
- random clicks anywhere: ``--random-clicks`` positive clicks at seeded random positions of the
  whole image (background and large masks included), the same sequence for both, each timed
  twice, interleaved; with the IoU of the two masks (minimum and mean),

and prints ours, reference and ours/reference (wall clock, and the ratio of process CPU times,
which suffers less from other load on the machine), plus the IoU of the two one-click masks.
To time an older revision against the same reference, unpack its ``src`` and put it first:
``git archive REV src | tar -x -C /tmp/rev && PYTHONPATH=/tmp/rev/src python benchmarks/...``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import types
from pathlib import Path

import numpy as np
import torch


def install_reference_stand_ins() -> None:
    """Stand-ins for the timm / torchvision helpers the reference imports (inference only)."""
    from PIL import Image
    from torch import nn

    def module(name: str, **attrs) -> types.ModuleType:
        mod = sys.modules.get(name) or types.ModuleType(name)
        for k, v in attrs.items():
            setattr(mod, k, v)
        sys.modules[name] = mod
        return mod

    class DropPath(nn.Module):  # stochastic depth: identity at inference
        def __init__(self, drop_prob: float = 0.0) -> None:
            super().__init__()
            self.drop_prob = drop_prob

        def forward(self, x):
            if self.training and self.drop_prob > 0:
                raise RuntimeError("the benchmark's DropPath stand-in is for inference only")
            return x

    def to_2tuple(x):
        return tuple(x) if isinstance(x, (tuple, list)) else (x, x)

    def resize(img: Image.Image, size) -> Image.Image:  # (h, w), bilinear as torchvision on PIL
        return img.resize((int(size[1]), int(size[0])), Image.BILINEAR)

    def unavailable(*_a, **_k):
        raise RuntimeError("not available in the benchmark's reference environment")

    if "timm" not in sys.modules:
        module("timm")
        module("timm.models")
        module("timm.models.layers", DropPath=DropPath, to_2tuple=to_2tuple,
               trunc_normal_=nn.init.trunc_normal_)
        module("timm.models.registry", register_model=lambda fn: fn)
    if "torchvision" not in sys.modules:
        module("torchvision")
        module("torchvision.ops")
        module("torchvision.ops.boxes", batched_nms=unavailable, box_area=unavailable)
        module("torchvision.transforms")
        module("torchvision.transforms.functional", resize=resize,
               to_pil_image=lambda a: Image.fromarray(np.asarray(a)))


def load_reference(ref_path: str, weights: Path):
    sys.path.insert(0, ref_path)
    install_reference_stand_ins()
    from mobile_sam import SamPredictor, sam_model_registry

    return SamPredictor(sam_model_registry["vit_t"](checkpoint=str(weights)).eval())


def nucleus_click(labels: np.ndarray) -> tuple[int, int]:
    """(y, x) deepest pixel of the largest labelled nucleus."""
    from scipy import ndimage

    ids, counts = np.unique(labels[labels > 0], return_counts=True)
    obj = labels == ids[np.argmax(counts)]
    dist = ndimage.distance_transform_edt(np.pad(obj, 1))[1:-1, 1:-1]
    y, x = np.unravel_index(np.argmax(dist), dist.shape)
    return int(y), int(x)


def load_images(root: Path) -> dict[str, tuple[np.ndarray, tuple[int, int]]]:
    from PIL import Image

    micro = root / "micro" / "coelho2009_gnf"
    dna = np.asarray(Image.open(micro / "images" / "dna-1.png").convert("L"))
    lab = np.asarray(Image.open(micro / "labels" / "dna-1.png"))
    crop, crop_lab = dna[:1024, :1024], lab[:1024, :1024]
    photo = np.asarray(Image.open(root / "iseg" / "GrabCut" / "data_GT" / "124080.jpg").convert("RGB"))
    rgb = lambda g: np.ascontiguousarray(np.repeat(g[..., None], 3, axis=2))
    return {
        "nuclei 1024x1024": (rgb(crop), nucleus_click(crop_lab)),
        "nuclei 1030x1349": (rgb(dna), nucleus_click(lab)),
        "photo 321x481": (photo, (photo.shape[0] // 2, photo.shape[1] // 2)),
    }


def timed(fn) -> tuple[float, float]:
    """(wall, process CPU) seconds of one call."""
    t0, c0 = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - t0, time.process_time() - c0


def interleaved_ms(ours, ref, repeats: int, warmup: int = 1) -> dict[str, float]:
    """Median wall and CPU milliseconds of ``ours`` and ``ref``, run alternately (order flips)."""
    for _ in range(warmup):
        ours()
        ref()
    a, b = [], []
    for r in range(repeats):
        if r % 2:
            b.append(timed(ref))
            a.append(timed(ours))
        else:
            a.append(timed(ours))
            b.append(timed(ref))
    med = lambda xs, i: 1000 * statistics.median(x[i] for x in xs)
    return {"ours": med(a, 0), "ref": med(b, 0), "ours_cpu": med(a, 1), "ref_cpu": med(b, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ref-path", default=os.environ.get("MOBILESAM_REF", "/tmp/refpkgs"),
                    help="folder holding the reference 'mobile_sam' package")
    ap.add_argument("--data-root", default=os.environ.get(
        "FOCSAM_DATA", str(Path(__file__).resolve().parents[1].parent / "shared" / "data")))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=7, help="embedding repeats (clicks: 3x as many)")
    ap.add_argument("--images", nargs="+", default=None, help="subset by prefix, e.g. nuclei photo")
    ap.add_argument("--random-clicks", type=int, default=12, help="random clicks anywhere per image")
    ap.add_argument("--encoder-precision", default="fp32", choices=("fp32", "bf16", "auto"),
                    help="our encoder's matrix products (the reference always runs float32)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    load0 = os.getloadavg()[0]

    from napari_focsam.core.models import load_model, model_path, native_bf16_cpu
    from napari_focsam.core.prompting import Click, FocSAMPredictor
    try:  # (absent in revisions before it: the script also times older checkouts)
        from napari_focsam.modeling.mask_resize import logits_to_mask_roi
    except ImportError:
        logits_to_mask_roi = None

    ours_model = load_model("vit_t", "cpu")
    bf16 = args.encoder_precision == "bf16" or (args.encoder_precision == "auto" and native_bf16_cpu())
    if hasattr(ours_model.image_encoder, "set_matmul_dtype"):
        ours_model.image_encoder.set_matmul_dtype(torch.bfloat16 if bf16 else None)
    elif bf16:
        raise SystemExit("this revision has no bf16 encoder")
    ours = FocSAMPredictor(ours_model)
    ref = load_reference(args.ref_path, model_path("vit_t"))

    rows = []
    images = load_images(Path(args.data_root))
    if args.images:
        images = {k: v for k, v in images.items() if any(k.startswith(p) for p in args.images)}
    for name, (img, (y, x)) in images.items():
        emb_box = {}

        def ours_embed():
            emb_box["e"] = ours.embed(img)

        embed_ms = interleaved_ms(ours_embed, lambda: ref.set_image(img), args.repeats, 2)
        with torch.inference_mode():
            ref_emb = ref.features
            diff = (emb_box["e"].features - ref_emb).abs().max().item()
        click = [Click(y, x, True)]
        pt, lab = np.array([[x, y]], np.float32), np.array([1])
        click_ms = interleaved_ms(lambda: ours.step(emb_box["e"], click),
                                  lambda: ref.predict(pt, lab, multimask_output=False), 3 * args.repeats, 2)
        e = emb_box["e"]
        (h, w), (H, W) = e.input_size, e.original_size
        pts = torch.tensor([[[x * w / W, y * h / H]]], dtype=torch.float32)

        def ours_region_click():  # the same click with the region-only full-resolution mask
            with torch.inference_mode():
                return logits_to_mask_roi(ours_model.decode(e.features, pts, torch.ones(1, 1, dtype=torch.int64)).logits,
                                          e.input_size, e.original_size)

        if logits_to_mask_roi is not None:
            region_ms = interleaved_ms(ours_region_click, lambda: ref.predict(pt, lab, multimask_output=False),
                                       3 * args.repeats, 2)
            assert np.array_equal(ours_region_click(), ours.step(e, click).mask)
        else:
            region_ms = {"ours": float("nan"), "ref": float("nan"), "ours_cpu": float("nan"), "ref_cpu": 1.0}
        # random clicks anywhere in the image (background and large masks included): the same
        # seeded sequence for both, each call the next click
        rng = np.random.default_rng(0)
        anywhere = [(float(rng.uniform(0, H - 1)), float(rng.uniform(0, W - 1))) for _ in range(args.random_clicks)]
        turn = {"ours": 0, "ref": 0}

        def ours_random():
            cy, cx = anywhere[turn["ours"] % len(anywhere)]
            turn["ours"] += 1
            return ours.step(e, [Click(cy, cx, True)]).mask

        def ref_random():
            cy, cx = anywhere[turn["ref"] % len(anywhere)]
            turn["ref"] += 1
            return ref.predict(np.array([[cx, cy]], np.float32), lab, multimask_output=False)[0][0]

        random_ms = interleaved_ms(ours_random, ref_random, 2 * len(anywhere), 0)
        random_iou = []
        for cy, cx in anywhere:
            a = ours.step(e, [Click(cy, cx, True)]).mask
            b = ref.predict(np.array([[cx, cy]], np.float32), lab, multimask_output=False)[0][0]
            random_iou.append(float((a & b).sum() / max((a | b).sum(), 1)))
        m_ours = ours.step(emb_box["e"], click).mask
        m_ref = ref.predict(pt, lab, multimask_output=False)[0][0]
        iou = float((m_ours & m_ref).sum() / max((m_ours | m_ref).sum(), 1))
        row = {"image": name}
        for kind, t in (("embed", embed_ms), ("click", click_ms), ("click_region", region_ms),
                        ("click_anywhere", random_ms)):
            row.update({f"{kind}_ours_ms": t["ours"], f"{kind}_ref_ms": t["ref"],
                        f"{kind}_ratio": t["ours"] / t["ref"], f"{kind}_cpu_ratio": t["ours_cpu"] / t["ref_cpu"]})
        row.update({"mask_iou_vs_ref": iou, "embed_max_abs_diff": diff,
                    "anywhere_min_iou_vs_ref": min(random_iou), "anywhere_mean_iou_vs_ref": float(np.mean(random_iou))})
        rows.append(row)

    import napari_focsam

    print(f"napari_focsam from {Path(napari_focsam.__file__).parent}")
    print(f"threads={torch.get_num_threads()} repeats={args.repeats} encoder_precision={'bf16' if bf16 else 'fp32'}"
          f" load(1 min) start={load0:.2f} end={os.getloadavg()[0]:.2f} cores={os.cpu_count()}")
    print("wall-clock medians in ms; 'cpu' = ratio of the process CPU-time medians (less sensitive to load);"
          " 'region click' = decoder + modeling.mask_resize.logits_to_mask_roi (same mask)")
    print(f"{'image':<18}{'embed ours':>11}{'ref':>8}{'ratio':>7}{'cpu':>6}{'click ours':>12}{'ref':>8}"
          f"{'ratio':>7}{'cpu':>6}{'region click':>14}{'ref':>8}{'ratio':>7}{'cpu':>6}{'IoU':>7}{'emb diff':>10}")
    for r in rows:
        print(f"{r['image']:<18}{r['embed_ours_ms']:>11.0f}{r['embed_ref_ms']:>8.0f}{r['embed_ratio']:>7.2f}"
              f"{r['embed_cpu_ratio']:>6.2f}{r['click_ours_ms']:>12.1f}{r['click_ref_ms']:>8.1f}"
              f"{r['click_ratio']:>7.2f}{r['click_cpu_ratio']:>6.2f}{r['click_region_ours_ms']:>14.1f}"
              f"{r['click_region_ref_ms']:>8.1f}{r['click_region_ratio']:>7.2f}{r['click_region_cpu_ratio']:>6.2f}"
              f"{r['mask_iou_vs_ref']:>7.3f}{r['embed_max_abs_diff']:>10.1e}")
    print(f"\nrandom clicks anywhere ({args.random_clicks} per image, each timed twice, interleaved; mask at full "
          "resolution): ours (FocSAMPredictor.step) vs reference (SamPredictor.predict)")
    print(f"{'image':<18}{'ours ms':>9}{'ref ms':>8}{'ratio':>7}{'cpu':>6}{'IoU min':>9}{'mean':>7}")
    for r in rows:
        print(f"{r['image']:<18}{r['click_anywhere_ours_ms']:>9.1f}{r['click_anywhere_ref_ms']:>8.1f}"
              f"{r['click_anywhere_ratio']:>7.2f}{r['click_anywhere_cpu_ratio']:>6.2f}"
              f"{r['anywhere_min_iou_vs_ref']:>9.3f}{r['anywhere_mean_iou_vs_ref']:>7.3f}")
    print(json.dumps({"threads": torch.get_num_threads(), "rows": [
        {k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()} for r in rows]}))


if __name__ == "__main__":
    main()
