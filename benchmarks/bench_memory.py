"""Memory (and time) of an inference forward of a HuggingFace model on a skewed batch: padded
(attention_mask, HF's default attn_implementation "sdpa") versus packed with scree
(attn_implementation="scree", one row of real tokens with cu_seq_lens / position_ids as
DataCollatorWithFlattening makes them). Same model weights, same sequences, one run.

Lengths follow the seed demo's skew (examples/demo.py): log-normal with median 64 and sigma 1.0,
clipped to [1, 1024], and the first sequence set to the cap (one long document), 48 sequences.

Peak memory is each variant's own: each runs in a fresh subprocess. GPU (`--device cuda`):
torch.cuda.max_memory_allocated() minus the allocation before the forward. CPU: the process's
peak resident set during the forward — VmHWM is reset through /proc/self/clear_refs just before
it, and the resident size just before is subtracted (falls back to ru_maxrss when clear_refs is
not writable, which then also counts model construction; the JSON names the method). glibc is
told to map every allocation >= 128 KiB separately and unmap it on free (MALLOC_MMAP_THRESHOLD_),
so that the resident set follows live memory rather than allocator slack, for both variants. Time: a
second forward after the measured one, wall clock. Both variants first run a tiny warm-up batch
of their own kind, so one-time costs (op registration, lazy imports, thread pools) are excluded.

    python benchmarks/bench_memory.py                 # CPU -> results/memory_cpu.{json,png}
    python benchmarks/bench_memory.py --device cuda   # GPU -> results/memory_cuda.{json,png}
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def skewed_lengths(seed: int, n: int, median: int, sigma: float, cap: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    lengths = np.clip(rng.lognormal(np.log(median), sigma, size=n).astype(np.int64), 1, cap)
    lengths[0] = cap
    return lengths


# ---- memory probes --------------------------------------------------------------------------------

def _status(field: str) -> int:
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def _reset_cpu_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM (the peak resident set) to the current resident set
        return True
    except OSError:
        return False


# ---- one variant, in its own process ---------------------------------------------------------------

def worker(spec: dict) -> dict:
    import torch
    import transformers

    import scree.integrations.transformers as scree_hf

    scree_hf.register()
    device, variant = spec["device"], spec["variant"]
    torch.manual_seed(spec["seed"])
    m = spec["model"]
    config = transformers.LlamaConfig(vocab_size=m["vocab"], hidden_size=m["hidden"],
                                      intermediate_size=m["intermediate"], num_hidden_layers=m["layers"],
                                      num_attention_heads=m["heads"], num_key_value_heads=m["kv_heads"],
                                      max_position_embeddings=max(spec["lengths"]) + 1)
    impl = "scree" if variant == "packed" else spec["baseline"]
    model = transformers.LlamaForCausalLM(config).to(device=device, dtype=getattr(torch, spec["dtype"])).eval()
    model.set_attn_implementation(impl)

    def make_inputs(lengths: list[int], seed: int) -> dict:
        rng = np.random.default_rng(seed)
        seqs = [torch.from_numpy(rng.integers(0, m["vocab"], n)) for n in lengths]
        if variant == "packed":
            cu = torch.tensor(np.concatenate([[0], np.cumsum(lengths)]), dtype=torch.int32, device=device)
            return dict(input_ids=torch.cat(seqs)[None].to(device),
                        position_ids=torch.cat([torch.arange(n) for n in lengths])[None].to(device),
                        cu_seq_lens_q=cu, cu_seq_lens_k=cu, max_length_q=max(lengths), max_length_k=max(lengths))
        L = max(lengths)
        ids = torch.zeros(len(lengths), L, dtype=torch.long)
        mask = torch.zeros(len(lengths), L, dtype=torch.long)
        for i, s in enumerate(seqs):
            ids[i, :len(s)], mask[i, :len(s)] = s, 1
        return dict(input_ids=ids.to(device), attention_mask=mask.to(device))

    # Warm-up on a tiny batch of the same kind: one-time costs (kernel registration, lazy imports,
    # thread pools) are not the forward's memory.
    with torch.no_grad():
        model(**make_inputs([5, 3], spec["seed"] + 2), use_cache=False)
    inputs = make_inputs(spec["lengths"], spec["seed"] + 1)

    def forward():
        with torch.no_grad():
            return model(**inputs, use_cache=False).logits

    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        logits = forward()
        torch.cuda.synchronize()
        peak_total = torch.cuda.max_memory_allocated()
        method = "torch.cuda.max_memory_allocated"
    else:
        reset = _reset_cpu_peak()
        base = _status("VmRSS")
        logits = forward()
        if reset:
            peak_total, method = _status("VmHWM"), "VmHWM after clear_refs"
        else:
            peak_total, method = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "ru_maxrss"
    real = logits[0] if variant == "packed" else logits[inputs["attention_mask"].bool()]
    np.save(spec["logits_path"], real.float().cpu().numpy())
    del logits, real

    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    forward()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - t0
    return dict(attn_implementation=impl, peak_bytes=int(peak_total - base), peak_total_bytes=int(peak_total),
                baseline_bytes=int(base), method=method, time_s=elapsed,
                input_shape=list(inputs["input_ids"].shape))


def run_variant(spec: dict) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        spec_path = Path(tmp) / "spec.json"
        spec_path.write_text(json.dumps(spec))
        env = dict(os.environ)
        if not spec["device"].startswith("cuda"):
            # glibc keeps freed heap chunks resident (and raises its mmap threshold after big frees),
            # so the resident set would count allocator slack. Serving every allocation >= 128 KiB
            # with its own mapping, returned on free, makes the resident set follow live memory. Set
            # identically for both variants.
            env.update(MALLOC_MMAP_THRESHOLD_="131072", MALLOC_TRIM_THRESHOLD_="131072")
        proc = subprocess.run([sys.executable, __file__, "--worker", str(spec_path)], capture_output=True, text=True,
                              env=env)
        if proc.returncode != 0:
            raise SystemExit(f"{spec['variant']} run failed:\n{proc.stdout}\n{proc.stderr}")
        return json.loads(proc.stdout.strip().splitlines()[-1])


def plot(result: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(8, 3.4))
    names = [f"padded\n({result['padded']['attn_implementation']})", "packed\n(scree)"]
    colors = ["#b0b0b0", "#2a7ab9"]
    mem = [result[v]["peak_bytes"] / 2**20 for v in ("padded", "packed")]
    tim = [result[v]["time_s"] * 1e3 for v in ("padded", "packed")]
    axes[0].bar(names, mem, color=colors)
    axes[0].set_ylabel("peak memory of the forward (MiB)")
    axes[0].set_title(f"{result['saved_fraction']:.1%} less memory")
    axes[1].bar(names, tim, color=colors)
    axes[1].set_ylabel("forward time (ms)")
    axes[1].set_title(f"{result['padded']['time_s'] / result['packed']['time_s']:.1f}x faster")
    d = result["distribution"]
    fig.suptitle(f"HF Llama forward ({result['device']}), {d['n']} sequences, {d['total_tokens']} tokens, "
                 f"{d['padding_fraction']:.0%} padding", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--sequences", type=int, default=48)
    ap.add_argument("--median", type=int, default=64)
    ap.add_argument("--sigma", type=float, default=1.0)
    ap.add_argument("--max-len", type=int, default=1024)
    # Defaults: hidden 256 on the CPU (head dim 32, fast there); on CUDA 1024 / 2752, i.e. head
    # dim 128, which the CUDA kernels compile (head dim 32 would run the reference attention).
    ap.add_argument("--hidden", type=int, default=None)
    ap.add_argument("--intermediate", type=int, default=None)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--kv-heads", type=int, default=2)
    ap.add_argument("--vocab", type=int, default=2048)
    ap.add_argument("--dtype", default=None, help="float32 on CPU, bfloat16 on CUDA by default")
    ap.add_argument("--baseline", default="sdpa", help="attn_implementation of the padded run (sdpa or eager)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="tiny sizes (a smoke test)")
    ap.add_argument("--no-plot", action="store_true")
    ap.add_argument("--out", default=str(HERE / "results"))
    args = ap.parse_args()

    if args.worker:
        print(json.dumps(worker(json.loads(Path(args.worker).read_text()))))
        return
    on_cuda = args.device.startswith("cuda")
    if args.hidden is None:
        args.hidden = 1024 if on_cuda else 256
    if args.intermediate is None:
        args.intermediate = 2752 if on_cuda else 688
    if args.quick:
        args.sequences, args.median, args.max_len = 8, 8, 64
        args.hidden, args.intermediate, args.layers, args.heads, args.kv_heads, args.vocab = 64, 96, 2, 4, 2, 128
    dtype = args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32")
    lengths = skewed_lengths(args.seed, args.sequences, args.median, args.sigma, args.max_len)
    total, n, L = int(lengths.sum()), len(lengths), int(lengths.max())
    model = dict(vocab=args.vocab, hidden=args.hidden, intermediate=args.intermediate, layers=args.layers,
                 heads=args.heads, kv_heads=args.kv_heads)

    from _common import machine_info
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    result = dict(machine=machine_info(), device=args.device, dtype=dtype, model=dict(arch="LlamaForCausalLM", **model),
                  distribution=dict(kind="lognormal", median=args.median, sigma=args.sigma, cap=args.max_len,
                                    first_set_to_cap=True, n=n, seed=args.seed, lengths=lengths.tolist(),
                                    total_tokens=total, padded_slots=n * L, padding_fraction=1 - total / (n * L)))
    with tempfile.TemporaryDirectory() as tmp:
        for variant in ("padded", "packed"):
            spec = dict(variant=variant, device=args.device, dtype=dtype, seed=args.seed, model=model,
                        lengths=lengths.tolist(), baseline=args.baseline,
                        logits_path=str(Path(tmp) / f"{variant}.npy"))
            result[variant] = run_variant(spec)
            print(f"{variant:7s} {result[variant]['attn_implementation']:6s} input {result[variant]['input_shape']}: "
                  f"peak {result[variant]['peak_bytes'] / 2**20:9.1f} MiB above the "
                  f"{result[variant]['baseline_bytes'] / 2**20:.0f} MiB before the forward, "
                  f"time {result[variant]['time_s'] * 1e3:8.1f} ms")
        padded_logits, packed_logits = (np.load(Path(tmp) / f"{v}.npy") for v in ("padded", "packed"))
    diff = float(np.abs(padded_logits - packed_logits).max())
    result["max_abs_diff"] = diff
    result["saved_fraction"] = 1 - result["packed"]["peak_bytes"] / result["padded"]["peak_bytes"]
    result["speedup"] = result["padded"]["time_s"] / result["packed"]["time_s"]
    print(f"lengths: lognormal(median {args.median}, sigma {args.sigma}) clipped to [1, {args.max_len}], first = "
          f"{args.max_len}: {n} sequences, {total} tokens, {n * L} padded slots ({1 - total / (n * L):.1%} padding)")
    print(f"scree-packed saves {result['saved_fraction']:.1%} of the forward's peak memory, "
          f"{result['speedup']:.2f}x the speed; logits of real tokens agree to {diff:.2e}")
    tol = 5e-2 if dtype in ("bfloat16", "float16") else 1e-3
    if diff > tol:
        raise SystemExit(f"padded and packed logits disagree: max |diff| = {diff} > {tol}")
    name = f"memory_{'cuda' if args.device.startswith('cuda') else 'cpu'}"
    (out_dir / f"{name}.json").write_text(json.dumps(result, indent=1))
    if not args.no_plot:
        plot(result, out_dir / f"{name}.png")
    print(f"wrote {out_dir / (name + '.json')}")


if __name__ == "__main__":
    main()
