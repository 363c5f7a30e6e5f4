// CPU attention backward against a naive fp64 forward + backward written with plain loops from the
// definition (DESIGN §3; the mask is spelled out here, not taken from visible_keys): lengths 0, 1,
// odd and longer than a block, q/k lengths differing both ways, GQA 1/2/4 and MQA, D != Dv, causal
// (bottom-right), windows, softcap, custom scale, padded strides; float32/float64/float16/bfloat16.
// Also: large scores that lse cannot carry (float32 and float64), bit-identical repeated runs and
// thread counts, dq = 0 for rows with no visible key, dk = dv = 0 for keys no query sees, and a
// timing report (no assertion on time).
#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <type_traits>
#include <vector>

#include "element_types.h"
#include "scree/attention/cpu.h"
#include "scree/dtypes.h"
#include "scree/error.h"
#include "scree/parallel.h"

namespace {

using scree::DType;
using scree::attention::VarlenBackwardParams;

struct BwdCase {
  std::vector<int64_t> lq, lk;
  int64_t hq = 1, hk = 1, d = 32, dv = 32;
  bool causal = false;
  int64_t left = -1, right = -1;
  float softcap = 0.f;
  float scale = 0.f;     // 0: default 1/sqrt(d)
  bool padded = false;   // row/head strides with gaps (checked to stay untouched)
  unsigned seed = 1;
};

std::vector<int64_t> offsets_of(const std::vector<int64_t>& lengths) {
  std::vector<int64_t> off{0};
  for (int64_t l : lengths) off.push_back(off.back() + l);
  return off;
}

// The kernels take the scale as a float: the reference uses that same float value.
double scale_of(const BwdCase& c) { return double(c.scale > 0 ? c.scale : float(1.0 / std::sqrt(double(c.d)))); }

bool visible(const BwdCase& c, int64_t i, int64_t j, int64_t Lq, int64_t Lk) {
  const int64_t shift = j - (i + Lk - Lq);  // key offset from the bottom-right aligned diagonal
  if (c.causal && shift > 0) return false;
  if (c.right >= 0 && shift > c.right) return false;
  if (c.left >= 0 && shift < -c.left) return false;
  return true;
}

// Dense fp64 tensors (T, H, D), contiguous.
struct Ref {
  std::vector<double> out, lse, dq, dk, dv;
  std::vector<char> row_has_key;  // (Tq, Hq)
  std::vector<char> key_seen;     // (Tk, Hk)
};

Ref naive(const BwdCase& c, const std::vector<double>& q, const std::vector<double>& k, const std::vector<double>& v,
          const std::vector<double>& dout) {
  const auto oq = offsets_of(c.lq), ok = offsets_of(c.lk);
  const int64_t Tq = oq.back(), Tk = ok.back();
  const double scale = scale_of(c), cap = c.softcap;
  Ref r;
  r.out.assign(Tq * c.hq * c.dv, 0.0);
  r.lse.assign(c.hq * Tq, -INFINITY);
  r.dq.assign(Tq * c.hq * c.d, 0.0);
  r.dk.assign(Tk * c.hk * c.d, 0.0);
  r.dv.assign(Tk * c.hk * c.dv, 0.0);
  r.row_has_key.assign(Tq * c.hq, 0);
  r.key_seen.assign(Tk * c.hk, 0);
  for (size_t b = 0; b < c.lq.size(); ++b) {
    const int64_t Lq = c.lq[b], Lk = c.lk[b];
    for (int64_t h = 0; h < c.hq; ++h) {
      const int64_t kh = h / (c.hq / c.hk);
      for (int64_t i = 0; i < Lq; ++i) {
        const int64_t qi = oq[b] + i;
        const double* qrow = &q[(qi * c.hq + h) * c.d];
        const double* dorow = &dout[(qi * c.hq + h) * c.dv];
        std::vector<double> raw(Lk), s(Lk), p(Lk, 0.0), dp(Lk, 0.0);
        std::vector<char> vis(Lk);
        double m = -INFINITY;
        for (int64_t j = 0; j < Lk; ++j) {
          vis[j] = visible(c, i, j, Lq, Lk);
          double dot = 0;
          for (int64_t d = 0; d < c.d; ++d) dot += qrow[d] * k[((ok[b] + j) * c.hk + kh) * c.d + d];
          raw[j] = scale * dot;
          s[j] = cap > 0 ? cap * std::tanh(raw[j] / cap) : raw[j];
          if (vis[j]) m = std::max(m, s[j]);
        }
        if (m == -INFINITY) continue;  // no visible key: out = 0, lse = -inf, no gradient
        r.row_has_key[qi * c.hq + h] = 1;
        double l = 0;
        for (int64_t j = 0; j < Lk; ++j)
          if (vis[j]) l += std::exp(s[j] - m);
        const double lse = m + std::log(l);
        r.lse[h * Tq + qi] = lse;
        double* orow = &r.out[(qi * c.hq + h) * c.dv];
        for (int64_t j = 0; j < Lk; ++j) {
          if (!vis[j]) continue;
          p[j] = std::exp(s[j] - m) / l;  // not exp(s - lse): lse's rounding would scale the row
          const double* vrow = &v[((ok[b] + j) * c.hk + kh) * c.dv];
          for (int64_t d = 0; d < c.dv; ++d) orow[d] += p[j] * vrow[d];
        }
        // Backward: dP = dO V^T, delta = sum_j P dP, dS = P (dP - delta) (* softcap derivative).
        double delta = 0;
        for (int64_t j = 0; j < Lk; ++j) {
          if (!vis[j]) continue;
          const double* vrow = &v[((ok[b] + j) * c.hk + kh) * c.dv];
          for (int64_t d = 0; d < c.dv; ++d) dp[j] += dorow[d] * vrow[d];
          delta += p[j] * dp[j];
        }
        for (int64_t j = 0; j < Lk; ++j) {
          if (!vis[j]) continue;
          const int64_t kj = ok[b] + j;
          r.key_seen[kj * c.hk + kh] = 1;
          double ds = p[j] * (dp[j] - delta);
          if (cap > 0) {
            const double t = std::tanh(raw[j] / cap);
            ds *= 1 - t * t;
          }
          const double* krow = &k[(kj * c.hk + kh) * c.d];
          for (int64_t d = 0; d < c.d; ++d) {
            r.dq[(qi * c.hq + h) * c.d + d] += scale * ds * krow[d];
            r.dk[(kj * c.hk + kh) * c.d + d] += scale * ds * qrow[d];
          }
          for (int64_t d = 0; d < c.dv; ++d) r.dv[(kj * c.hk + kh) * c.dv + d] += p[j] * dorow[d];
        }
      }
    }
  }
  return r;
}

using scree::test::dtype_of;
using scree::test::from_double;
using scree::test::to_double;

// A (T, H, E) tensor stored with strides (row_stride, head_stride) in elements of T.
template <class T>
struct Strided {
  int64_t rows, heads, dim, head_stride, row_stride;
  std::vector<T> data;
  Strided(int64_t t, int64_t h, int64_t e, bool padded)
      : rows(t), heads(h), dim(e), head_stride(padded ? e + 3 : e), row_stride(padded ? h * (e + 3) + 5 : h * e) {
    // Poison: a large value in every slot, so unwritten outputs and touched gaps both show.
    data.assign(static_cast<size_t>(std::max<int64_t>(rows * row_stride, 1)), from_double<T>(777.0));
  }
  T& at(int64_t t, int64_t h, int64_t e) { return data[t * row_stride + h * head_stride + e]; }
  bool in_gap(int64_t idx) const {
    const int64_t within_row = idx % row_stride;
    return within_row >= heads * head_stride || within_row % head_stride >= dim;
  }
};

template <class T>
struct Problem {
  BwdCase c;
  std::vector<int64_t> oq, ok;
  int64_t Tq, Tk;
  std::vector<double> q, k, v, dout;  // rounded to T, as doubles
  Strided<T> sq, sk, sv, sdout, out, dq, dk, dv;
  std::vector<float> lse;

  explicit Problem(const BwdCase& cs)
      : c(cs),
        oq(offsets_of(cs.lq)),
        ok(offsets_of(cs.lk)),
        Tq(oq.back()),
        Tk(ok.back()),
        sq(Tq, cs.hq, cs.d, cs.padded),
        sk(Tk, cs.hk, cs.d, cs.padded),
        sv(Tk, cs.hk, cs.dv, cs.padded),
        sdout(Tq, cs.hq, cs.dv, cs.padded),
        out(Tq, cs.hq, cs.dv, cs.padded),
        dq(Tq, cs.hq, cs.d, cs.padded),
        dk(Tk, cs.hk, cs.d, cs.padded),
        dv(Tk, cs.hk, cs.dv, cs.padded) {
    std::mt19937 gen(cs.seed);
    std::normal_distribution<double> dist(0.0, 1.0);
    auto fill = [&](Strided<T>& s, std::vector<double>& dense) {
      dense.resize(static_cast<size_t>(s.rows * s.heads * s.dim));
      for (int64_t t = 0; t < s.rows; ++t)
        for (int64_t h = 0; h < s.heads; ++h)
          for (int64_t e = 0; e < s.dim; ++e) {
            double x = dist(gen);
            if (std::abs(x) < 1e-3) x = 0.5;  // never zero
            const T y = from_double<T>(x);
            s.at(t, h, e) = y;
            dense[(t * s.heads + h) * s.dim + e] = to_double(y);
          }
    };
    fill(sq, q);
    fill(sk, k);
    fill(sv, v);
    fill(sdout, dout);
    lse.assign(static_cast<size_t>(std::max<int64_t>(c.hq * Tq, 1)), 12345.f);
  }

  VarlenBackwardParams params() {
    VarlenBackwardParams p;
    p.dtype = dtype_of<T>();
    p.q = sq.data.data();
    p.k = sk.data.data();
    p.v = sv.data.data();
    p.out = out.data.data();
    p.lse = lse.data();
    p.q_row_stride = sq.row_stride, p.q_head_stride = sq.head_stride;
    p.k_row_stride = sk.row_stride, p.k_head_stride = sk.head_stride;
    p.v_row_stride = sv.row_stride, p.v_head_stride = sv.head_stride;
    p.out_row_stride = out.row_stride, p.out_head_stride = out.head_stride;
    p.cu_seqlens_q = {oq.data(), true};
    p.cu_seqlens_k = {ok.data(), true};
    p.num_sequences = static_cast<int64_t>(c.lq.size());
    p.total_q = Tq;
    p.total_k = Tk;
    for (size_t b = 0; b < c.lq.size(); ++b) {
      p.max_seqlen_q = std::max(p.max_seqlen_q, c.lq[b]);
      p.max_seqlen_k = std::max(p.max_seqlen_k, c.lk[b]);
    }
    p.heads_q = c.hq, p.heads_k = c.hk;
    p.head_dim = c.d, p.head_dim_v = c.dv;
    p.scale = float(scale_of(c));
    p.softcap = c.softcap;
    p.causal = c.causal;
    p.window_left = c.left, p.window_right = c.right;
    p.dout = sdout.data.data();
    p.dout_row_stride = sdout.row_stride, p.dout_head_stride = sdout.head_stride;
    p.dq = dq.data.data();
    p.dk = dk.data.data();
    p.dv = dv.data.data();
    p.dq_row_stride = dq.row_stride, p.dq_head_stride = dq.head_stride;
    p.dk_row_stride = dk.row_stride, p.dk_head_stride = dk.head_stride;
    p.dv_row_stride = dv.row_stride, p.dv_head_stride = dv.head_stride;
    p.lse_in = lse.data();
    return p;
  }

  void run() {
    VarlenBackwardParams p = params();
    scree::attention::varlen_fwd_cpu(p);
    scree::attention::varlen_bwd_cpu(p);
  }
};

// Max |got - ref| over max |ref| (the tensor's scale), exact zeros where the structure says so,
// and padding gaps untouched.
template <class T>
void compare(const char* name, Strided<T>& got, const std::vector<double>& ref, const std::vector<char>* live,
             double tol, const BwdCase& c) {
  double scale = 0, err = 0;
  for (double x : ref) scale = std::max(scale, std::abs(x));
  int64_t bad_zero = 0;
  for (int64_t t = 0; t < got.rows; ++t)
    for (int64_t h = 0; h < got.heads; ++h) {
      const bool is_live = live == nullptr || (*live)[t * got.heads + h];
      for (int64_t e = 0; e < got.dim; ++e) {
        const double g = to_double(got.at(t, h, e)), r = ref[(t * got.heads + h) * got.dim + e];
        if (!std::isfinite(g)) err = INFINITY;
        err = std::max(err, std::abs(g - r));
        if (!is_live && g != 0.0) ++bad_zero;
      }
    }
  const double rel = scale > 0 ? err / scale : err;
  if (std::getenv("SCREE_TEST_VERBOSE")) std::printf("  %-4s rel error %.3g (tol %.3g)\n", name, rel, tol);
  EXPECT_LE(rel, tol) << name << ": max error " << err << " vs scale " << scale << " (hq " << c.hq << " hk " << c.hk
                      << " d " << c.d << " dv " << c.dv << " causal " << c.causal << " window " << c.left << ","
                      << c.right << " softcap " << c.softcap << ")";
  EXPECT_EQ(bad_zero, 0) << name << ": nonzero gradient where it must be exactly 0";
  if (c.padded) {
    int64_t touched = 0;
    for (size_t i = 0; i < got.data.size(); ++i)
      if (got.in_gap(int64_t(i)) && to_double(got.data[i]) != to_double(from_double<T>(777.0))) ++touched;
    EXPECT_EQ(touched, 0) << name << ": wrote into stride gaps";
  }
}

template <class T>
double tolerance() {
  if constexpr (std::is_same_v<T, float>) return 1e-4;  // seen: 1.5e-6
  if constexpr (std::is_same_v<T, double>) return 1e-10;  // seen: 4e-15
  if constexpr (std::is_same_v<T, scree::float16>) return 4e-3;  // seen: 8e-4
  return 2e-2;  // bfloat16 (seen: 5e-3): 8-bit mantissa outputs, O rounded before delta = dO . O
}

template <class T>
void check(const BwdCase& c) {
  Problem<T> pr(c);
  pr.run();
  const Ref ref = naive(c, pr.q, pr.k, pr.v, pr.dout);
  const double tol = tolerance<T>();
  compare("out", pr.out, ref.out, nullptr, tol, c);
  compare("dq", pr.dq, ref.dq, &ref.row_has_key, tol, c);
  compare("dk", pr.dk, ref.dk, &ref.key_seen, tol, c);
  compare("dv", pr.dv, ref.dv, &ref.key_seen, tol, c);
}

template <class T>
void check_all(const std::vector<BwdCase>& cases) {
  for (const BwdCase& c : cases) {
    SCOPED_TRACE(::testing::Message() << "case seed " << c.seed);
    check<T>(c);
  }
}

// The grid: every feature appears at several lengths and head layouts.
std::vector<BwdCase> grid() {
  std::vector<BwdCase> cases;
  unsigned seed = 100;
  auto add = [&](BwdCase c) {
    c.seed = seed++;
    cases.push_back(c);
  };
  const std::vector<int64_t> lq{0, 1, 37, 200, 5, 64}, lk{3, 1, 37, 200, 0, 97};  // Lq < Lk, =, >
  const std::vector<int64_t> lq2{97, 1, 130, 7}, lk2{31, 200, 130, 0};
  // Plain, GQA ratios, MQA, D != Dv, every D.
  add({lq, lk, 2, 2, 32, 32});
  add({lq, lk, 4, 2, 64, 32});
  add({lq2, lk2, 4, 1, 80, 80});
  add({lq, lk, 8, 2, 128, 64});
  // Causal (bottom-right) with both length orders.
  { BwdCase c{lq, lk, 4, 4, 64, 64}; c.causal = true; add(c); }
  { BwdCase c{lq2, lk2, 2, 1, 32, 64}; c.causal = true; add(c); }
  // Windows: left only, right only, both, causal + left.
  { BwdCase c{lq, lk, 2, 1, 32, 32}; c.left = 20; add(c); }
  { BwdCase c{lq2, lk2, 2, 2, 64, 32}; c.right = 5; add(c); }
  { BwdCase c{lq, lk, 4, 1, 32, 32}; c.left = 3; c.right = 0; add(c); }
  { BwdCase c{lq2, lk2, 2, 1, 80, 80}; c.causal = true; c.left = 40; add(c); }
  // Softcap (strong enough to bend the scores) and a custom scale.
  { BwdCase c{lq, lk, 4, 2, 64, 64}; c.softcap = 1.5f; c.scale = 0.3f; add(c); }
  { BwdCase c{lq2, lk2, 2, 2, 32, 32}; c.softcap = 5.f; c.causal = true; add(c); }
  // One long sequence alone (chunked key blocks with partial dQ), MQA, and non-contiguous strides.
  { BwdCase c{{300}, {300}, 4, 1, 64, 64}; c.causal = true; add(c); }
  { BwdCase c{{250}, {333}, 2, 2, 32, 32}; add(c); }
  { BwdCase c{{90, 0, 130}, {111, 4, 130}, 4, 2, 32, 64}; c.padded = true; c.left = 50; add(c); }
  return cases;
}

TEST(AttentionBwd, Float32) { check_all<float>(grid()); }
TEST(AttentionBwd, Float64) { check_all<double>(grid()); }

// 16-bit types on a subset (the grid's features, shorter lengths).
std::vector<BwdCase> grid16() {
  std::vector<BwdCase> cases;
  unsigned seed = 500;
  auto add = [&](BwdCase c) {
    c.seed = seed++;
    cases.push_back(c);
  };
  const std::vector<int64_t> lq{0, 1, 37, 150, 5}, lk{3, 1, 37, 150, 0};
  add({lq, lk, 4, 2, 64, 32});
  { BwdCase c{{97, 1, 130}, {31, 200, 130}, 4, 1, 128, 128}; c.causal = true; add(c); }
  { BwdCase c{lq, lk, 2, 2, 80, 80}; c.left = 10; c.right = 3; add(c); }
  { BwdCase c{lq, lk, 2, 1, 32, 32}; c.softcap = 2.f; c.scale = 0.25f; add(c); }
  { BwdCase c{{200}, {200}, 2, 1, 64, 64}; c.causal = true; c.padded = true; add(c); }
  return cases;
}

TEST(AttentionBwd, Float16) { check_all<scree::float16>(grid16()); }
TEST(AttentionBwd, BFloat16) { check_all<scree::bfloat16>(grid16()); }

// Rows with no visible key get dq = 0 exactly and keys nobody sees dk = dv = 0 exactly: a
// window (left 2, right 0) over sequences where Lq > Lk leaves early rows keyless, and a causal
// window over Lq < Lk leaves early keys unseen.
TEST(AttentionBwd, EmptyRowsAndUnseenKeys) {
  BwdCase c{{40, 10}, {8, 60}, 2, 1, 32, 32};
  c.causal = true;
  c.left = 2;
  Problem<float> pr(c);
  pr.run();
  const Ref ref = naive(c, pr.q, pr.k, pr.v, pr.dout);
  int64_t keyless = 0, unseen = 0;
  for (char x : ref.row_has_key) keyless += !x;
  for (char x : ref.key_seen) unseen += !x;
  ASSERT_GT(keyless, 0);
  ASSERT_GT(unseen, 0);
  for (int64_t t = 0; t < pr.Tq; ++t)
    for (int64_t h = 0; h < c.hq; ++h) {
      if (ref.row_has_key[t * c.hq + h]) continue;
      EXPECT_TRUE(std::isinf(pr.lse[h * pr.Tq + t]));
      for (int64_t e = 0; e < c.d; ++e) EXPECT_EQ(pr.dq.at(t, h, e), 0.f);
    }
  for (int64_t t = 0; t < pr.Tk; ++t)
    for (int64_t h = 0; h < c.hk; ++h) {
      if (ref.key_seen[t * c.hk + h]) continue;
      for (int64_t e = 0; e < c.d; ++e) EXPECT_EQ(pr.dk.at(t, h, e), 0.f);
      for (int64_t e = 0; e < c.dv; ++e) EXPECT_EQ(pr.dv.at(t, h, e), 0.f);
    }
  compare("dq", pr.dq, ref.dq, &ref.row_has_key, 1e-4, c);
  compare("dk", pr.dk, ref.dk, &ref.key_seen, 1e-4, c);
  compare("dv", pr.dv, ref.dv, &ref.key_seen, 1e-4, c);
}

// Large scores (tools/fuzz, issue 14): inputs whose scores are exactly representable, large and
// O(1) apart: q = (1, a), k = (big, b) with a, b multiples of 1/8 in [-1, 1] less 0 and D = 16 (scale
// 1/4), so scale q.k = big / 4 + a.b / 4 exactly in any summation order and the softmax is spread.
// P = exp(s - lse) with lse rounded to its type scales a whole row by exp(that rounding): for a
// float32 lse 2.4e-4 at scores of 4096 (dv ~1000x its float32 error), for a float64 lse 1.2e-4 at
// 1e12; the backward recomputes the statistics of such rows instead (bwd.cpp, softmax_stats).
template <class T>
void exact_scores(Problem<T>& pr, double big, unsigned seed) {
  std::mt19937 gen(seed);
  std::uniform_int_distribution<int> dist(-8, 8);
  auto fill = [&](Strided<T>& s, std::vector<double>& dense, double first) {
    for (int64_t t = 0; t < s.rows; ++t)
      for (int64_t h = 0; h < s.heads; ++h)
        for (int64_t e = 0; e < s.dim; ++e) {
          const int n = dist(gen);
          const double x = e == 0 && first != 0.0 ? first : n == 0 ? 0.5 : n / 8.0;
          s.at(t, h, e) = from_double<T>(x);
          dense[(t * s.heads + h) * s.dim + e] = x;
        }
  };
  fill(pr.sq, pr.q, 1.0);
  fill(pr.sk, pr.k, big);
  fill(pr.sv, pr.v, 0.0);
  fill(pr.sdout, pr.dout, 0.0);
}

// dq against the reference: component 0 (where every key holds `big`) is dq_i0 = scale big sum_j
// dS_ij, a sum that cancels to ~0 from terms of size |dS| big, which rounding leaves at ~eps big
// |dS| in any precision (sum_j |dS_ij| <= 2 |dout_i| max|v_j| <= 32 here: 16 entries of at most 1;
// scale 1/4; a factor 8 of margin): absolute bound. The other components: relative `tol`.
template <class T>
void compare_dq(Strided<T>& got, const Ref& ref, double tol, double eps, double big, const BwdCase& c) {
  double scale = 0, err0 = 0, err = 0;
  for (double x : ref.dq) scale = std::max(scale, std::abs(x));
  for (int64_t t = 0; t < got.rows; ++t)
    for (int64_t h = 0; h < got.heads; ++h)
      for (int64_t e = 0; e < got.dim; ++e) {
        const double g = to_double(got.at(t, h, e)), r = ref.dq[(t * got.heads + h) * got.dim + e];
        const double d = std::isfinite(g) ? std::abs(g - r) : INFINITY;
        (e == 0 ? err0 : err) = std::max(e == 0 ? err0 : err, d);
      }
  const double bound0 = 8 * eps * 0.25 * 32 * big;
  if (std::getenv("SCREE_TEST_VERBOSE"))
    std::printf("  dq   rel error %.3g (tol %.3g), component 0: %.3g (bound %.3g)\n", err / scale, tol, err0, bound0);
  EXPECT_LE(err / scale, tol) << "dq (causal " << c.causal << " window " << c.left << "," << c.right << ")";
  EXPECT_LE(err0, bound0) << "dq component 0";
}

std::vector<BwdCase> large_score_cases() {
  const std::vector<int64_t> lq{0, 1, 37, 130, 5}, lk{3, 1, 37, 150, 0};
  std::vector<BwdCase> cases;
  cases.push_back({lq, lk, 4, 2, 16, 16});
  { BwdCase c{lq, lk, 4, 2, 16, 16}; c.causal = true; cases.push_back(c); }
  { BwdCase c{{41, 5}, {17, 1}, 2, 1, 16, 16}; c.left = 5; c.right = 2; cases.push_back(c); }
  { BwdCase c{{200}, {200}, 2, 1, 16, 16}; c.causal = true; c.left = 150; cases.push_back(c); }  // chunked
  return cases;
}

TEST(AttentionBwd, Float64LargeScoresWithFloat64Lse) {
  const double big = std::ldexp(1.0, 42);  // scores ~1.1e12
  unsigned seed = 700;
  for (const BwdCase& c : large_score_cases()) {
    SCOPED_TRACE(::testing::Message() << "case seed " << seed);
    Problem<double> pr(c);
    exact_scores(pr, big, seed++);
    std::vector<double> lse64(static_cast<size_t>(std::max<int64_t>(c.hq * pr.Tq, 1)), 12345.0);
    VarlenBackwardParams p = pr.params();
    p.lse = nullptr, p.lse_in = nullptr;  // the float64 lse alone, both ways
    p.lse64 = lse64.data(), p.lse_in64 = lse64.data();
    scree::attention::varlen_fwd_cpu(p);
    scree::attention::varlen_bwd_cpu(p);
    const Ref ref = naive(c, pr.q, pr.k, pr.v, pr.dout);
    for (int64_t i = 0; i < c.hq * pr.Tq; ++i) {
      const double want = ref.lse[size_t(i)], got = lse64[size_t(i)];
      if (std::isinf(want)) {
        EXPECT_EQ(got, want) << "lse " << i;
      } else {
        EXPECT_LE(std::abs(got - want), 4 * std::numeric_limits<double>::epsilon() * std::abs(want)) << "lse " << i;
      }
    }
    compare("out", pr.out, ref.out, nullptr, 1e-13, c);
    compare("dk", pr.dk, ref.dk, &ref.key_seen, 1e-13, c);
    compare("dv", pr.dv, ref.dv, &ref.key_seen, 1e-13, c);
    compare_dq(pr.dq, ref, 1e-13, std::numeric_limits<double>::epsilon(), big, c);
    // The float64 backward does not read lse: a float32 one gives the same bits.
    const std::vector<double> dq(pr.dq.data), dk(pr.dk.data), dv(pr.dv.data);
    p.lse64 = nullptr, p.lse_in64 = nullptr;
    p.lse = pr.lse.data(), p.lse_in = pr.lse.data();
    scree::attention::varlen_fwd_cpu(p);
    scree::attention::varlen_bwd_cpu(p);
    EXPECT_EQ(std::memcmp(dq.data(), pr.dq.data.data(), dq.size() * sizeof(double)), 0);
    EXPECT_EQ(std::memcmp(dk.data(), pr.dk.data.data(), dk.size() * sizeof(double)), 0);
    EXPECT_EQ(std::memcmp(dv.data(), pr.dv.data.data(), dv.size() * sizeof(double)), 0);
  }
}

TEST(AttentionBwd, Float32LargeScores) {
  const double big = std::ldexp(1.0, 14);  // scores ~4096, exact in float32
  unsigned seed = 800;
  for (const BwdCase& c : large_score_cases()) {
    SCOPED_TRACE(::testing::Message() << "case seed " << seed);
    Problem<float> pr(c);
    exact_scores(pr, big, seed++);
    pr.run();
    const Ref ref = naive(c, pr.q, pr.k, pr.v, pr.dout);
    compare("out", pr.out, ref.out, nullptr, 2e-6, c);  // seen: 1e-7 (it was 1.3e-4 for dv)
    compare("dk", pr.dk, ref.dk, &ref.key_seen, 2e-6, c);
    compare("dv", pr.dv, ref.dv, &ref.key_seen, 2e-6, c);
    compare_dq(pr.dq, ref, 2e-6, std::numeric_limits<float>::epsilon(), big, c);
  }
}

TEST(AttentionBwd, Float64LseOnlyForFloat64) {
  BwdCase c{{3, 4}, {5, 2}, 2, 1, 16, 16};
  Problem<float> pr(c);
  std::vector<double> lse64(static_cast<size_t>(c.hq * pr.Tq));
  VarlenBackwardParams p = pr.params();
  p.lse = nullptr, p.lse64 = lse64.data();
  EXPECT_THROW(scree::attention::varlen_fwd_cpu(p), scree::Error);
  p = pr.params();
  scree::attention::varlen_fwd_cpu(p);
  p.lse_in = nullptr, p.lse_in64 = lse64.data();
  EXPECT_THROW(scree::attention::varlen_bwd_cpu(p), scree::Error);
  p.lse_in64 = nullptr;
  EXPECT_THROW(scree::attention::varlen_bwd_cpu(p), scree::Error);  // no lse at all
}

// Window sides longer than every sequence mean "unbounded", however large (fuzz_attention, issue
// 14: the int64 position arithmetic of visible_keys overflowed for sides near INT64_MAX).
TEST(AttentionBwd, HugeWindowSides) {
  constexpr int64_t kMax = std::numeric_limits<int64_t>::max();
  for (int64_t side : {kMax, kMax - 1, int64_t(1) << 62}) {
    SCOPED_TRACE(::testing::Message() << "side " << side);
    BwdCase both{{7, 3, 30}, {2, 9, 30}, 2, 1, 16, 16};
    both.left = both.right = side;
    check<float>(both);
    check<double>(both);
    BwdCase causal = both;
    causal.causal = true, causal.right = -1;
    check<float>(causal);
    BwdCase right = both;
    right.left = -1, right.hq = 4, right.hk = 2;
    check<double>(right);
  }
}

// With no query rows the backward still packs every key block and writes dk = dv = 0, so k, v, dk
// and dv are required whenever there are keys (fuzz_attention: with total_q = 0 the validation let
// a null dk through, which the kernel wrote, and a null k, which it read).
TEST(AttentionBwd, NoQueryRowsStillNeedKeyPointers) {
  BwdCase c{{0, 0}, {5, 3}, 2, 1, 16, 8};
  Problem<float> pr(c);
  VarlenBackwardParams p = pr.params();
  scree::attention::varlen_fwd_cpu(p);
  scree::attention::varlen_bwd_cpu(p);
  for (float x : pr.dk.data) EXPECT_EQ(x, 0.f);
  for (float x : pr.dv.data) EXPECT_EQ(x, 0.f);
  for (int which = 0; which < 4; ++which) {
    VarlenBackwardParams bad = pr.params();
    switch (which) {
      case 0: bad.k = nullptr; break;
      case 1: bad.v = nullptr; break;
      case 2: bad.dk = nullptr; break;
      default: bad.dv = nullptr; break;
    }
    EXPECT_THROW(scree::attention::varlen_bwd_cpu(bad), scree::Error) << "pointer " << which;
  }
  // Without keys none of them is needed.
  BwdCase no_keys{{0, 0}, {0, 0}, 2, 1, 16, 8};
  Problem<float> empty(no_keys);
  VarlenBackwardParams q = empty.params();
  q.k = q.v = nullptr, q.dk = q.dv = nullptr;
  EXPECT_NO_THROW(scree::attention::varlen_bwd_cpu(q));
}

// Same bits on every run and for every thread count, for a batch of many sequences (one item per
// (sequence, kv head)) and for one long sequence with one kv head (chunked, partial dQ reduced).
template <class T>
void check_deterministic(const BwdCase& c) {
  Problem<T> pr(c);
  VarlenBackwardParams p = pr.params();
  scree::attention::varlen_fwd_cpu(p);
  auto grads = [&] {
    scree::attention::varlen_bwd_cpu(p);
    std::vector<T> all(pr.dq.data);
    all.insert(all.end(), pr.dk.data.begin(), pr.dk.data.end());
    all.insert(all.end(), pr.dv.data.begin(), pr.dv.data.end());
    return all;
  };
  const char* old = std::getenv("SCREE_NUM_THREADS");
  const std::string saved = old ? old : "";
  unsetenv("SCREE_NUM_THREADS");
  const auto a = grads();
  const auto b = grads();
  setenv("SCREE_NUM_THREADS", "1", 1);
  const auto one = grads();
  setenv("SCREE_NUM_THREADS", "3", 1);
  const auto three = grads();
  if (old)
    setenv("SCREE_NUM_THREADS", saved.c_str(), 1);
  else
    unsetenv("SCREE_NUM_THREADS");
  ASSERT_EQ(a.size(), b.size());
  EXPECT_EQ(std::memcmp(a.data(), b.data(), a.size() * sizeof(T)), 0) << "two runs differ";
  EXPECT_EQ(std::memcmp(a.data(), one.data(), a.size() * sizeof(T)), 0) << "1 thread differs from default";
  EXPECT_EQ(std::memcmp(a.data(), three.data(), a.size() * sizeof(T)), 0) << "3 threads differ from default";
}

TEST(AttentionBwd, Deterministic) {
  BwdCase many{{70, 130, 1, 90, 256, 33, 0, 140}, {70, 150, 1, 60, 256, 40, 7, 140}, 4, 2, 64, 64};
  many.causal = true;
  check_deterministic<float>(many);
  BwdCase longer{{400}, {400}, 4, 1, 64, 64};  // single (sequence, kv head): chunked
  check_deterministic<float>(longer);
  longer.causal = true;
  check_deterministic<scree::bfloat16>(longer);
}

// Timing printout (no assertion): one 4096-token sequence, 8 heads, D = 128, fp32, forward and
// backward, in useful GFLOP/s (forward 2 (D + Dv) per visible (query, key) pair and head; backward
// 2 (3D + 2Dv), i.e. 2.5x). SCREE_BENCH_CAUSAL=1 adds the causal case.
// Timing printout for kernel work (no assertion on time); benchmarks/ holds the real comparison.
TEST(AttentionBwdPerf, Report) {
  if (std::getenv("SCREE_CPP_PERF") == nullptr) GTEST_SKIP() << "timing report: set SCREE_CPP_PERF=1 to run it";
  auto bench = [](bool causal) {
    BwdCase c{{4096}, {4096}, 8, 8, 128, 128};
    c.causal = causal;
    Problem<float> pr(c);
    VarlenBackwardParams p = pr.params();
    double pairs = 0;
    for (int64_t i = 0; i < 4096; ++i) pairs += causal ? double(i + 1) : 4096.0;
    pairs *= double(c.hq);
    const double fwd_flops = pairs * 2 * (c.d + c.dv), bwd_flops = pairs * 2 * (3 * c.d + 2 * c.dv);
    auto now = [] { return std::chrono::steady_clock::now(); };
    const auto t0 = now();
    scree::attention::varlen_fwd_cpu(p);
    const auto t1 = now();
    scree::attention::varlen_bwd_cpu(p);
    const auto t2 = now();
    const double f = std::chrono::duration<double>(t1 - t0).count(), b = std::chrono::duration<double>(t2 - t1).count();
    std::printf("[perf] %s attention 4096 x 8 heads x D128 fp32 (%s, %d threads): fwd %.3f s %.1f GFLOP/s, "
                "bwd %.3f s %.1f GFLOP/s (bwd/fwd time %.2f)\n",
                scree::attention::cpu_isa(), causal ? "causal" : "full", scree::num_threads(), f, fwd_flops / f * 1e-9,
                b, bwd_flops / b * 1e-9, b / f);
  };
  bench(false);
  if (const char* e = std::getenv("SCREE_BENCH_CAUSAL"); e && std::string(e) == "1") bench(true);
}

}  // namespace
