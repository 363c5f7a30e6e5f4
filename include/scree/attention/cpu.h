// CPU varlen attention entry points (forward, backward) over VarlenParams. Each validates its
// parameters once (typed scree::Error naming the culprit) and then runs the fastest compiled
// variant this processor supports (AVX2+FMA+F16C when present, portable otherwise).
#pragma once

#include "scree/attention/params.h"

namespace scree::attention {

// Throws scree::Error when p is inconsistent (heads, head dims, offsets, dtype, null pointers).
void validate(const VarlenParams& p);

// out (Tq, Hq, Dv) and, when p.lse is set, lse (Hq, Tq) in float32; for float64 inputs also (or
// instead) in float64 when p.lse64 is set.
void varlen_fwd_cpu(const VarlenParams& p);

// dq, dk, dv from dout, out and the forward's lse (lse_in, or for float64 inputs lse_in64; the
// float64 backward recomputes the softmax statistics itself and is fp64-accurate with either).
// dk/dv of a kv head shared by several query heads (GQA) are summed over them; the result is
// deterministic (no atomics on the CPU).
void varlen_bwd_cpu(const VarlenBackwardParams& p);

// Name of the compiled variant varlen_*_cpu use on this machine ("amx", "avx512bf16", "avx512", "avx2"
// or "generic").
const char* cpu_isa();

}  // namespace scree::attention
