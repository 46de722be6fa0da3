"""Model hot paths on the CPU: per-click decoder, refine click, image embedding.

Prints medians over repeats (after warm-up) and ratios against the plain click measured in
the same process:

    python benchmarks/bench_model.py [--repeats 15] [--threads N] [--weights vit_t|PATH]

- plain click: one decoder pass on a cached embedding with 3 clicks and the previous logits,
  plus mapping the logits to a 1024x1024 mask (what the user waits for after a click);
- refine click (the 2nd click of an object): coarse decoder pass + FocusRefiner with the
  official dimensions (12 blocks, 25.4 M parameters, random weights) + final decoder pass,
  for coarse masks whose focus box covers 1, 4 and 16 windows of the plain blocks;
- the same refine clicks with the refiner's matrix products in bf16 (float32 accumulation)
  where the CPU has native bf16 dot products, and the ratio bf16 / float32;
- embedding of one 1024x1024 image with TinyViT (MobileSAM) and SAM ViT-B.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import time

import torch

from napari_focsam.core.embeddings import ImageEmbedding
from napari_focsam.core.models import native_bf16_cpu, refine_matmul_dtype
from napari_focsam.core.prompting import Click, FocSAMPredictor
from napari_focsam.modeling.focsam import FocSAM
from napari_focsam.modeling.focus_refiner import FocusRefiner
from napari_focsam.modeling.image_encoder_vit import VIT_CONFIGS, ImageEncoderViT
from napari_focsam.modeling.tiny_vit import TinyViT


def median_ms(fn, repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


def coarse_logits_for_box(side_px: int, centre: tuple[int, int]) -> torch.Tensor:
    """(1, 1, 256, 256) logits, positive on a square of ``side_px`` canvas pixels."""
    logits = torch.full((1, 1, 256, 256), -10.0)
    cy, cx = (c // 4 for c in centre)
    r = max(side_px // 8, 1)
    logits[..., cy - r : cy + r, cx - r : cx + r] = 10.0
    return logits


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--weights", default=None, help="real weights for the decoder (default: random MobileSAM)")
    ap.add_argument("--skip-vit-b", action="store_true")
    ap.add_argument("--force-bf16", action="store_true", help="time the bf16 refiner even without native bf16")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    if args.weights:
        from napari_focsam.core.models import load_model

        base = load_model(args.weights, "cpu")
        encoder = base.image_encoder
    else:
        encoder = TinyViT()
    refiner = FocusRefiner().eval()
    model = FocSAM(encoder, focus_refiner=refiner, model_type="bench").eval()
    if args.weights:
        model.prompt_encoder.load_state_dict(base.prompt_encoder.state_dict())
        model.mask_decoder.load_state_dict(base.mask_decoder.state_dict())
    pred = FocSAMPredictor(model)
    results: dict[str, float | int | str] = {"threads": torch.get_num_threads(), "repeats": args.repeats}

    # -- embedding
    x = torch.randn(1, 3, 1024, 1024)
    with torch.inference_mode():
        results["embed_tinyvit_ms"] = median_ms(lambda: model.encode(x), max(3, args.repeats // 5), 1)
        features = model.encode(x)
    emb = ImageEmbedding(features, (1024, 1024), (1024, 1024))
    clicks = [Click(500, 500, True), Click(300, 620, False), Click(540, 480, True)]
    prev = torch.randn(1, 1, 256, 256)

    # -- plain click (baseline): decoder + logits -> full-resolution mask
    with torch.inference_mode():
        pts, lab = pred._prompts(emb, clicks)
        results["decoder_only_ms"] = median_ms(lambda: model.decode(features, pts, lab, prev), args.repeats)
    results["plain_click_ms"] = median_ms(lambda: pred.step(emb, clicks, prev, refined=features), args.repeats)

    # -- refine click for 1 / 4 / 16 windows in the plain blocks, float32 and (where the
    # CPU has native bf16 dot products) with the refiner's matrix products in bf16
    precisions = {"": None}
    if native_bf16_cpu() or args.force_bf16:
        precisions["_bf16"] = torch.bfloat16
    auto = "_bf16" if refine_matmul_dtype("auto", torch.device("cpu")) is not None else ""
    cases = {"1": (96, (128, 128)), "4": (300, (512, 512)), "16": (1024, (512, 512))}
    for label, (side, centre) in cases.items():
        coarse = coarse_logits_for_box(side, centre)
        with torch.inference_mode():
            mask = refiner.focus_mask(coarse)
            counts = refiner.selected_windows_per_block(mask)[0]
        results[f"refine_{label}w_windows_plain_shifted"] = f"{int(counts[0])}/{int(counts[1])}"
        for suffix, dtype in precisions.items():
            refiner.set_matmul_dtype(dtype)
            with torch.inference_mode():
                tok = torch.randn(1, 1, 256)
                refine_ms = median_ms(lambda: model.refine(features, coarse, tok), max(3, args.repeats // 3), 1)
                # the full refine click: coarse pass + refine + final pass + mask
                def refine_click():
                    out = model.decode(features, pts[:, :2], lab[:, :2], prev)
                    refined = model.refine(features, coarse, out.token)
                    pred.step(emb, clicks[:2], prev, refined=refined)
                click_ms = median_ms(refine_click, max(3, args.repeats // 3), 1)
            results[f"refiner_{label}w{suffix}_ms"] = refine_ms
            results[f"refine_click_{label}w{suffix}_ms"] = click_ms
            results[f"ratio_refine_click_{label}w{suffix}_vs_plain"] = click_ms / results["plain_click_ms"]
        if "_bf16" in precisions:
            results[f"ratio_refiner_{label}w_bf16_vs_fp32"] = (
                results[f"refiner_{label}w_bf16_ms"] / results[f"refiner_{label}w_ms"])
    refiner.set_matmul_dtype(None)
    results["refine_precision_auto"] = "bf16" if auto else "fp32"

    results["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    # ViT-B last: its 3 GB of activations would otherwise change the heap the clicks run in
    # (after it, the plain click measured 36 instead of 27 ms on our VM)
    if not args.skip_vit_b:
        vit_b = ImageEncoderViT(VIT_CONFIGS["vit_b"]).eval()
        with torch.inference_mode():
            results["embed_vit_b_ms"] = median_ms(lambda: vit_b(x), 3, 1)
        del vit_b
        results["peak_rss_with_vit_b_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    # issue-2 targets on a 2-core CPU: plain click <= 30 ms, refine click (<= 4 windows) <= 300 ms
    results["target_plain_click_30ms"] = "met" if results["plain_click_ms"] <= 30 else "missed"
    # (with the precision "auto" picks on this machine)
    results["target_refine_click_4w_300ms"] = "met" if results[f"refine_click_4w{auto}_ms"] <= 300 else "missed"
    width = max(len(k) for k in results)
    for k, v in results.items():
        print(f"{k:<{width}}  {v:.1f}" if isinstance(v, float) else f"{k:<{width}}  {v}")
    print(json.dumps({k: (round(v, 2) if isinstance(v, float) else v) for k, v in results.items()}))


if __name__ == "__main__":
    main()
