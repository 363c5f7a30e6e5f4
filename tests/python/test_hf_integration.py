"""attn_implementation="scree" in HuggingFace transformers, on tiny randomly initialised Llama,
Qwen2 and Gemma2 (sliding window on alternate layers, logit softcapping, non-default scaling)
models built from configs (no downloads): outputs against attn_implementation="eager" on padded
(right and left) and packed input (cu_seq_lens from DataCollatorWithFlattening, both spellings of
the max lengths, and position_ids alone), packed logits against the sequences run one by one,
gradients of a training step against eager, greedy generation with a KV cache, and that the
layout is computed once per forward rather than once per layer."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import scree  # noqa: E402
import scree.integrations.transformers as scree_hf  # noqa: E402

pytestmark = pytest.mark.usefixtures("torch_one_thread")

ROOT = Path(__file__).resolve().parents[2]
VOCAB = 128
LENGTHS = [7, 1, 12, 4]
TOL = dict(rtol=1e-4, atol=2e-5)  # float32; observed differences are ~1e-6


def _config(arch: str):
    common = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    if arch == "llama":
        return transformers.LlamaConfig(**common)
    if arch == "qwen2":
        return transformers.Qwen2Config(**common)
    if arch == "gemma2":  # layers alternate sliding (window 4) and full; softcap small enough to bite
        return transformers.Gemma2Config(**common, head_dim=16, sliding_window=4, query_pre_attn_scalar=24,
                                         attn_logit_softcapping=2.0, final_logit_softcapping=None)
    raise ValueError(arch)


_MODELS = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "gemma2": "Gemma2ForCausalLM"}


def _model(arch: str, seed: int):
    scree_hf.register()
    torch.manual_seed(seed)
    model = getattr(transformers, _MODELS[arch])(_config(arch)).eval()
    with torch.no_grad():  # random (not unit) norm weights, so that a mixed-up token would show
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5) if arch != "gemma2" else p.uniform_(-0.5, 0.5)
    return model


def _logits(model, impl: str, **inputs):
    model.set_attn_implementation(impl)
    with torch.no_grad():
        return model(**inputs, use_cache=False).logits


def _sequences(rng):
    return [torch.from_numpy(rng.integers(0, VOCAB, n)) for n in LENGTHS]


def _padded(seqs, side: str):
    L = max(len(s) for s in seqs)
    ids = torch.zeros(len(seqs), L, dtype=torch.long)
    mask = torch.zeros(len(seqs), L, dtype=torch.long)
    for i, s in enumerate(seqs):
        sl = slice(L - len(s), L) if side == "left" else slice(0, len(s))
        ids[i, sl], mask[i, sl] = s, 1
    return ids, mask


def _flattened(seqs):
    """A DataCollatorWithFlattening batch with the flash-attention kwargs (cu_seq_lens, max_length)."""
    collator = transformers.DataCollatorWithFlattening(return_flash_attn_kwargs=True)
    batch = collator([{"input_ids": s.tolist()} for s in seqs])
    batch.pop("labels")
    return batch


ARCHS = list(_MODELS)


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("arch", ARCHS)
def test_padded_matches_eager(arch, side, rng):
    model = _model(arch, int(rng.integers(1 << 31)))
    ids, mask = _padded(_sequences(rng), side)
    want = _logits(model, "eager", input_ids=ids, attention_mask=mask)
    got = _logits(model, "scree", input_ids=ids, attention_mask=mask)
    real = mask.bool()
    torch.testing.assert_close(got[real], want[real], **TOL)


@pytest.mark.parametrize("arch", ARCHS)
def test_packed_matches_eager_and_one_by_one(arch, rng):
    model = _model(arch, int(rng.integers(1 << 31)))
    seqs = _sequences(rng)
    batch = _flattened(seqs)
    assert batch["input_ids"].shape[0] == 1 and batch["cu_seq_lens_q"].tolist() == list(np.cumsum([0] + LENGTHS))
    want = _logits(model, "eager", input_ids=batch["input_ids"], position_ids=batch["position_ids"])
    got = _logits(model, "scree", **batch)
    torch.testing.assert_close(got, want, **TOL)

    # The other spelling of the max lengths, and position_ids alone (no cu_seq_lens).
    renamed = {("max_seqlen_" + k[-1] if k.startswith("max_length_") else k): v for k, v in batch.items()}
    assert "max_seqlen_q" in renamed and "max_length_q" not in renamed
    torch.testing.assert_close(_logits(model, "scree", **renamed), got, rtol=0, atol=0)
    torch.testing.assert_close(_logits(model, "scree", input_ids=batch["input_ids"],
                                       position_ids=batch["position_ids"]), got, rtol=0, atol=0)

    # Each sequence alone gives the same logits as inside the packed batch.
    alone = torch.cat([_logits(model, "scree", input_ids=s[None])[0] for s in seqs])
    torch.testing.assert_close(got[0], alone, **TOL)


@pytest.mark.parametrize("arch", ["llama", "gemma2"])
def test_training_step_gradients_match_eager(arch, rng):
    """One training step (loss on a packed batch and on a padded batch, backward) has the same
    loss and gradients as eager."""
    seed = int(rng.integers(1 << 31))
    seqs = _sequences(rng)
    flat = _flattened(seqs)
    ids, mask = _padded(seqs, "right")
    labels = ids.masked_fill(mask == 0, -100)

    def step(impl: str, packed: bool):
        model = _model(arch, seed).train()
        model.set_attn_implementation(impl)
        if packed:
            inputs = dict(flat) if impl == "scree" else dict(input_ids=flat["input_ids"], position_ids=flat["position_ids"])
            labels_flat = torch.cat([torch.cat([torch.tensor([-100]), s[1:]]) for s in seqs])[None]
            loss = model(**inputs, labels=labels_flat, use_cache=False).loss
        else:
            loss = model(input_ids=ids, attention_mask=mask, labels=labels, use_cache=False).loss
        loss.backward()
        return loss.detach(), {n: p.grad for n, p in model.named_parameters() if p.grad is not None}

    for packed in (True, False):
        loss_e, grads_e = step("eager", packed)
        loss_s, grads_s = step("scree", packed)
        torch.testing.assert_close(loss_s, loss_e, rtol=1e-5, atol=1e-6)
        assert grads_s.keys() == grads_e.keys() and len(grads_s) > 10
        for name in grads_e:
            torch.testing.assert_close(grads_s[name], grads_e[name], rtol=1e-4, atol=1e-5, msg=name)


def test_greedy_generation_with_cache_matches_eager(rng):
    """Left-padded batch, KV cache: prefill is padded varlen, decoding has q_len 1 over the cache."""
    model = _model("llama", int(rng.integers(1 << 31)))
    ids, mask = _padded(_sequences(rng), "left")
    outs = {}
    for impl in ("eager", "scree"):
        model.set_attn_implementation(impl)
        with torch.no_grad():
            outs[impl] = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=6, do_sample=False,
                                        pad_token_id=0)
    assert torch.equal(outs["scree"], outs["eager"])


def test_layout_computed_once_per_forward(rng, monkeypatch):
    """Every layer reuses the layout found by the first one (no per-layer host reads)."""
    model = _model("llama", int(rng.integers(1 << 31)))
    model.config.num_hidden_layers = 2
    calls = {"mask": 0, "cu": 0, "pos": 0}
    for fn, key in (("_from_mask", "mask"), ("_from_cu_seqlens", "cu"), ("_from_position_ids", "pos")):
        original = getattr(scree_hf, fn)

        def counted(*a, _original=original, _key=key, **kw):
            calls[_key] += 1
            return _original(*a, **kw)
        monkeypatch.setattr(scree_hf, fn, counted)
    seqs = _sequences(rng)
    ids, mask = _padded(seqs, "right")
    _logits(model, "scree", input_ids=ids, attention_mask=mask)
    batch = _flattened(seqs)
    _logits(model, "scree", **batch)
    _logits(model, "scree", input_ids=batch["input_ids"], position_ids=batch["position_ids"])
    assert calls == {"mask": 1, "cu": 1, "pos": 1}


def test_unsupported_features_raise(rng):
    model = _model("llama", int(rng.integers(1 << 31)))
    model.config.attention_dropout = 0.1
    for layer in model.model.layers:
        layer.self_attn.attention_dropout = 0.1
    model.train()
    model.set_attn_implementation("scree")
    with pytest.raises(scree.UnsupportedError, match="dropout"):
        model(input_ids=torch.zeros(1, 4, dtype=torch.long))


def test_memory_benchmark_quick_run(tmp_path):
    """benchmarks/bench_memory.py runs end to end (tiny sizes) and checks padded == packed itself."""
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_memory.py"), "--quick", "--no-plot",
                           "--out", str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, PYTHONUNBUFFERED="1"))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    import json
    data = json.loads((tmp_path / "memory_cpu.json").read_text())
    # (on the CPU the peak is the resident set's high-water mark above the step's start: a tiny
    # packed step can fit in pages already resident and read 0, which made this flaky under load)
    assert data["max_abs_diff"] < 1e-3 and data["padded"]["peak_bytes"] > 0 and data["packed"]["peak_bytes"] >= 0


def _kernels_gate(monkeypatch) -> str:
    """How transformers may load the local kernel repository of register_kernel(): 'compatible'
    where the installed `kernels` passes transformers' version check, 'bypassed' where it is
    importable but older (transformers 5.24 asks for 0.18.2 <= kernels < 0.19; the package index
    these machines reach ends at 0.17.2, whose local-override API is the same), the check and the
    import it guards patched for this test only."""
    pytest.importorskip("kernels")
    import kernels
    import transformers.integrations.hub_kernels as hub
    import transformers.utils.import_utils as iu
    if iu.is_kernels_available():
        return "compatible"
    for mod in (iu, hub):
        monkeypatch.setattr(mod, "is_kernels_available", lambda *a, **k: True)
    monkeypatch.setattr(hub, "get_kernel_hub", kernels.get_kernel, raising=False)
    return "bypassed"


def test_continuous_batching_generate_batch_matches_eager(rng, monkeypatch):
    """model.generate_batch (continuous batching: prefill through flash_attn_varlen_func, decode
    through flash_attn_with_kvcache over transformers' paged cache) with
    attn_implementation=register_kernel() returns eager's greedy tokens, prompts of 1..17 tokens."""
    _kernels_gate(monkeypatch)
    from transformers import GenerationConfig
    from scree.integrations import flash_api
    name = scree_hf.register_kernel()
    model = _model("llama", int(rng.integers(1 << 31)))
    prompts = [rng.integers(0, VOCAB, n).tolist() for n in (5, 17, 9, 1)]
    gc = GenerationConfig(max_new_tokens=6, do_sample=False, eos_token_id=None, pad_token_id=0)
    model.set_attn_implementation("eager")
    want = []
    with torch.no_grad():
        for p in prompts:
            ids = torch.tensor([p])
            want.append(model.generate(ids, attention_mask=torch.ones_like(ids), generation_config=gc)[0, len(p):].tolist())
    calls = {"paged": 0, "varlen": 0}

    def counted(fn, key):
        def call(*a, **k):
            calls[key] += 1
            return fn(*a, **k)
        return call
    monkeypatch.setattr(flash_api.scree, "paged_attention", counted(scree.paged_attention, "paged"))
    monkeypatch.setattr(flash_api.scree, "varlen_attention", counted(scree.varlen_attention, "varlen"))
    model.set_attn_implementation(name)
    assert model.config._attn_implementation == name
    with torch.no_grad():
        res = model.generate_batch(inputs=prompts, generation_config=gc)
    got = {tuple(r.prompt_ids): r.generated_tokens for r in res.values()}
    assert [got[tuple(p)] for p in prompts] == want
    # On CPU transformers runs continuous batching's decode through the varlen path too (its block-table
    # fast path is for FlashAttention 2/3 on CUDA), at least one forward of the 2 layers.
    assert calls["varlen"] >= 2 and calls["paged"] == 0
