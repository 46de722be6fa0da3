"""The image encoder against its FLOP count and the core's peak, beside the reference encoder.

    python benchmarks/bench_encoder_peak.py [--threads 1] [--repeats 5] [--ref-path /tmp/refpkgs]

For MobileSAM's TinyViT encoder (``vit_t``) on one 1024 x 1024 input, it prints per stage (stem,
the four layers, the neck) and for the whole encoder:

- the arithmetic: FLOPs (two per multiply-add) of the matrix products and convolutions, counted by
  ``torch.utils.flop_counter.FlopCounterMode`` on the module's plain (not fused) forward;
- the time of our inference path in float32 and with bf16 matrix products (the optional bf16
  encoder), medians of ``--repeats`` runs, the variants interleaved;
- GFLOP/s and the share of the core's peak: the peak is the fastest of several large square
  matrix products (2048^3) in the same process with the same threads, in float32 and in bf16
  (a share above 100 % means the machine ran faster during that stage than during the peak's
  runs: these VMs are shared and their clock varies);
- the reference MobileSAM encoder (the ``mobile_sam`` package found under ``--ref-path``, as
  ``bench_vs_reference.py`` loads it; skipped when absent), whole encoder only, interleaved with
  ours, and the ratio ours / reference; with the rate a float32 encoder at ``--target-ratio`` of
  the reference's time would need.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_model import median_ms  # noqa: E402

#: side of the square matrix product that stands for the core's peak
PEAK_N = 2048


def one_run_ms(fn) -> float:
    """Milliseconds of one call of ``fn`` after one untimed call."""
    return median_ms(fn, 1, warmup=1)


def peak_gflops(dtype: torch.dtype, repeats: int) -> float:
    """GFLOP/s of a (PEAK_N x PEAK_N) by (PEAK_N x PEAK_N) matrix product in ``dtype``: the best of
    ``repeats`` runs (a peak, so the fastest run; the encoder's figures are medians)."""
    a = torch.randn(PEAK_N, PEAK_N).to(dtype)
    b = torch.randn(PEAK_N, PEAK_N).to(dtype)
    return 2 * PEAK_N**3 / min(one_run_ms(lambda: a @ b) for _ in range(repeats)) / 1e6


def stages(encoder):
    """(name, plain forward, fast forward) of each stage; each takes the previous stage's output."""
    out = [("stem", encoder.patch_embed.forward, encoder.patch_embed.forward_fast)]
    for i, layer in enumerate(encoder.layers):
        out.append((f"layer {i}", layer.forward, layer.forward_fast))
    r = encoder.final_resolution

    def neck_plain(x):
        B, _, C = x.shape
        return encoder.neck(x.view(B, r, r, C).permute(0, 3, 1, 2))

    out.append(("neck", neck_plain, encoder.neck_fast))
    return out


def count_flops(fn, x) -> tuple[float, torch.Tensor]:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        y = fn(x)
    return float(counter.get_total_flops()), y


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--target-ratio", type=float, default=0.40,
                    help="print the rate a float32 encoder at this fraction of the reference's time would need")
    ap.add_argument("--ref-path", default=os.environ.get("MOBILESAM_REF", "/tmp/refpkgs"),
                    help="folder holding the reference 'mobile_sam' package (skipped when absent)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    from napari_focsam.core.models import load_model, model_path

    model = load_model("vit_t", "cpu")
    encoder = model.image_encoder
    x = torch.randn(1, 3, 1024, 1024)
    with torch.inference_mode():
        # arithmetic per stage (plain forward) and the inputs of each stage (fast path, float32)
        rows, inp = [], x
        for name, plain, fast in stages(encoder):
            flops, _ = count_flops(plain, inp)
            rows.append([name, flops, inp])
            inp = fast(inp)
        peaks = {"fp32": peak_gflops(torch.float32, 4 * args.repeats),
                 "bf16": peak_gflops(torch.bfloat16, 4 * args.repeats)}
        times: dict[str, dict[str, list[float]]] = {"fp32": {}, "bf16": {}}
        for rep in range(args.repeats):  # the two precisions interleaved, the order flipped each time
            for prec in (("fp32", "bf16") if rep % 2 == 0 else ("bf16", "fp32")):
                encoder.set_matmul_dtype(torch.bfloat16 if prec == "bf16" else None)
                for (name, _, fast), (_, _, stage_in) in zip(stages(encoder), rows):
                    times[prec].setdefault(name, []).append(one_run_ms(lambda: fast(stage_in)))
                times[prec].setdefault("whole", []).append(one_run_ms(lambda: encoder(x)))
        encoder.set_matmul_dtype(None)
        ref_ms = ours_ms = None
        ref = None
        if (Path(args.ref_path) / "mobile_sam").is_dir():
            from bench_vs_reference import load_reference

            ref = load_reference(args.ref_path, model_path("vit_t")).model.image_encoder.eval()
            ref_t, ours_t = [], []
            for rep in range(args.repeats):
                pair = [(ref_t, lambda: ref(x)), (ours_t, lambda: encoder(x))]
                for store, fn in (pair if rep % 2 == 0 else pair[::-1]):
                    store.append(one_run_ms(fn))
            ref_ms, ours_ms = statistics.median(ref_t), statistics.median(ours_t)

    total = sum(r[1] for r in rows)
    print(f"TinyViT (vit_t) encoder, 1024 x 1024, {args.threads} torch thread(s), medians of {args.repeats}; "
          f"load {os.getloadavg()[0]:.1f}")
    print(f"core peak ({PEAK_N}^3 matrix product, best run): float32 {peaks['fp32']:.0f} GFLOP/s, "
          f"bf16 {peaks['bf16']:.0f} GFLOP/s")
    print(f"{'stage':<8} {'GFLOP':>7}  {'fp32 ms':>8} {'GFLOP/s':>8} {'% peak':>7}  "
          f"{'bf16 ms':>8} {'GFLOP/s':>8} {'% bf16 peak':>11}")
    for name, flops in [(r[0], r[1]) for r in rows] + [("whole", total)]:
        line = f"{name:<8} {flops / 1e9:7.2f}"
        for prec in ("fp32", "bf16"):
            ms = statistics.median(times[prec][name])
            rate = flops / ms / 1e6
            width = 7 if prec == "fp32" else 11
            line += f"  {ms:8.1f} {rate:8.1f} {100 * rate / peaks[prec]:{width}.0f}"
        print(line)
    if ref_ms is None:
        print(f"reference encoder: no mobile_sam package under {args.ref_path} (skipped)")
    else:
        print(f"reference MobileSAM encoder {ref_ms:.1f} ms ({total / ref_ms / 1e6:.1f} GFLOP/s, "
              f"{100 * total / ref_ms / 1e6 / peaks['fp32']:.0f} % of the float32 peak); ours float32 "
              f"{ours_ms:.1f} ms, ratio ours / reference {ours_ms / ref_ms:.2f}")
        need = total / (args.target_ratio * ref_ms) / 1e6
        print(f"{args.target_ratio:.2f} of the reference's time in float32 would need {need:.1f} GFLOP/s over the "
              f"whole encoder: {100 * need / peaks['fp32']:.0f} % of the float32 peak")
    return 0


if __name__ == "__main__":
    sys.exit(main())
