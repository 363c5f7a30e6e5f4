"""The command line: run N cases, print counts by entry point and outcome, save every distinct
failure (a few raw repros each, and one minimised), write summary.json.

    python -m tools.fuzz --cases 100000 --seed 0 --workers 2 --out fuzz_out [--timeout 20] [--only REGEX] [--frameworks numpy,torch]
    python -m tools.fuzz --replay fuzz_out/min/01-crash-to.py     # run one saved repro again, classified

Cases are (seed, index): `--start` continues a run where another stopped."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

from tools.fuzz import generate
from tools.fuzz.minimize import minimize, signature
from tools.fuzz.oracle import OUTCOMES
from tools.fuzz.render import one_line, source
from tools.fuzz.runner import Runner

SEVERITY = ("crash", "hang", "wrong", "untyped", "harness")  # most severe first; 'skip': inputs not made


def save(path: Path, recipe: dict, rec: dict) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    head = f"# {rec['outcome']}: {rec['entry']} ({rec.get('fw')}) {rec.get('exc', '')} {rec.get('msg', '')}".rstrip()
    detail = f"# {rec['detail']}\n" if rec.get("detail") else ""
    path.write_text(f"{head}\n{detail}# recipe: {generate.to_json(recipe)}\n{source(recipe)}")
    return str(path)


def table(counts: dict) -> str:
    cols = list(OUTCOMES) + sorted({o for c in counts.values() for o in c} - set(OUTCOMES))
    width = max([len(e) for e in counts] + [5])
    lines = [f"{'entry':<{width}} " + " ".join(f"{c:>8}" for c in cols) + f" {'total':>8}"]
    totals: Counter = Counter()
    for e in sorted(counts):
        c = counts[e]
        totals.update(c)
        lines.append(f"{e:<{width}} " + " ".join(f"{c.get(o, 0):>8}" for o in cols) + f" {sum(c.values()):>8}")
    lines.append(f"{'TOTAL':<{width}} " + " ".join(f"{totals.get(o, 0):>8}" for o in cols) + f" {sum(totals.values()):>8}")
    return "\n".join(lines)


def replay(path: str, timeout: float) -> int:
    line = next(ln for ln in Path(path).read_text().splitlines() if ln.startswith("# recipe: "))
    recipe = generate.from_json(line[len("# recipe: "):])
    with Runner(1, timeout) as runner:
        for _, rec in runner.run(0, [recipe]):
            print(json.dumps(rec, indent=1, default=str))
            return 0 if rec["outcome"] in ("ok", "typed") else 1
    return 1


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tools.fuzz", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", type=int, default=10_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--start", type=int, default=0, help="first case index")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--out", default="fuzz_out")
    ap.add_argument("--timeout", type=float, default=20.0, help="seconds a case may run (hang)")
    ap.add_argument("--only", default=None, help="regex: only entry points it matches")
    ap.add_argument("--frameworks", default=None, help="comma-separated: only these (numpy,torch,jax,mlx)")
    ap.add_argument("--minimize", type=int, default=40, help="distinct failures to minimise (0: none)")
    ap.add_argument("--budget", type=int, default=60, help="evaluations per minimisation")
    ap.add_argument("--keep", type=int, default=3, help="raw repros saved per distinct failure")
    ap.add_argument("--mem-limit-gb", type=float, default=8.0, help="address space per worker")
    ap.add_argument("--start-method", default="forkserver", choices=["forkserver", "spawn"])
    ap.add_argument("--replay", default=None, help="run one saved repro (.py) and print its record")
    args = ap.parse_args(argv)
    if args.replay:
        return replay(args.replay, args.timeout)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    counts: dict = defaultdict(Counter)
    sigs: dict = {}
    refused: Counter = Counter()
    ms: dict = defaultdict(lambda: [0, 0.0])  # framework -> [cases, ms in workers]
    select = {"only": args.only, "frameworks": args.frameworks.split(",") if args.frameworks else None}
    t0 = last = time.monotonic()
    done = 0
    items = range(args.start, args.start + args.cases)
    with Runner(args.workers, args.timeout, int(args.mem_limit_gb * (1 << 30)), args.start_method,
                jax_cache=str(out / "jax_cache")) as runner:
        for index, rec in runner.run(args.seed, items, select):
            done += 1
            counts[rec["entry"]][rec["outcome"]] += 1
            if "ms" in rec:
                for key in (rec.get("fw"), f"{rec.get('fw')}/{rec['entry']}"):
                    ms[key][0] += 1
                    ms[key][1] += rec["ms"]
            if rec["outcome"] == "typed" and rec.get("refused"):
                refused[(rec["entry"], rec.get("exc", ""), rec.get("msg", "")[:80])] += 1
            if rec["outcome"] not in ("ok", "typed"):
                sig = signature(rec)
                s = sigs.setdefault(sig, {"count": 0, "examples": [], "rec": rec, "index": index})
                s["count"] += 1
                if len(s["examples"]) < args.keep:
                    recipe = generate.case(args.seed, index, select)
                    name = f"{rec['outcome']}/{rec['entry']}-{rec.get('fw')}-{index}.py"
                    s["examples"].append(save(out / "cases" / name, recipe, rec))
            if time.monotonic() - last > 15:
                last = time.monotonic()
                bad = sum((Counter({o: n for o, n in c.items() if o not in ("ok", "typed")}) for c in counts.values()),
                          Counter())
                print(f"[{done}/{args.cases}] {done / (last - t0):.0f} cases/s, {len(sigs)} distinct failures, "
                      f"{dict(bad)}", file=sys.stderr, flush=True)
        elapsed = time.monotonic() - t0
        restarts = runner.restarts

        order = sorted(sigs.items(), key=lambda kv: (SEVERITY.index(kv[0][1]) if kv[0][1] in SEVERITY else 9,
                                                     -kv[1]["count"]))
        failures = []
        for n, (sig, s) in enumerate(order):
            recipe = generate.case(args.seed, s["index"], select)
            entry = {"entry": sig[0], "outcome": sig[1], "kind": sig[2], "count": s["count"],
                     "exc": s["rec"].get("exc"), "msg": s["rec"].get("msg"), "detail": s["rec"].get("detail"),
                     "where": s["rec"].get("where", ""), "why": s["rec"].get("why", ""),
                     "example": {"index": s["index"], "one_line": one_line(recipe), "files": s["examples"]}}
            if n < args.minimize and sig[1] in SEVERITY and sig[1] != "harness":
                small, spent = minimize(runner, recipe, sig, args.budget)
                path = out / "min" / f"{n:02d}-{sig[1]}-{sig[0]}.py"
                entry["minimised"] = {"one_line": one_line(small), "file": save(path, small, dict(s["rec"])),
                                      "evaluations": spent}
            failures.append(entry)
            print(f"minimised {n + 1}/{len(order)}", file=sys.stderr, flush=True) if n < args.minimize else None

    summary = {
        "seed": args.seed, "start": args.start, "cases": done, "workers": args.workers, "timeout_s": args.timeout,
        "elapsed_s": round(elapsed, 1), "cases_per_s": round(done / elapsed, 1),
        "cases_per_s_per_worker": round(done / elapsed / args.workers, 1), "worker_restarts": restarts,
        "ms_per_case": {k: round(t / max(n, 1), 2) for k, (n, t) in sorted(ms.items(), key=lambda kv: -kv[1][1])},
        "counts": {e: dict(c) for e, c in sorted(counts.items())},
        "totals": dict(sum(counts.values(), Counter())),
        "failures": failures,
        "refused_valid": [{"entry": e, "exc": x, "msg": m, "count": n} for (e, x, m), n in refused.most_common()],
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    print(table(counts))
    print(f"\n{done} cases in {elapsed:.0f} s: {done / elapsed:.0f} cases/s ({done / elapsed / args.workers:.0f} per "
          f"worker), {restarts} worker restarts; summary: {out / 'summary.json'}")
    print(f"\n{len(failures)} distinct failures (most severe first):")
    for f in failures:
        line = f.get("minimised", f["example"])["one_line"]
        print(f"  [{f['outcome']}] {f['entry']} {f['kind']} x{f['count']}: {f['msg'] or f['detail']}"[:220])
        print(f"      {line}"[:400])
    return 0


if __name__ == "__main__":
    sys.exit(main())
