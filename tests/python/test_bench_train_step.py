"""benchmarks/bench_train_step.py keeps working: a tiny Llama on the CPU trains a few steps with every
CPU method (scree, sdpa on the padded batch, eager; FA-2 recorded as skipped), the JSON holds each
method's numbers and a passed loss / gradient check. The packed kwargs the FA-2 attention function
relies on reach a custom attention function in this transformers version. On a GPU (`-m cuda`), a
small run covers the FA-2 varlen wiring (the aten ops' signatures, GQA, the backward). Timings are
never asserted."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from benchmark_module import benchmark_module

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

TINY = ["--hidden", "64", "--intermediate", "96", "--layers", "2", "--heads", "4", "--kv-heads", "2",
        "--vocab", "128", "--tokens", "512", "--lengths", "short", "--steps", "2", "--warmup", "1", "--seed", "3"]


def _bench():
    return benchmark_module("bench_train_step")


def _check_result(data: dict, ran: list[str], steps: int) -> None:
    assert data["machine"]["git_commit"] and data["machine"]["transformers"] == transformers.__version__
    c = data["config"]
    assert sum(data["lengths"]) == c["tokens"] and c["sequences"] == len(data["lengths"]) >= 2
    for name in ran:
        row = data["methods"][name]
        assert "error" not in row and "skipped" not in row, row
        assert len(row["step_ms"]) == steps and row["step_ms_median"] > 0 and row["tokens_per_s"] > 0
        assert all(math.isfinite(x) for x in row["losses"]) and len(row["losses"]) == steps + 1
    # The first step runs on the same weights and predicts the same tokens: same loss for all.
    check = data["check"]
    loss_tol, grad_tol = check["tolerance"]["loss_rel"], check["tolerance"]["grad_rel_l2"]
    first = [data["methods"][m]["loss_first"] for m in ran]
    assert max(first) - min(first) <= loss_tol * abs(first[0]), first
    assert check["ok"] is True and set(check["pairs"]) == set(ran) - {check["reference"]}
    for pair in check["pairs"].values():
        assert pair["loss_rel_diff"] <= loss_tol and set(pair["grad_rel_l2_diff"]) == {"q_proj", "k_proj", "v_proj"}
        assert all(0 <= d <= grad_tol for d in pair["grad_rel_l2_diff"].values()), pair


def test_cpu_run_writes_numbers_and_a_passed_check(tmp_path: Path):
    torch_threads = torch.get_num_threads()
    try:
        rc = _bench().main(["--device", "cpu", *TINY, "--methods", "scree", "fa2_varlen", "sdpa_padded", "eager",
                            "--out", str(tmp_path)])
    finally:
        torch.set_num_threads(torch_threads)
    assert rc == 0
    data = json.loads((tmp_path / "train_step_cpu_short.json").read_text())
    assert data["device"] == "cpu" and data["config"]["dtype"] == "float32"
    assert data["check"]["reference"] == "sdpa_padded"
    _check_result(data, ["scree", "sdpa_padded", "eager"], steps=2)
    assert "CUDA-only" in data["methods"]["fa2_varlen"]["skipped"]
    assert data["methods"]["sdpa_padded"]["layout"].startswith("padded")
    assert data["methods"]["scree"]["peak_bytes"] is None  # not measured on the CPU
    pytest.importorskip("matplotlib")
    assert (tmp_path / "train_step_cpu_short.png").stat().st_size > 0


def test_packed_kwargs_reach_a_custom_attention_function():
    """What fa2_varlen_attention reads: a DataCollatorWithFlattening batch hands every layer's
    attention function cu_seq_lens_q/k and max_length_q/k, and no mask."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    b = _bench()
    seen = []

    def recording(module, query, key, value, attention_mask, **kwargs):
        seen.append((query.shape, key.shape, attention_mask, {k: kwargs.get(k) for k in
                     ("cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k")}))
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)

    transformers.AttentionInterface.register("recording_test", recording)
    lengths = [5, 9, 2]
    packed, _ = b.make_batches(lengths, 64, seed=0)
    cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    model = transformers.LlamaForCausalLM(cfg)
    model.set_attn_implementation("recording_test")
    model(**packed, use_cache=False)
    assert len(seen) == 2
    for qs, ks, mask, kw in seen:
        assert tuple(qs) == (1, 4, 16, 8) and tuple(ks) == (1, 2, 16, 8) and mask is None
        assert kw["cu_seq_lens_q"].tolist() == kw["cu_seq_lens_k"].tolist() == [0, 5, 14, 16]
        assert kw["cu_seq_lens_q"].dtype == torch.int32 and int(kw["max_length_q"]) == int(kw["max_length_k"]) == 9


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device visible to torch")
def test_cuda_small_run_with_fa2_varlen(tmp_path: Path):
    """Head dim 128 (scree's CUDA kernels), GQA 2:1, bf16: scree against FA-2 varlen and padded sdpa."""
    args = ["--device", "cuda", "--hidden", "256", "--intermediate", "512", "--layers", "2", "--heads", "2",
            "--kv-heads", "1", "--vocab", "512", "--tokens", "4096", "--lengths", "short", "--steps", "2",
            "--warmup", "1", "--no-plot", "--out", str(tmp_path)]
    assert _bench().main(args) == 0
    data = json.loads((tmp_path / "train_step_cuda_short.json").read_text())
    assert data["check"]["reference"] == "fa2_varlen"
    _check_result(data, ["scree", "fa2_varlen", "sdpa_padded"], steps=2)
    assert all(data["methods"][m]["peak_bytes"] > 0 for m in ("scree", "fa2_varlen", "sdpa_padded"))
    assert set(data["targets"]) == {"speed", "memory"}
