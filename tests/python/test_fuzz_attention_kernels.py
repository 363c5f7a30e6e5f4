"""CI test of tools/fuzz_attention_kernels.py, the kernels' randomised campaign (run at length on the
GPU machine), on the CPU kernels here: recipes are reproducible from (seed, index) and within the
reference budget, a few cases pass FlashAttention's rule, and a kernel returning a perturbed output
or raising on a valid case is reported as a failure (the campaign's exit status 1)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch", reason="torch is not installed")

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))
import fuzz_attention_kernels as campaign  # noqa: E402

import scree  # noqa: E402

pytestmark = pytest.mark.usefixtures("torch_one_thread")  # see conftest.py


@pytest.fixture
def small_budget(monkeypatch):
    monkeypatch.setitem(campaign.BUDGET, "cpu", 6_000)


def test_recipes_are_reproducible_and_within_budget():
    for i in range(200):
        r = campaign.draw(7, i, "cuda", [64, 128])
        assert r == campaign.draw(7, i, "cuda", [64, 128])
        assert json.loads(json.dumps(r)) == r
        assert len(r["lq"]) == len(r["lk"]) and min(r["lq"] + r["lk"]) >= 0
        assert r["hq"] % r["hk"] == 0 and r["d"] in (64, 128) and r["dtype"] in ("bfloat16", "float16")
        assert sum(a * b for a, b in zip(r["lq"], r["lk"])) * r["hq"] <= campaign.budget("cuda", r["mode"])
    assert campaign.draw(7, 0, "cuda", [64]) != campaign.draw(8, 0, "cuda", [64])
    # GPU campaigns draw long batches (the Hopper backward's ranked order), most keeping a sequence
    # past 1,024 keys; host campaigns never draw them.
    long = [campaign.draw(7, i, "cuda", [128]) for i in range(400)]
    long = [r for r in long if r["mode"] == "long"]
    assert len(long) > 10 and sum(max(r["lk"]) > 1024 for r in long) > len(long) // 2
    assert all(campaign.draw(7, i, "cpu", [64])["mode"] != "long" for i in range(200))


def test_cpu_cases_pass(small_budget, tmp_path):
    assert campaign.main(["--device", "cpu", "--seed", "3", "--cases", "4", "--out", str(tmp_path)]) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["cases"] == 4 and summary["counts"].get("ok", 0) + summary["counts"].get("skipped", 0) == 4
    assert len((tmp_path / "cases.jsonl").read_text().splitlines()) == 4


def test_a_wrong_output_is_reported(small_budget, monkeypatch, tmp_path):
    real = scree.varlen_attention

    def off_by_a_little(q, k, v, **kw):
        out, lse = real(q, k, v, **kw)
        return out.with_values(out.values * 1.01 + 0.01), lse

    monkeypatch.setattr(scree, "varlen_attention", off_by_a_little)
    assert campaign.main(["--device", "cpu", "--seed", "3", "--cases", "2", "--out", str(tmp_path)]) == 1
    rows = [json.loads(x) for x in (tmp_path / "cases.jsonl").read_text().splitlines()]
    assert any(r["outcome"] == "wrong" and r["ratio"] > 1 for r in rows)


def test_an_error_on_a_valid_case_is_reported(small_budget, monkeypatch, tmp_path):
    def refuses(q, k, v, **kw):
        raise scree.ArgumentError("refused")

    monkeypatch.setattr(scree, "varlen_attention", refuses)
    assert campaign.main(["--device", "cpu", "--seed", "3", "--cases", "1", "--out", str(tmp_path)]) == 1
    row = json.loads((tmp_path / "cases.jsonl").read_text())
    assert row["outcome"] == "raised" and row["exc"] == "ArgumentError"


def test_cancellation_allowance_only_where_the_reference_in_dtype_is_exact():
    exact = torch.tensor([[0.0, 2.0], [3.0, 4.0]], dtype=torch.float64)
    low = (exact + torch.tensor([[0.0, 1e-6], [1e-6, 1e-6]], dtype=torch.float64)).float()  # exact at [0, 0] only
    bound = 3.0 * 1e-6 + 1e-5 + 2.0 ** -23 * 4.0  # rtol x base + (extra atol + fp32 rounding of |ref| <= 4)
    at_zero = exact.clone()
    at_zero[0, 0] = 5e-5  # off where the reference is exact: within bound + allowance
    ratio, *_ = campaign.gradient_ratio(at_zero.float(), exact, low, exact, 3.0, 1e-5, 1e-4)
    assert 0.3 < ratio < 1.0
    elsewhere = exact.clone()
    elsewhere[1, 1] += 5e-5  # the same error where the reference is not exact: the rule alone
    ratio, *_ = campaign.gradient_ratio(elsewhere.float(), exact, low, exact, 3.0, 1e-5, 1e-4)
    assert ratio > 1.0
    ratio_no_allowance, *_ = campaign.gradient_ratio(at_zero.float(), exact, low, exact, 3.0, 1e-5, 0.0)
    assert ratio_no_allowance > 1.0
