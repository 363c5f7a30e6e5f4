"""Serving with a paged KV cache: three requests of different lengths prefill their prompts into
pages of 16 tokens (shuffled, as an engine's allocator hands them out), then decode five steps,
each step appending one token per request and attending over the cache; every step is checked
against dense attention over the same tokens (so this example is a test too). The same PagedKV
comes from vLLM, SGLang or FlashInfer metadata through scree.bridges.serving. NumPy only (the CPU
kernel reads the pages in place); torch CUDA half tensors run the CUDA decode kernel."""

import numpy as np

import scree

rng = np.random.default_rng(0)
HQ, HK, D, PAGE = 8, 2, 32, 16
prompts = [37, 5, 64]                     # prompt lengths
steps = 5
num_pages = sum(-(-(n + steps) // PAGE) for n in prompts) + 2
k_pages = np.zeros((num_pages, PAGE, HK, D), np.float32)
v_pages = np.zeros_like(k_pages)

# Each request gets its pages (in a shuffled order) and a row of the page table.
free = list(rng.permutation(num_pages))
width = max(-(-(n + steps) // PAGE) for n in prompts)
table = np.zeros((len(prompts), width), np.int32)
for r, n in enumerate(prompts):
    pages = [free.pop() for _ in range(-(-(n + steps) // PAGE))]
    table[r, :len(pages)] = pages         # entries past a request's pages are padding
dense_k = [np.empty((0, HK, D), np.float32) for _ in prompts]
dense_v = [np.empty((0, HK, D), np.float32) for _ in prompts]


def slots(lengths_before, new):
    """vLLM's slot mapping: page * PAGE + position in the page, for each new token."""
    out = []
    for r, (start, count) in enumerate(zip(lengths_before, new)):
        for t in range(start, start + count):
            out.append(int(table[r, t // PAGE]) * PAGE + t % PAGE)
    return np.array(out, np.int64)


lengths = [0] * len(prompts)
new = list(prompts)                       # the prefill step first, then one token per request
for step in range(steps + 1):
    k = rng.standard_normal((sum(new), HK, D)).astype(np.float32)
    v = rng.standard_normal((sum(new), HK, D)).astype(np.float32)
    q = scree.from_lengths(rng.standard_normal((sum(new), HQ, D)).astype(np.float32), new)
    kv = scree.PagedKV(k_pages, v_pages, table, np.array([a + b for a, b in zip(lengths, new)], np.int32))
    kv.append(k, v, slots(lengths, new))  # written into the pages in place
    out = scree.paged_attention(q, kv, causal=True)

    # The same step on dense, contiguous keys and values.
    at = np.cumsum([0] + new)
    for r in range(len(prompts)):
        dense_k[r] = np.concatenate([dense_k[r], k[at[r]:at[r + 1]]])
        dense_v[r] = np.concatenate([dense_v[r], v[at[r]:at[r + 1]]])
    K = scree.pack(dense_k)
    want = scree.varlen_attention(q, K, K.with_values(np.concatenate(dense_v)), causal=True)
    np.testing.assert_allclose(out.values, want.values, rtol=1e-5, atol=1e-6)
    lengths = [a + b for a, b in zip(lengths, new)]
    new = [1] * len(prompts)
    print(f"step {step}: {sum(lengths)} cached tokens in {num_pages} pages, output matches dense attention")
