"""scree's main demo: a realistic, skewed batch of variable-length sequences (chat-like lengths,
log-normal) packed into scree.Arrays, causal varlen attention over it with scree's compiled
kernel, and what padding would have cost: the memory of the padded tensors, and whether the
results agree with the padded computation users run today (torch SDPA over a padded batch with a
mask)."""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import torch.nn.functional as F

import scree


def skewed_lengths(rng: np.random.Generator, n: int, median: int, cap: int) -> np.ndarray:
    """Log-normal lengths (sigma 1.0): most sequences short, a few long, as in chat/instruction data."""
    return np.clip(rng.lognormal(np.log(median), 1.0, size=n).astype(np.int64), 1, cap)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--sequences", type=int, default=48)
    ap.add_argument("--median", type=int, default=64)
    ap.add_argument("--max-len", type=int, default=1024)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--head-dim", type=int, default=32)
    args = ap.parse_args()

    rng = np.random.default_rng()
    lengths = skewed_lengths(rng, args.sequences, args.median, args.max_len)
    lengths[0] = args.max_len  # one long document, the usual culprit of padding waste
    total, H, D = int(lengths.sum()), args.heads, args.head_dim

    # Packed q, k, v: (total, H, D) values + shared offsets. No padding anywhere.
    q, k, v = (scree.from_lengths(torch.randn(total, H, D), lengths) for _ in range(3))
    print(q)

    scree.varlen_attention(q, k, v, causal=True)  # warm-up: the first call registers the torch op
    t0 = time.perf_counter()
    out = scree.varlen_attention(q, k, v, causal=True)
    t_scree = time.perf_counter() - t0

    # What users do today: pad to the longest sequence, mask, run SDPA (timed on a second call too).
    def padded_sdpa():
        (qp, mask), (kp, _), (vp, _) = (a.to_padded() for a in (q, k, v))
        n, L = mask.shape
        visible = mask[:, None, None, :] & torch.ones(L, L, dtype=torch.bool).tril()[None, None]
        return F.scaled_dot_product_attention(qp.transpose(1, 2), kp.transpose(1, 2), vp.transpose(1, 2),
                                              attn_mask=visible)
    padded_sdpa()
    t0 = time.perf_counter()
    ref = padded_sdpa()
    t_padded = time.perf_counter() - t0
    mask = q.to_padded()[1]
    n, L = mask.shape
    back = scree.from_padded(ref.transpose(1, 2), mask=mask)

    err = (out.values - back.values).abs().max().item()
    item = q.values.element_size()
    packed_bytes = 4 * total * H * D * item                       # q, k, v, out
    padded_bytes = 4 * n * L * H * D * item + n * L * L           # + the (n, L, L) bool mask
    print(f"sequences: {n}, tokens: {total}, longest: {L}, padded slots: {n * L} "
          f"({1 - total / (n * L):.1%} of them padding)")
    print(f"memory  q/k/v/out packed: {packed_bytes / 2**20:8.2f} MiB")
    print(f"memory  padded + mask:    {padded_bytes / 2**20:8.2f} MiB  -> "
          f"scree saves {1 - packed_bytes / padded_bytes:.1%}")
    print(f"attention FLOPs: packed {sum(int(l) ** 2 for l in lengths) * 2 * H * D / 1e9:.3f} G (causal), "
          f"padded {n * L * L * 2 * H * D / 1e9:.3f} G")
    print(f"results match padded SDPA: max |diff| = {err:.2e} "
          f"({'OK' if err < 1e-4 else 'MISMATCH'})")
    print(f"time (CPU, second call): scree {t_scree * 1e3:.1f} ms, padded SDPA incl. padding "
          f"{t_padded * 1e3:.1f} ms")
    if err >= 1e-4:
        raise SystemExit("scree and padded attention disagree")


if __name__ == "__main__":
    main()
