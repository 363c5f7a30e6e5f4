// CUDA attention (forward; backward in both modes) against the CPU kernels run in float64 on the
// same bf16/fp16-rounded inputs, with FlashAttention's tolerance rule: the CUDA error against the
// fp64 result may be at most 2x (3x for gradients) the error of the CPU kernel computing in the
// input dtype, plus a small absolute term. Outputs (and the backward's workspace) are poisoned
// (NaN) before each run, so an unwritten element fails. Forward and backward run on both paths of
// an sm_90 card (Hopper and portable); deterministic runs are compared bit for bit.
// Cases: lengths 0, 1, odd, longer than a tile, q/k lengths differing,
// causal (bottom-right), windows, softcap, GQA/MQA, many sequences. Skips without a GPU.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "scree/attention/cpu.h"
#include "scree/attention/cuda.h"
#include "scree/dtypes.h"
#include "scree/error.h"

namespace {

using scree::DType;
using scree::attention::VarlenBackwardParams;
using scree::attention::VarlenParams;

struct Case {
  std::vector<int64_t> lq, lk;
  int64_t hq, hk, d;
  bool causal = false;
  int64_t left = -1, right = -1;
  double softcap = 0.0;
};

bool have_gpu() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();
    return false;
  }
  return n > 0;
}

#define CUDA_OK(x) ASSERT_EQ((x), cudaSuccess) << #x

template <class T>
T from_double(double x);
template <>
__nv_bfloat16 from_double<__nv_bfloat16>(double x) { return __float2bfloat16(float(x)); }
template <>
__half from_double<__half>(double x) { return __float2half(float(x)); }
template <class T>
double to_double(T x);
template <>
double to_double<__nv_bfloat16>(__nv_bfloat16 x) { return __bfloat162float(x); }
template <>
double to_double<__half>(__half x) { return __half2float(x); }

std::vector<int64_t> offsets_of(const std::vector<int64_t>& lengths) {
  std::vector<int64_t> off{0};
  for (int64_t l : lengths) off.push_back(off.back() + l);
  return off;
}

template <class T>
struct DeviceBuf {
  T* ptr = nullptr;
  size_t n = 0;
  explicit DeviceBuf(size_t count) : n(count) { cudaMalloc(&ptr, std::max<size_t>(count, 1) * sizeof(T)); }
  ~DeviceBuf() { cudaFree(ptr); }
  void upload(const std::vector<T>& h) { cudaMemcpy(ptr, h.data(), n * sizeof(T), cudaMemcpyHostToDevice); }
  std::vector<T> download() const {
    std::vector<T> h(n);
    cudaMemcpy(h.data(), ptr, n * sizeof(T), cudaMemcpyDeviceToHost);
    return h;
  }
  void poison() { cudaMemset(ptr, 0xff, std::max<size_t>(n, 1) * sizeof(T)); }  // NaN in every float type
};

void fill_params(VarlenParams& p, const Case& c, int64_t Tq, int64_t Tk) {
  p.q_row_stride = c.hq * c.d, p.q_head_stride = c.d;
  p.k_row_stride = c.hk * c.d, p.k_head_stride = c.d;
  p.v_row_stride = c.hk * c.d, p.v_head_stride = c.d;
  p.out_row_stride = c.hq * c.d, p.out_head_stride = c.d;
  p.num_sequences = int64_t(c.lq.size());
  p.total_q = Tq, p.total_k = Tk;
  p.max_seqlen_q = 0, p.max_seqlen_k = 0;
  for (auto l : c.lq) p.max_seqlen_q = std::max(p.max_seqlen_q, l);
  for (auto l : c.lk) p.max_seqlen_k = std::max(p.max_seqlen_k, l);
  p.heads_q = c.hq, p.heads_k = c.hk, p.head_dim = c.d, p.head_dim_v = c.d;
  p.scale = 1.0 / std::sqrt(double(c.d));
  p.softcap = c.softcap, p.causal = c.causal, p.window_left = c.left, p.window_right = c.right;
}

void fill_backward_strides(VarlenBackwardParams& p, const Case& c) {
  p.dout_row_stride = p.dq_row_stride = c.hq * c.d;
  p.dout_head_stride = p.dq_head_stride = p.dk_head_stride = p.dv_head_stride = c.d;
  p.dk_row_stride = p.dv_row_stride = c.hk * c.d;
}

// max |a - ref| over elements; NaN counts as infinite.
double max_err(const std::vector<double>& a, const std::vector<double>& ref) {
  double e = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    const double d = std::fabs(a[i] - ref[i]);
    if (std::isnan(d)) return INFINITY;
    e = std::max(e, d);
  }
  return e;
}

template <class T>
std::vector<double> widen(const std::vector<T>& x) {
  std::vector<double> y(x.size());
  for (size_t i = 0; i < x.size(); ++i) y[i] = to_double(x[i]);
  return y;
}

// CPU kernel on host arrays of element type E (double = the fp64 oracle, T = the low-precision baseline).
template <class E>
struct HostRun {
  std::vector<E> out, lse_unused, dq, dk, dv;
  std::vector<float> lse;
};

template <class E>
HostRun<E> cpu_run(const Case& c, DType dtype, const std::vector<E>& q, const std::vector<E>& k, const std::vector<E>& v,
                   const std::vector<E>& dout, const std::vector<int64_t>& oq, const std::vector<int64_t>& ok) {
  const int64_t Tq = oq.back(), Tk = ok.back();
  HostRun<E> r;
  r.out.resize(Tq * c.hq * c.d), r.lse.resize(c.hq * Tq);
  VarlenBackwardParams p;
  fill_params(p, c, Tq, Tk);
  fill_backward_strides(p, c);
  p.dtype = dtype;
  p.q = q.data(), p.k = k.data(), p.v = v.data(), p.out = r.out.data(), p.lse = r.lse.data();
  p.cu_seqlens_q = {oq.data(), true}, p.cu_seqlens_k = {ok.data(), true};
  scree::attention::varlen_fwd_cpu(p);
  r.dq.resize(q.size()), r.dk.resize(k.size()), r.dv.resize(v.size());
  p.dout = dout.data(), p.lse_in = r.lse.data(), p.lse = nullptr;
  p.dq = r.dq.data(), p.dk = r.dk.data(), p.dv = r.dv.data();
  scree::attention::varlen_bwd_cpu(p);
  return r;
}

template <class T>
void run_case(const Case& c, DType dtype, uint32_t seed) {
  const auto oq = offsets_of(c.lq), ok = offsets_of(c.lk);
  const int64_t Tq = oq.back(), Tk = ok.back();
  std::mt19937 rng(seed);
  std::normal_distribution<double> normal(0.0, 1.0);
  auto draw = [&](size_t n) {
    std::vector<T> x(n);
    for (auto& e : x) e = from_double<T>(normal(rng));
    return x;
  };
  const auto q = draw(Tq * c.hq * c.d), k = draw(Tk * c.hk * c.d), v = draw(Tk * c.hk * c.d), g = draw(Tq * c.hq * c.d);

  // Oracle: the CPU kernel in float64 on the rounded inputs; baseline: the CPU kernel in T.
  const auto ref = cpu_run<double>(c, DType::Float64, widen(q), widen(k), widen(v), widen(g), oq, ok);
  const auto low = cpu_run<T>(c, dtype, q, k, v, g, oq, ok);

  DeviceBuf<T> dq_(q.size()), dk_(k.size()), dv_(v.size()), dg(g.size()), dout(q.size()), ddq(q.size()),
      ddk(k.size()), ddv(v.size());
  DeviceBuf<float> dlse(c.hq * Tq);
  DeviceBuf<int32_t> dcq(oq.size()), dck(ok.size());
  dq_.upload(q), dk_.upload(k), dv_.upload(v), dg.upload(g);
  dcq.upload(std::vector<int32_t>(oq.begin(), oq.end())), dck.upload(std::vector<int32_t>(ok.begin(), ok.end()));
  VarlenBackwardParams p;
  fill_params(p, c, Tq, Tk);
  fill_backward_strides(p, c);
  p.dtype = dtype;
  p.q = dq_.ptr, p.k = dk_.ptr, p.v = dv_.ptr, p.out = dout.ptr, p.lse = dlse.ptr;
  p.cu_seqlens_q = {dcq.ptr, false}, p.cu_seqlens_k = {dck.ptr, false};
  // Every path this card has: the Hopper kernels where they apply, and the portable ones
  // (SCREE_CUDA_PATH=sm80); each path's backward runs on its own forward's lse.
  setenv("SCREE_CUDA_PATH", "sm90", 1);
  std::vector<std::string> paths{scree::attention::cuda_forward_path(p)};  // "sm90" where it can run
  unsetenv("SCREE_CUDA_PATH");
  if (paths[0] != "sm80") paths.push_back("sm80");
  for (const std::string& path : paths) {
    SCOPED_TRACE("path " + path);
    setenv("SCREE_CUDA_PATH", path.c_str(), 1);
    p.out = dout.ptr, p.lse = dlse.ptr, p.dout = nullptr, p.lse_in = nullptr;
    dout.poison(), dlse.poison();
    const size_t fws_bytes = scree::attention::varlen_fwd_cuda_workspace_bytes(p.total_q, p.num_sequences);
    DeviceBuf<char> fws(fws_bytes);
    fws.poison();  // the forward zeroes its tile counter itself
    scree::attention::varlen_fwd_cuda(p, fws.ptr, fws_bytes, nullptr);
    CUDA_OK(cudaDeviceSynchronize());

    const auto out = widen(dout.download());
    const auto lse = dlse.download();
    const double e_out = max_err(out, ref.out), e_low = max_err(widen(low.out), ref.out);
    EXPECT_LE(e_out, 2 * e_low + 1e-3) << "out: cuda error " << e_out << ", low-precision CPU error " << e_low;
    for (size_t i = 0; i < lse.size(); ++i) {
      const double r = ref.lse[i];
      if (std::isinf(r)) {
        ASSERT_TRUE(std::isinf(lse[i]) && lse[i] < 0) << "lse[" << i << "] = " << lse[i] << ", expected -inf";
      } else {
        ASSERT_NEAR(lse[i], r, 2e-2 + 2e-3 * std::fabs(r)) << "lse[" << i << "]";
      }
    }

    for (bool deterministic : {false, true}) {
      p.dout = dg.ptr, p.lse_in = dlse.ptr, p.lse = nullptr;
      p.dq = ddq.ptr, p.dk = ddk.ptr, p.dv = ddv.ptr;
      ddq.poison(), ddk.poison(), ddv.poison();
      const size_t ws_bytes = scree::attention::varlen_bwd_cuda_workspace_bytes(p, deterministic);
      DeviceBuf<char> ws(ws_bytes);
      ws.poison();  // the kernels must initialise what they read
      scree::attention::varlen_bwd_cuda(p, ws.ptr, ws_bytes, deterministic, nullptr);
      CUDA_OK(cudaDeviceSynchronize());
      struct {
        const char* name;
        std::vector<double> got;
        const std::vector<double>& want;
        std::vector<double> base;
      } grads[] = {{"dq", widen(ddq.download()), ref.dq, widen(low.dq)},
                   {"dk", widen(ddk.download()), ref.dk, widen(low.dk)},
                   {"dv", widen(ddv.download()), ref.dv, widen(low.dv)}};
      for (auto& gr : grads) {
        const double e = max_err(gr.got, gr.want), eb = max_err(gr.base, gr.want);
        EXPECT_LE(e, 3 * eb + 2e-3) << gr.name << (deterministic ? " (deterministic)" : "") << ": cuda error " << e
                                    << ", low-precision CPU error " << eb;
      }
      if (deterministic) {  // a second run gives the same bits
        const auto first_dq = ddq.download(), first_dk = ddk.download(), first_dv = ddv.download();
        ddq.poison(), ddk.poison(), ddv.poison(), ws.poison();
        scree::attention::varlen_bwd_cuda(p, ws.ptr, ws_bytes, true, nullptr);
        CUDA_OK(cudaDeviceSynchronize());
        const auto dq2 = ddq.download(), dk2 = ddk.download(), dv2 = ddv.download();
        EXPECT_EQ(0, std::memcmp(first_dq.data(), dq2.data(), dq2.size() * sizeof(T))) << "deterministic dq differs";
        EXPECT_EQ(0, std::memcmp(first_dk.data(), dk2.data(), dk2.size() * sizeof(T))) << "deterministic dk differs";
        EXPECT_EQ(0, std::memcmp(first_dv.data(), dv2.data(), dv2.size() * sizeof(T))) << "deterministic dv differs";
      }
    }
    unsetenv("SCREE_CUDA_PATH");
  }
}

struct Named {
  const char* name;
  Case c;
};

std::vector<Named> cases(int64_t d) {
  std::vector<Named> v = {
      {"single", {{1}, {1}, 2, 2, d}},
      {"odd", {{17, 77}, {17, 77}, 2, 1, d}},
      {"empty_and_long", {{0, 130, 1, 300}, {5, 130, 0, 300}, 4, 2, d}},
      {"q_shorter", {{3, 70, 129}, {100, 200, 129}, 2, 2, d, true}},
      {"q_longer", {{100, 65}, {7, 64}, 2, 2, d, true}},
      {"causal_gqa8", {{200, 33, 64}, {200, 33, 64}, 8, 1, d, true}},
      {"window", {{150, 90}, {150, 120}, 2, 1, d, false, 20, 5}},
      {"causal_left", {{257}, {257}, 2, 2, d, true, 31}},
      {"softcap", {{96, 40}, {96, 70}, 2, 2, d, false, -1, -1, 5.0}},
      // Several key tiles and query blocks per sequence (the Hopper backward walks both).
      {"long_causal_gqa", {{700, 513}, {700, 513}, 4, 2, d, true}},
      {"long_q_ne_k", {{1000, 3, 260}, {257, 900, 260}, 2, 1, d}},
      {"long_window_softcap", {{600}, {600}, 2, 2, d, true, 150, -1, 20.0}},
      // More than 16 key tiles (2048 keys): the deterministic Hopper backward's other tile order.
      {"over_16_key_tiles", {{2200, 300}, {2300, 150}, 2, 1, d}},
      {"over_16_key_tiles_causal", {{2100, 40}, {2180, 40}, 2, 2, d, true}},
      // At least 24 key tiles (3072 keys), causal: the 80-query Hopper backward at D = 128 (q
      // shorter than k, 3101 rows not a multiple of 80).
      {"over_24_key_tiles_causal", {{3101, 90}, {3200, 90}, 2, 1, d, true}},
      // Window sides past every distance mean unbounded (the entry points clamp them; near INT64_MAX
      // the position arithmetic overflowed and hid every key).
      {"huge_window", {{70, 33}, {90, 33}, 2, 1, d, true, INT64_MAX - 1, INT64_MAX}},
  };
  std::vector<int64_t> many_q, many_k;
  for (int i = 0; i < 300; ++i) many_q.push_back((i * 37) % 23), many_k.push_back((i * 37) % 23);
  v.push_back({"many", {many_q, many_k, 2, 2, d, true}});
  // Packed tiles of short sequences without a causal mask (lengths 0..40, GQA); q and k lengths
  // that differ, with softcap and MQA; a sliding window; and a tile of 128 sequences of length 1.
  std::vector<int64_t> short_q, short_k, diff_q, diff_k;
  for (int i = 0; i < 200; ++i) {
    short_q.push_back((i * 13) % 41), short_k.push_back((i * 13) % 41);
    diff_q.push_back((i * 7) % 30), diff_k.push_back((i * 11) % 50);
  }
  v.push_back({"many_short", {short_q, short_k, 4, 2, d}});
  v.push_back({"many_short_q_ne_k_softcap", {diff_q, diff_k, 4, 1, d, false, -1, -1, 10.0}});
  v.push_back({"many_short_window", {short_q, short_k, 2, 2, d, false, 9, 3}});
  v.push_back({"ones", {std::vector<int64_t>(128, 1), std::vector<int64_t>(128, 1), 2, 2, d}});
  return v;
}

class AttentionCuda : public ::testing::TestWithParam<int> {};

TEST_P(AttentionCuda, MatchesFp64Oracle) {
  if (!have_gpu()) GTEST_SKIP() << "no CUDA device";
  const int64_t d = GetParam();
  const auto dims = scree::attention::cuda_head_dims();
  if (std::find(dims.begin(), dims.end(), d) == dims.end()) GTEST_SKIP() << "head dim not compiled";
  // A build for one dtype (SCREE_CUDA_DTYPES, as tools/gpu_ab.sh makes them) tests that one; the
  // other would throw "not compiled" (both seeds are drawn either way, so each case's inputs stay put).
  const bool bf16 = scree::attention::cuda_compiled(DType::BFloat16, d);
  const bool fp16 = scree::attention::cuda_compiled(DType::Float16, d);
  uint32_t seed = 1;
  for (const auto& [name, c] : cases(d)) {
    SCOPED_TRACE(std::string(name) + " d=" + std::to_string(d));
    if (bf16) {
      SCOPED_TRACE("bf16");
      run_case<__nv_bfloat16>(c, DType::BFloat16, seed);
    }
    ++seed;
    if (fp16) {
      SCOPED_TRACE("fp16");
      run_case<__half>(c, DType::Float16, seed);
    }
    ++seed;
  }
}

INSTANTIATE_TEST_SUITE_P(HeadDims, AttentionCuda, ::testing::Values(32, 64, 128));

TEST(AttentionCuda, RejectsWhatItCannotServe) {
  VarlenParams p;
  p.dtype = DType::Float32, p.heads_q = 2, p.heads_k = 1, p.head_dim = p.head_dim_v = 64;
  EXPECT_THROW(scree::attention::validate_cuda(p), scree::Error);
  p.dtype = DType::BFloat16, p.head_dim = p.head_dim_v = 80;
  EXPECT_THROW(scree::attention::validate_cuda(p), scree::Error);
  p.head_dim = 64, p.head_dim_v = 64, p.heads_q = 3, p.heads_k = 2;
  EXPECT_THROW(scree::attention::validate_cuda(p), scree::Error);
}

}  // namespace
