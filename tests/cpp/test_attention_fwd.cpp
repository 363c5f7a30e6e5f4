// CPU attention forward against a naive fp64 loop implementation written from the definition
// (DESIGN §3): lengths 0, 1, odd and longer than a block, q/k lengths differing, GQA/MQA, D != Dv,
// causal (bottom-right), windows, softcap, scale; float32/float64/float16/bfloat16.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <vector>

#include "scree/attention/cpu.h"
#include "scree/dtypes.h"
#include "scree/error.h"

namespace {

using scree::attention::VarlenParams;

struct Case {
  std::vector<int64_t> lq, lk;
  int64_t hq, hk, d, dv;
  bool causal = false;
  int64_t left = -1, right = -1;
  float softcap = 0.f;
  float scale = 0.f;  // 0: default 1/sqrt(d)
};

std::vector<int64_t> offsets_of(const std::vector<int64_t>& lengths) {
  std::vector<int64_t> off{0};
  for (int64_t l : lengths) off.push_back(off.back() + l);
  return off;
}

// Naive reference in double: returns out (Tq, Hq, Dv) and lse (Hq, Tq).
void naive(const Case& c, const std::vector<double>& q, const std::vector<double>& k, const std::vector<double>& v,
           std::vector<double>& out, std::vector<double>& lse) {
  const auto oq = offsets_of(c.lq), ok = offsets_of(c.lk);
  const int64_t Tq = oq.back();
  const double scale = c.scale > 0 ? c.scale : 1.0 / std::sqrt(double(c.d));
  out.assign(Tq * c.hq * c.dv, 0.0);
  lse.assign(c.hq * Tq, -INFINITY);
  for (size_t b = 0; b < c.lq.size(); ++b) {
    const int64_t Lq = c.lq[b], Lk = c.lk[b];
    for (int64_t h = 0; h < c.hq; ++h) {
      const int64_t kh = h / (c.hq / c.hk);
      for (int64_t i = 0; i < Lq; ++i) {
        std::vector<double> s(Lk);
        std::vector<bool> vis(Lk);
        double m = -INFINITY;
        for (int64_t j = 0; j < Lk; ++j) {
          const int64_t shift = j - i - (Lk - Lq);  // key offset from the aligned diagonal
          bool ok_j = true;
          if (c.causal && shift > 0) ok_j = false;
          if (c.right >= 0 && shift > c.right) ok_j = false;
          if (c.left >= 0 && shift < -c.left) ok_j = false;
          vis[j] = ok_j;
          double dot = 0;
          for (int64_t d = 0; d < c.d; ++d)
            dot += q[((oq[b] + i) * c.hq + h) * c.d + d] * k[((ok[b] + j) * c.hk + kh) * c.d + d];
          dot *= scale;
          if (c.softcap > 0) dot = c.softcap * std::tanh(dot / c.softcap);
          s[j] = dot;
          if (ok_j) m = std::max(m, dot);
        }
        if (m == -INFINITY) continue;
        double sum = 0;
        for (int64_t j = 0; j < Lk; ++j)
          if (vis[j]) sum += std::exp(s[j] - m);
        for (int64_t j = 0; j < Lk; ++j) {
          if (!vis[j]) continue;
          const double p = std::exp(s[j] - m) / sum;
          for (int64_t e = 0; e < c.dv; ++e)
            out[((oq[b] + i) * c.hq + h) * c.dv + e] += p * v[((ok[b] + j) * c.hk + kh) * c.dv + e];
        }
        lse[h * oq.back() + oq[b] + i] = m + std::log(sum);
      }
    }
  }
}

template <class T>
T from_double(double x) {
  if constexpr (std::is_same_v<T, scree::float16>) return scree::to_float16(float(x));
  else if constexpr (std::is_same_v<T, scree::bfloat16>) return scree::to_bfloat16(float(x));
  else return T(x);
}

template <class T>
double to_double(T x) {
  if constexpr (std::is_same_v<T, scree::float16> || std::is_same_v<T, scree::bfloat16>) return scree::to_float(x);
  else return double(x);
}

template <class T>
scree::DType dtype_of() {
  if constexpr (std::is_same_v<T, float>) return scree::DType::Float32;
  else if constexpr (std::is_same_v<T, double>) return scree::DType::Float64;
  else if constexpr (std::is_same_v<T, scree::float16>) return scree::DType::Float16;
  else return scree::DType::BFloat16;
}

// Random values in storage type T; the double copy holds exactly what T stores.
template <class T>
void fill(std::vector<T>& x, std::vector<double>& xd, size_t n, std::mt19937& gen) {
  std::normal_distribution<double> dist(0.0, 1.0);
  x.resize(n);
  xd.resize(n);
  for (size_t i = 0; i < n; ++i) {
    x[i] = from_double<T>(dist(gen) + 0.05);
    xd[i] = to_double(x[i]);
  }
}

template <class T>
void run_case(const Case& c, double tol) {
  std::mt19937 gen(1234u + static_cast<unsigned>(c.lq.size() * 7 + c.d));
  const auto oq = offsets_of(c.lq), ok = offsets_of(c.lk);
  const int64_t Tq = oq.back(), Tk = ok.back();
  std::vector<T> q, k, v;
  std::vector<double> qd, kd, vd;
  fill(q, qd, Tq * c.hq * c.d, gen);
  fill(k, kd, Tk * c.hk * c.d, gen);
  fill(v, vd, Tk * c.hk * c.dv, gen);
  std::vector<T> out(Tq * c.hq * c.dv, from_double<T>(777.0));  // poisoned
  std::vector<float> lse(c.hq * Tq, 777.f);

  VarlenParams p;
  p.dtype = dtype_of<T>();
  p.q = q.data(), p.k = k.data(), p.v = v.data(), p.out = out.data(), p.lse = lse.data();
  p.q_row_stride = c.hq * c.d, p.q_head_stride = c.d;
  p.k_row_stride = c.hk * c.d, p.k_head_stride = c.d;
  p.v_row_stride = c.hk * c.dv, p.v_head_stride = c.dv;
  p.out_row_stride = c.hq * c.dv, p.out_head_stride = c.dv;
  p.cu_seqlens_q = {oq.data(), true};
  p.cu_seqlens_k = {ok.data(), true};
  p.num_sequences = static_cast<int64_t>(c.lq.size());
  p.total_q = Tq, p.total_k = Tk;
  p.heads_q = c.hq, p.heads_k = c.hk, p.head_dim = c.d, p.head_dim_v = c.dv;
  p.scale = c.scale > 0 ? double(c.scale) : 1.0 / std::sqrt(double(c.d));
  p.softcap = c.softcap;
  p.causal = c.causal;
  p.window_left = c.left, p.window_right = c.right;
  scree::attention::varlen_fwd_cpu(p);

  std::vector<double> ref_out, ref_lse;
  naive(c, qd, kd, vd, ref_out, ref_lse);
  for (size_t i = 0; i < out.size(); ++i)
    ASSERT_NEAR(to_double(out[i]), ref_out[i], tol * (1 + std::fabs(ref_out[i]))) << "out element " << i;
  for (size_t i = 0; i < lse.size(); ++i) {
    if (std::isinf(ref_lse[i])) {
      ASSERT_TRUE(std::isinf(lse[i]) && lse[i] < 0) << "lse " << i << " should be -inf, got " << lse[i];
    } else {
      ASSERT_NEAR(lse[i], ref_lse[i], 1e-4 * (1 + std::fabs(ref_lse[i]))) << "lse element " << i;
    }
  }
}

std::vector<Case> cases() {
  return {
      {{5, 3, 7}, {5, 3, 7}, 2, 2, 32, 32},
      {{0, 1, 3, 0, 2}, {0, 1, 3, 4, 0}, 2, 1, 64, 64, true},
      {{200, 17}, {200, 17}, 2, 2, 64, 64, true},
      {{130, 9, 1}, {70, 300, 5}, 4, 2, 80, 80, true},
      {{9, 40, 1}, {150, 3, 2}, 4, 4, 128, 128},
      {{33, 6}, {20, 50}, 8, 2, 64, 32, false, 5, 3},
      {{70, 25}, {70, 40}, 4, 1, 32, 48, true, 16, -1},
      {{60}, {90}, 2, 2, 64, 64, false, -1, 7, 3.0f, 0.3f},
      {{129, 1}, {129, 1}, 2, 2, 256, 256, true, -1, -1, 30.0f},
  };
}

TEST(AttentionFwd, Float32) {
  for (const Case& c : cases()) run_case<float>(c, 2e-5);
}
TEST(AttentionFwd, Float64) {
  for (const Case& c : cases()) run_case<double>(c, 1e-11);
}
TEST(AttentionFwd, BFloat16) {
  for (const Case& c : cases()) run_case<scree::bfloat16>(c, 2e-2);
}
TEST(AttentionFwd, Float16) {
  for (const Case& c : cases()) run_case<scree::float16>(c, 3e-3);
}

// Window sides longer than every sequence mean "unbounded", however large (fuzz_attention, issue
// 14: visible_keys' diag + right + 1 overflowed int64 for sides near INT64_MAX, and a right side
// of INT64_MAX - 1 hid every key; Lq > Lk makes diag - left overflow too).
TEST(AttentionFwd, HugeWindowSides) {
  constexpr int64_t kMax = std::numeric_limits<int64_t>::max();
  for (int64_t side : {kMax, kMax - 1, int64_t(1) << 62, int64_t(81)}) {
    SCOPED_TRACE(::testing::Message() << "side " << side);
    run_case<float>({{7, 3, 30}, {2, 9, 30}, 2, 1, 16, 16, false, side, side}, 2e-5);
    run_case<double>({{7, 3, 30}, {2, 9, 30}, 2, 1, 16, 16, true, side, -1}, 1e-11);
    run_case<float>({{7, 3, 30}, {2, 9, 30}, 4, 2, 16, 8, false, -1, side}, 2e-5);
  }
}

// No keys at all: k and v may be null (validate allows it), every row outputs 0 with lse -inf, and
// no pointer arithmetic touches the null k / v (fuzz_attention: UBSan flagged k + head offset).
TEST(AttentionFwd, NoKeysWithNullKeyPointers) {
  std::vector<int64_t> oq{0, 3, 5}, ok{0, 0, 0};
  std::vector<float> q(5 * 4 * 8, 0.5f), out(5 * 4 * 8, 777.f), lse(4 * 5, 777.f);
  VarlenParams p;
  p.dtype = scree::DType::Float32;
  p.q = q.data(), p.k = nullptr, p.v = nullptr, p.out = out.data(), p.lse = lse.data();
  p.q_row_stride = 32, p.q_head_stride = 8, p.k_row_stride = 16, p.k_head_stride = 8;
  p.v_row_stride = 16, p.v_head_stride = 8, p.out_row_stride = 32, p.out_head_stride = 8;
  p.cu_seqlens_q = {oq.data(), true};
  p.cu_seqlens_k = {ok.data(), true};
  p.num_sequences = 2, p.total_q = 5, p.total_k = 0, p.max_seqlen_q = 3;
  p.heads_q = 4, p.heads_k = 2, p.head_dim = 8, p.head_dim_v = 8;
  scree::attention::varlen_fwd_cpu(p);
  for (float x : out) EXPECT_EQ(x, 0.f);
  for (float x : lse) EXPECT_TRUE(std::isinf(x) && x < 0);
}

TEST(AttentionFwd, RejectsBadHeadsAndOffsets) {
  Case c{{3}, {3}, 3, 2, 16, 16};
  EXPECT_THROW(run_case<float>(c, 1e-5), scree::Error);
  VarlenParams p;
  std::vector<int64_t> bad{0, 5, 3};
  p.cu_seqlens_q = {bad.data(), true};
  p.cu_seqlens_k = {bad.data(), true};
  p.num_sequences = 2, p.total_q = 3, p.total_k = 3, p.heads_q = 1, p.heads_k = 1, p.head_dim = 8, p.head_dim_v = 8;
  try {
    scree::attention::varlen_fwd_cpu(p);
    FAIL() << "bad offsets accepted";
  } catch (const scree::Error& e) {
    EXPECT_EQ(e.kind(), scree::ErrorKind::InvalidOffsets);
    EXPECT_NE(std::string(e.what()).find("cu_seqlens_q"), std::string::npos);
  }
}

}  // namespace
