// libFuzzer target: the CPU varlen attention entry points (include/scree/attention/cpu.h),
// varlen_fwd_cpu and varlen_bwd_cpu, in float32, float64, float16 and bfloat16, on whichever kernel
// build cpuid picks (SCREE_CPU_ISA=generic: the portable one). Decoded from the bytes: 0..4
// sequences of 0..40 query and key tokens (in one input of eight, one sequence of up to 300, longer
// than the kernels' blocks), 1..4 query heads over 1..4 kv heads (GQA), head dims 1..48 (D != Dv
// too), causal, window sides (unbounded, 0..50, or huge up to INT64_MAX), softcap, scale (1e-8 ..
// 1e5), values (multiples of 1/32, ties, constants, rare outliers; magnitudes 2^-10 .. 2^24),
// strides (contiguous, padded rows and heads, head-major), int32 or int64 offsets, float32 or
// float64 lse or none.
//
// Valid inputs: out and lse of the forward, and dq, dk, dv of the backward (run on the forward's
// out and lse, with a random dout) must match a naive reference written here in long double from
// the definition (DESIGN §3, python/scree/kernels/attention_reference.py): softmax over the
// visible keys, causal bottom-right aligned, the window relative to that diagonal, softcap as
// cap * tanh(s / cap) of the scaled scores; a row that sees no key gives out 0, lse -inf, dq 0, and
// a key no row sees dk = dv = 0. The tolerance is a rounding-error bound computed per element with
// the reference (see reference()): it follows the conditioning (large scores make the softmax
// sensitive, dq and dk cancel where dP - delta does), so huge inputs are judged as strictly as
// their precision allows, and ordinary ones (values ~1, scale 1/sqrt(D)) to ~1e-3 relative in
// fp32 and ~3e-12 in fp64 (the kernels' errors there: ~1e-6, ~3e-15). Stride gaps of the outputs
// must keep their poison (NaN), every output slot must be written, the inputs stay unchanged.
// Malformed inputs (one in eight: bad offsets, null pointers, negative sizes, heads_q not a
// multiple of heads_k, mismatched totals, bad window / softcap / dtype / lse pointers) must make
// the entry point throw scree::Error before any kernel runs. SCREE_FUZZ_VERBOSE=1 prints, per
// compared tensor, its error and tolerance relative to its magnitude.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <string>
#include <type_traits>
#include <vector>

#include "fuzz_input.h"
#include "element_types.h"
#include "scree/attention/cpu.h"
#include "scree/dtypes.h"
#include "scree/error.h"

namespace {

using scree::DType;
using scree::attention::VarlenBackwardParams;
using R = long double;  // the reference's arithmetic: its own rounding is far below fp64's

constexpr int64_t kI64Max = std::numeric_limits<int64_t>::max();

// ---- storage types --------------------------------------------------------------------------

using scree::test::dtype_of;
using scree::test::from_double;
using scree::test::to_double;

template <class T>
const char* name_of() {
  if constexpr (std::is_same_v<T, float>) return "float32";
  if constexpr (std::is_same_v<T, double>) return "float64";
  if constexpr (std::is_same_v<T, scree::float16>) return "float16";
  return "bfloat16";
}

// Machine epsilon of the storage type, of the kernels' compute type (fp32; fp64 for fp64), the
// smallest positive subnormal of the storage type (its absolute rounding floor) and its largest
// finite value (fp16 gradients may overflow to inf there: not judged).
template <class T>
double eps_store() {
  if constexpr (std::is_same_v<T, double>) return std::ldexp(1.0, -52);
  if constexpr (std::is_same_v<T, float>) return std::ldexp(1.0, -23);
  if constexpr (std::is_same_v<T, scree::float16>) return std::ldexp(1.0, -10);
  return std::ldexp(1.0, -7);
}
template <class T>
double eps_compute() {
  return std::is_same_v<T, double> ? std::ldexp(1.0, -52) : std::ldexp(1.0, -23);
}
template <class T>
double tiny_store() {
  if constexpr (std::is_same_v<T, double>) return std::numeric_limits<double>::denorm_min();
  if constexpr (std::is_same_v<T, scree::float16>) return std::ldexp(1.0, -24);
  if constexpr (std::is_same_v<T, scree::bfloat16>) return std::ldexp(1.0, -133);
  return double(std::numeric_limits<float>::denorm_min());
}
template <class T>
double max_store() {
  if constexpr (std::is_same_v<T, double>) return std::numeric_limits<double>::max();
  if constexpr (std::is_same_v<T, scree::float16>) return 65504.0;
  return double(std::numeric_limits<float>::max());
}

// The bits of a quiet NaN in T: the poison of every output slot and stride gap (an unwritten
// output then fails the comparison; a gap read into a sum turns it into NaN).
template <class T>
T poison() {
  T x;
  if constexpr (sizeof(T) == 2) {
    const uint16_t b = std::is_same_v<T, scree::float16> ? 0x7e5a : 0x7fda;
    std::memcpy(&x, &b, 2);
  } else if constexpr (sizeof(T) == 4) {
    const uint32_t b = 0x7fc5a5a5u;
    std::memcpy(&x, &b, 4);
  } else {
    const uint64_t b = 0x7ff8a5a5a5a5a5a5ull;
    std::memcpy(&x, &b, 8);
  }
  return x;
}

// ---- random values ------------------------------------------------------------------------

struct Rng {
  uint64_t s;
  uint64_t next() {  // splitmix64
    uint64_t z = (s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }
};

// How a tensor's values are drawn: multiples of 1/32 in [-4, 4] (mode 0), {-1, 0, 1} (ties, mode 1),
// one constant (mode 2), or mode 0 with rare outliers 2^12 larger (mode 3); times `mag`.
struct ValueGen {
  int mode = 0;
  double mag = 1.0;
  double draw(Rng& r) const {
    const uint64_t x = r.next();
    switch (mode) {
      case 1: return double(int(x % 3) - 1) * mag;
      case 2: return 0.5 * mag;
      case 3:
        if (x % 61 == 0) return ((x >> 8) & 1 ? 4096.0 : -4096.0) * mag;
        [[fallthrough]];
      default: return double(int(x % 257) - 128) / 32.0 * mag;
    }
  }
};

// The bytes of the input, then (past its end) a stream drawn from a hash of the whole input:
// even the short inputs libFuzzer starts with decode to full problems, while the leading bytes
// (the structure: sizes, heads, flags, malformations) stay under the mutator's direct control.
class Source {
 public:
  Source(const uint8_t* data, size_t size) : p_(data), end_(data + size) {
    uint64_t h = 0xcbf29ce484222325ull;  // FNV-1a
    for (size_t i = 0; i < size; ++i) h = (h ^ data[i]) * 0x100000001b3ull;
    tail_.s = h;
  }
  uint8_t byte() { return p_ != end_ ? *p_++ : static_cast<uint8_t>(tail_.next() >> 24); }
  bool flag() { return byte() & 1; }
  uint64_t raw(int bytes) {
    uint64_t v = 0;
    for (int i = 0; i < bytes; ++i) v |= uint64_t(byte()) << (8 * i);
    return v;
  }

 private:
  const uint8_t* p_;
  const uint8_t* end_;
  Rng tail_{0};
};

ValueGen decode_values(Source& in) {
  const uint8_t b = in.byte();
  ValueGen g;
  g.mode = (b & 7) < 5 ? 0 : (b & 7) - 4;  // 0 most of the time
  const int m = (b >> 3) & 7;
  g.mag = m < 5 ? 1.0 : m == 5 ? std::ldexp(1.0, -10) : m == 6 ? std::ldexp(1.0, 6) : std::ldexp(1.0, 12);
  return g;
}

// ---- strided (T, H, E) tensors ----------------------------------------------------------------

template <class T>
struct Tensor {
  int64_t rows = 0, heads = 0, dim = 0, head_stride = 0, row_stride = 0;
  std::vector<T> data;    // exactly the extent the strides span (one slot when empty)
  std::vector<char> used;  // slots that hold an element (the rest are gaps)
  std::vector<double> dense;  // (T, H, E) contiguous, the stored values as doubles (inputs)

  // mode 0: contiguous; 1: padded heads and rows; 2: head-major, (H, T, E) in memory.
  void shape(int64_t t, int64_t h, int64_t e, int mode, int pad) {
    rows = t, heads = h, dim = e;
    if (mode == 1) {
      head_stride = e + pad % 4;
      row_stride = h * head_stride + pad / 4;
    } else if (mode == 2) {
      row_stride = e + pad % 3;
      head_stride = std::max<int64_t>(t, 1) * row_stride;
    } else {
      head_stride = e;
      row_stride = h * e;
    }
    const int64_t extent = t == 0 ? 0 : (t - 1) * row_stride + (h - 1) * head_stride + e;
    data.assign(static_cast<size_t>(std::max<int64_t>(extent, 1)), poison<T>());
    used.assign(data.size(), 0);
    for (int64_t a = 0; a < t; ++a)
      for (int64_t b = 0; b < h; ++b)
        for (int64_t c = 0; c < e; ++c) used[size_t(index(a, b, c))] = 1;
  }
  int64_t index(int64_t t, int64_t h, int64_t e) const { return t * row_stride + h * head_stride + e; }
  double get(int64_t t, int64_t h, int64_t e) const { return to_double(data[size_t(index(t, h, e))]); }
  void fill(const ValueGen& g, Rng& r) {
    dense.assign(static_cast<size_t>(rows * heads * dim), 0.0);
    for (int64_t t = 0; t < rows; ++t)
      for (int64_t h = 0; h < heads; ++h)
        for (int64_t e = 0; e < dim; ++e) {
          // float16 holds up to 65504: its values stay within 2^14 (|out| <= max |v| then fits too)
          const double lim = std::is_same_v<T, scree::float16> ? 16384.0 : 1e30;
          const T x = from_double<T>(std::clamp(g.draw(r), -lim, lim));
          data[size_t(index(t, h, e))] = x;
          dense[size_t((t * heads + h) * dim + e)] = to_double(x);
        }
  }
  double in(int64_t t, int64_t h, int64_t e) const { return dense[size_t((t * heads + h) * dim + e)]; }
};

// ---- the problem --------------------------------------------------------------------------

struct Config {
  std::vector<int64_t> lq, lk, oq, ok;  // lengths and offsets
  int64_t n = 0, Tq = 0, Tk = 0, hq = 1, hk = 1, D = 1, Dv = 1;
  bool causal = false;
  int64_t left = -1, right = -1;
  double softcap = 0.0, scale = 1.0;
  bool idx32 = false;
  int lse_mode = 0;  // 0: lse (float32) or lse64 for float64, 1: float32 lse always, 2: none (forward only)
  bool backward = true;
  ValueGen values[4];  // q, k, v, dout

  std::string describe() const {
    std::string s = "n " + std::to_string(n) + " lq/lk";
    for (int64_t b = 0; b < n; ++b) s += " " + std::to_string(lq[b]) + "/" + std::to_string(lk[b]);
    s += ", hq " + std::to_string(hq) + " hk " + std::to_string(hk) + ", D " + std::to_string(D) + " Dv " +
         std::to_string(Dv) + ", causal " + std::to_string(causal) + " window " + std::to_string(left) + "," +
         std::to_string(right);
    char buf[192];
    std::snprintf(buf, sizeof(buf),
                  ", softcap %g scale %g, idx32 %d lse_mode %d, values (mode, magnitude) q %d %g k %d %g v %d %g "
                  "dout %d %g",
                  softcap, scale, int(idx32), lse_mode, values[0].mode, values[0].mag, values[1].mode, values[1].mag,
                  values[2].mode, values[2].mag, values[3].mode, values[3].mag);
    return s + buf;
  }
};

// Key j of a sequence is visible to query i: the definition, spelled out (not visible_keys).
bool visible(const Config& c, int64_t i, int64_t j, int64_t Lq, int64_t Lk) {
  const int64_t shift = j - i - (Lk - Lq);  // key offset from the bottom-right aligned diagonal
  if (c.causal && shift > 0) return false;
  if (c.right != -1 && shift > c.right) return false;
  if (c.left != -1 && shift < -c.left) return false;
  return true;
}

// Reference values and, per element, a bound on the error a correct kernel may make.
struct Expected {
  std::vector<double> out, out_b;  // (Tq, Hq, Dv)
  std::vector<double> lse, lse_b;  // (Hq, Tq)
  std::vector<double> dq, dq_b, dk, dk_b, dv, dv_b;
};

// Error bounds (first-order rounding analysis of the kernels, times a safety factor of 4):
//  * a score s = scale q.k (then cap tanh(s / cap)) is off by at most
//      ds = (D + 8) eps A + 16 eps cap,   A = scale max_j sum_d |q_d k_jd| over the row's visible keys
//    (the fp32/fp64 GEMM over D terms, the scaling of q, tanh's polynomial);
//  * so every P_j of the row is off by a factor exp(+-2 ds), plus (Lk + 16) eps for exp and the sums:
//    rho = expm1(2 ds) + (Lk + 16) eps, and out = sum_j P_j v_j by rho sum_j P_j |v_j - out| (the
//    normalisation cancels a common factor; past rho = 1/2, the convex hull of the visible v) plus
//    (Lk + 16) eps sum_j P_j |v_j| for the PV products; lse by ds + eps (|lse| + ...);
//  * the backward's P = exp(s - lse) (or its recomputed statistics) by rho_b = expm1(2 (ds + lse error)
//    + lse's float32 rounding below |lse| = 32) and an absolute 2^-125 (fp32 exp underflows at -87);
//    where that exponent passes 20 (huge scores in fp32: P is noise) the row's dq and its keys' dk,
//    dv are not judged (their forward still is);
//    dP = dO . v_j by (Dv + 8) eps sum |dO v_j|, delta = dO . O by the same plus |dO| |O error| (the
//    forward's actual error: the backward reads the stored out), dS = P (dP - delta) f (f = 1 - t^2
//    under softcap, t off by ds / cap) by the sum of those, dq / dk / dv by the sums of |dS| |k|,
//    |dS| |q|, |dP| |dO| errors plus their accumulation (length + 8) eps;
//  * every stored element also gets half an ulp of its type (eps_store |x|) and the smallest
//    subnormal. Elements with a zero reference and zero bound (rows that see no key, keys no row sees)
//    must therefore be exactly 0.
template <class T>
Expected reference(const Config& c, const Tensor<T>& q, const Tensor<T>& k, const Tensor<T>& v, const Tensor<T>* dout,
                   const Tensor<T>* out_got) {
  const double eps = eps_compute<T>();
  const double pfloor = std::is_same_v<T, double> ? std::ldexp(1.0, -1000) : std::ldexp(1.0, -125);
  // Products that underflow in the compute type: an absolute floor well below anything else.
  const double floor = 64 * (std::is_same_v<T, double> ? std::ldexp(1.0, -1022) : std::ldexp(1.0, -126));
  const bool capped = c.softcap > 0;
  const R scale = c.scale, cap = c.softcap;
  const int64_t G = c.hq / c.hk;
  Expected e;
  e.out.assign(size_t(c.Tq * c.hq * c.Dv), 0.0);
  e.out_b.assign(e.out.size(), 0.0);
  e.lse.assign(size_t(c.hq * c.Tq), -INFINITY);
  e.lse_b.assign(e.lse.size(), 0.0);
  const bool bwd = dout != nullptr;
  if (bwd) {
    e.dq.assign(size_t(c.Tq * c.hq * c.D), 0.0);
    e.dq_b.assign(e.dq.size(), 0.0);
    e.dk.assign(size_t(c.Tk * c.hk * c.D), 0.0);
    e.dk_b.assign(e.dk.size(), 0.0);
    e.dv.assign(size_t(c.Tk * c.hk * c.Dv), 0.0);
    e.dv_b.assign(e.dv.size(), 0.0);
  }
  std::vector<R> dq(e.dq.size()), dk(e.dk.size()), dv(e.dv.size());
  std::vector<double> dqb(e.dq.size()), dkb(e.dk.size()), dvb(e.dv.size());
  std::vector<R> raw, s, p;
  std::vector<double> A;
  std::vector<char> vis;
  std::vector<R> o(size_t(c.Dv));
  for (int64_t b = 0; b < c.n; ++b) {
    const int64_t Lq = c.lq[b], Lk = c.lk[b], q0 = c.oq[b], k0 = c.ok[b];
    raw.assign(size_t(Lk), 0), s.assign(size_t(Lk), 0), p.assign(size_t(Lk), 0);
    A.assign(size_t(Lk), 0), vis.assign(size_t(Lk), 0);
    for (int64_t h = 0; h < c.hq; ++h) {
      const int64_t kh = h / G;
      for (int64_t i = 0; i < Lq; ++i) {
        const int64_t t = q0 + i;
        R m = -INFINITY;
        double Amax = 0;
        for (int64_t j = 0; j < Lk; ++j) {
          vis[j] = visible(c, i, j, Lq, Lk);
          R dot = 0, absdot = 0;
          for (int64_t d = 0; d < c.D; ++d) {
            const R x = R(q.in(t, h, d)) * R(k.in(k0 + j, kh, d));
            dot += x;
            absdot += x < 0 ? -x : x;
          }
          raw[j] = scale * dot;
          s[j] = capped ? cap * std::tanh(raw[j] / cap) : raw[j];
          A[j] = double(scale * absdot);
          if (vis[j]) {
            m = std::max(m, s[j]);
            Amax = std::max(Amax, A[j]);
          }
        }
        if (m == -INFINITY) continue;  // no visible key: out 0, lse -inf, no gradient (bounds 0)
        const double ds = double(c.D + 8) * eps * Amax + (capped ? 16 * eps * c.softcap : 0.0);
        const double rho_x = std::expm1(std::min(2 * ds, 69.0)) + double(Lk + 16) * eps;
        R l = 0;
        for (int64_t j = 0; j < Lk; ++j)
          if (vis[j]) l += std::exp(s[j] - m);
        for (int64_t j = 0; j < Lk; ++j) p[j] = vis[j] ? std::exp(s[j] - m) / l : R(0);
        const R lse = m + std::log(l);
        const size_t li = size_t(h * c.Tq + t);
        e.lse[li] = double(lse);
        const double lse_err = ds + 2 * eps * (std::fabs(double(m)) + std::fabs(double(std::log(l))) + 1) +
                               double(Lk + 16) * eps;
        e.lse_b[li] = 4 * lse_err;
        // out and its bound
        for (int64_t d = 0; d < c.Dv; ++d) {
          R acc = 0;
          for (int64_t j = 0; j < Lk; ++j)
            if (vis[j]) acc += p[j] * R(v.in(k0 + j, kh, d));
          o[d] = acc;
          double conv = 0, hull = 0, mag = 0, vmax = 0;
          for (int64_t j = 0; j < Lk; ++j) {
            if (!vis[j]) continue;
            const double vj = v.in(k0 + j, kh, d), diff = std::fabs(vj - double(acc));
            conv += double(p[j]) * diff;
            hull = std::max(hull, diff);
            mag += double(p[j]) * std::fabs(vj);
            vmax = std::max(vmax, std::fabs(vj));
          }
          const double perturb = rho_x < 0.5 ? 2 * rho_x * conv : hull;
          const size_t oi = size_t((t * c.hq + h) * c.Dv + d);
          e.out[oi] = double(acc);
          e.out_b[oi] = 4 * (perturb + double(Lk + 16) * eps * mag + double(Lk) * pfloor * vmax) + (vmax > 0 ? floor : 0.0);
        }
        if (!bwd) continue;

        // Backward of this row.
        const double lse_round =
            std::is_same_v<T, double> ? 0.0 : std::ldexp(1.0, -23) * std::min(std::fabs(double(lse)), 32.0);
        const double margin = 2 * (ds + lse_err) + lse_round;  // |log(P kernel / P)|
        if (margin > 20) {
          // The scores are too coarse for P to mean anything (e^20 either way; it can underflow where
          // the exact P does not, or the reverse): this row's dq and the dk, dv of its keys are not
          // judged. Its forward still is (out within the hull of v, lse within ds).
          for (int64_t d = 0; d < c.D; ++d) dqb[size_t((t * c.hq + h) * c.D + d)] = INFINITY;
          for (int64_t j = 0; j < Lk; ++j) {
            if (!vis[j]) continue;
            for (int64_t d = 0; d < c.D; ++d) dkb[size_t(((k0 + j) * c.hk + kh) * c.D + d)] = INFINITY;
            for (int64_t d = 0; d < c.Dv; ++d) dvb[size_t(((k0 + j) * c.hk + kh) * c.Dv + d)] = INFINITY;
          }
          continue;
        }
        const double rho_b = std::expm1(margin) + 16 * eps;
        R delta = 0;
        double ddelta = 0;
        for (int64_t d = 0; d < c.Dv; ++d) {
          const double g = dout->in(t, h, d), og = out_got->get(t, h, d);
          delta += R(g) * o[d];
          ddelta += std::fabs(g * og) * double(c.Dv + 8) * eps + std::fabs(g) * std::fabs(og - double(o[d]));
        }
        for (int64_t j = 0; j < Lk; ++j) {
          if (!vis[j]) continue;
          const int64_t kt = k0 + j;
          R dP = 0;
          double dP_abs = 0;
          for (int64_t d = 0; d < c.Dv; ++d) {
            const R x = R(dout->in(t, h, d)) * R(v.in(kt, kh, d));
            dP += x;
            dP_abs += std::fabs(double(x));
          }
          const R gdiff = dP - delta;
          const double g_abs = std::fabs(double(gdiff));
          const double e_dP = double(c.Dv + 8) * eps * dP_abs;
          R f = 1;
          double df = 0;
          if (capped) {
            const R th = std::tanh(raw[j] / cap);
            f = 1 - th * th;
            df = std::min(2.0, 2 * std::fabs(double(th)) * (ds / c.softcap + 8 * eps) + 4 * eps);
          }
          const double P = double(p[j]), dPj = rho_b * P + pfloor, Pu = P + dPj;
          const R dS = p[j] * gdiff * f;
          const double fd = double(f);
          const double ddS = (dPj * g_abs + Pu * (e_dP + ddelta)) * (fd + df) + Pu * g_abs * (df + 4 * eps);
          const double dS_abs = std::fabs(double(dS)) + ddS;
          for (int64_t d = 0; d < c.D; ++d) {
            const double kv = k.in(kt, kh, d), qv = q.in(t, h, d);
            const size_t qi = size_t((t * c.hq + h) * c.D + d), ki = size_t((kt * c.hk + kh) * c.D + d);
            dq[qi] += scale * dS * R(kv);
            dqb[qi] += double(scale) * (ddS * std::fabs(kv) + double(Lk + 8) * eps * dS_abs * std::fabs(kv));
            dk[ki] += scale * dS * R(qv);
            dkb[ki] += double(scale) * (ddS * std::fabs(qv) + double(G * Lq + 8) * eps * dS_abs * std::fabs(qv));
          }
          for (int64_t d = 0; d < c.Dv; ++d) {
            const double g = dout->in(t, h, d);
            const size_t vi = size_t((kt * c.hk + kh) * c.Dv + d);
            dv[vi] += p[j] * R(g);
            dvb[vi] += dPj * std::fabs(g) + double(G * Lq + 8) * eps * Pu * std::fabs(g);
          }
        }
      }
    }
  }
  auto finish = [&](std::vector<double>& ref, std::vector<double>& bound, const std::vector<R>& acc,
                    const std::vector<double>& err) {
    for (size_t i = 0; i < acc.size(); ++i) {
      ref[i] = double(acc[i]);
      bound[i] = err[i] == 0 ? 0 : 4 * err[i] + 8 * eps * std::fabs(ref[i]) + floor;  // inf: not judged
    }
  };
  finish(e.dq, e.dq_b, dq, dqb);
  finish(e.dk, e.dk_b, dk, dkb);
  finish(e.dv, e.dv_b, dv, dvb);
  return e;
}

// got (a strided output of T) against the reference and its bound, element by element; stride
// gaps still poisoned.
template <class T>
void compare(const char* what, const Tensor<T>& got, const std::vector<double>& ref, const std::vector<double>& bound,
             const Config& c) {
  double mag = 0, worst_err = 0, worst_tol = 0, worst_ratio = 0;  // SCREE_FUZZ_VERBOSE's summary
  for (double r : ref) mag = std::max(mag, std::fabs(r));
  for (int64_t t = 0; t < got.rows; ++t)
    for (int64_t h = 0; h < got.heads; ++h)
      for (int64_t d = 0; d < got.dim; ++d) {
        const size_t i = size_t((t * got.heads + h) * got.dim + d);
        const double g = got.get(t, h, d), r = ref[i];
        const double tol = bound[i] + eps_store<T>() * std::fabs(r) + tiny_store<T>();
        SCREE_FUZZ_CHECK(!std::isnan(tol), "%s %s: NaN error bound (a bug of this fuzzer) (%s)", name_of<T>(), what,
                         c.describe().c_str());
        if (std::fabs(r) + tol >= max_store<T>()) continue;  // not judged, or may round to inf in T (fp16)
        worst_err = std::max(worst_err, std::fabs(g - r));
        worst_tol = std::max(worst_tol, tol);
        worst_ratio = std::max(worst_ratio, std::fabs(g - r) / tol);
        SCREE_FUZZ_CHECK(std::fabs(g - r) <= tol,
                         "%s %s[token %lld, head %lld, %lld] = %.17g, reference %.17g, allowed error %.3g (%s), isa %s",
                         name_of<T>(), what, (long long)t, (long long)h, (long long)d, g, r, tol,
                         c.describe().c_str(), scree::attention::cpu_isa());
      }
  if (std::getenv("SCREE_FUZZ_VERBOSE") && mag > 0)
    std::fprintf(stderr, "%-8s %-3s |ref| %.2e  error/|ref| %.2e  tolerance/|ref| %.2e  error/tolerance %.2e (%s)\n",
                 name_of<T>(), what, mag, worst_err / mag, worst_tol / mag, worst_ratio, c.describe().c_str());
  const T p = poison<T>();
  for (size_t i = 0; i < got.data.size(); ++i)
    SCREE_FUZZ_CHECK(got.used[i] || std::memcmp(&got.data[i], &p, sizeof(T)) == 0,
                     "%s %s: wrote into the stride gap at element %zu (%s)", name_of<T>(), what, i, c.describe().c_str());
}

// ---- malformed inputs -------------------------------------------------------------------------

enum Bad {
  kNone = -1,
  kFirstNotZero,   // cu_seqlens[0] != 0
  kDecreasing,     // cu_seqlens[i] < cu_seqlens[i - 1]
  kPastTotal,      // cu_seqlens[n] != total
  kNullPointer,    // one pointer null (throws only where the pointer is needed)
  kNegativeSize,   // num_sequences, heads, head dims or a total < 0 (or heads / dims 0)
  kHeadsRatio,     // heads_q not a multiple of heads_k
  kBadWindow,      // a window side < -1
  kBadSoftcap,     // softcap < 0 or NaN
  kBadDType,       // not a float dtype
  kLse64Mismatch,  // lse64 / lse_in64 with non-float64 inputs
  kNumBad
};

struct Arrays {
  std::vector<int64_t> oq64, ok64;
  std::vector<int32_t> oq32, ok32;
};

template <class T>
void run(Source& in) {
  Config c;
  // --- structure
  const uint8_t mb = in.byte();
  int bad = mb % 8 == 7 ? in.byte() % kNumBad : kNone;
  // One input in eight has a sequence of 61..300 queries / 97..300 keys with head dims <= 16: the
  // kernels' blocks (96 keys, 96 / 60 queries) are longer than 40, and only such sequences reach the
  // online softmax across key blocks, several query tiles and the backward's chunked dQ.
  const bool long_seq = (mb >> 3) % 8 == 0;
  c.n = in.byte() % 5;
  const int64_t long_at = long_seq ? in.byte() % std::max<int64_t>(c.n, 1) : -1;
  for (int64_t b = 0; b < c.n; ++b) {
    const uint8_t x = in.byte();
    const int64_t Lq = b == long_at ? 61 + int64_t(in.raw(2) % 240) : in.byte() % 41;
    c.lq.push_back(Lq);
    c.lk.push_back(x % 3 == 0 ? Lq : b == long_at ? 97 + int64_t(in.raw(2) % 204) : in.byte() % 41);
  }
  c.oq.assign(size_t(c.n + 1), 0), c.ok.assign(size_t(c.n + 1), 0);
  for (int64_t b = 0; b < c.n; ++b) c.oq[b + 1] = c.oq[b] + c.lq[b], c.ok[b + 1] = c.ok[b] + c.lk[b];
  c.Tq = c.oq[c.n], c.Tk = c.ok[c.n];
  c.hk = 1 + in.byte() % 4;
  c.hq = c.hk * (1 + in.byte() % (4 / c.hk));
  const int64_t max_dim = long_seq ? 16 : 48;
  c.D = 1 + in.byte() % max_dim;
  const uint8_t dvb = in.byte();
  c.Dv = dvb % 3 == 0 ? 1 + (dvb >> 2) % max_dim : c.D;
  const uint8_t flags = in.byte();
  c.causal = flags & 1;
  c.idx32 = (flags >> 1) & 1;
  c.lse_mode = ((flags >> 2) & 7) == 0 ? 2 : ((flags >> 2) & 7) == 1 ? 1 : 0;
  c.backward = c.lse_mode != 2 && ((flags >> 5) & 3) != 0;
  static constexpr int64_t kHuge[] = {kI64Max, kI64Max - 1, int64_t(1) << 62, std::numeric_limits<int32_t>::max(),
                                      int64_t(1) << 32, 81};
  auto window = [&] {
    const uint8_t w = in.byte();
    switch (w % 4) {
      case 0: return int64_t(-1);
      case 3: return (w >> 2) & 1 ? kHuge[(w >> 3) % 6] : int64_t(-1);
      default: return int64_t((w >> 2) % 51);
    }
  };
  c.left = window();
  c.right = window();
  const uint8_t cb = in.byte();
  static constexpr double kCaps[] = {0.5, 1.0, 2.5, 5.0, 20.0, 50.0, 1000.0, 0.01};
  c.softcap = cb % 4 == 0 ? kCaps[(cb >> 2) % 8] : 0.0;
  const uint8_t sb = in.byte();
  const double base = 1.0 / std::sqrt(double(c.D));
  switch (sb % 8) {
    case 5: c.scale = std::pow(10.0, -double(2 + (sb >> 3) % 7)); break;  // 1e-2 .. 1e-8
    case 6: c.scale = std::pow(10.0, double(1 + (sb >> 3) % 5)); break;   // 1e1 .. 1e5
    case 7: c.scale = base; break;
    default: c.scale = base * (0.25 + double((sb >> 3) % 16) / 8.0); break;
  }
  for (ValueGen& g : c.values) g = decode_values(in);
  const ValueGen &gq = c.values[0], &gk = c.values[1], &gv = c.values[2], &gd = c.values[3];
  int smode[8], spad[8];
  for (int i = 0; i < 8; ++i) {
    const uint8_t x = in.byte();
    smode[i] = x % 4 == 3 ? 0 : x % 4 == 2 ? 2 : x % 4 == 1 ? 1 : 0;
    spad[i] = 1 + (x >> 2) % 20;
  }
  Rng rng{in.raw(8)};

  // --- tensors
  Tensor<T> q, k, v, out, dout, dq, dk, dv;
  q.shape(c.Tq, c.hq, c.D, smode[0], spad[0]);
  k.shape(c.Tk, c.hk, c.D, smode[1], spad[1]);
  v.shape(c.Tk, c.hk, c.Dv, smode[2], spad[2]);
  out.shape(c.Tq, c.hq, c.Dv, smode[3], spad[3]);
  dout.shape(c.Tq, c.hq, c.Dv, smode[4], spad[4]);
  dq.shape(c.Tq, c.hq, c.D, smode[5], spad[5]);
  dk.shape(c.Tk, c.hk, c.D, smode[6], spad[6]);
  dv.shape(c.Tk, c.hk, c.Dv, smode[7], spad[7]);
  q.fill(gq, rng);
  k.fill(gk, rng);
  v.fill(gv, rng);
  dout.fill(gd, rng);
  const std::vector<T> q0 = q.data, k0 = k.data, v0 = v.data, dout0 = dout.data;
  std::vector<float> lse(size_t(std::max<int64_t>(c.hq * c.Tq, 1)), std::numeric_limits<float>::quiet_NaN());
  std::vector<double> lse64(lse.size(), std::numeric_limits<double>::quiet_NaN());
  const bool use64 = std::is_same_v<T, double> && c.lse_mode == 0;

  Arrays arr;
  arr.oq64 = c.oq, arr.ok64 = c.ok;
  VarlenBackwardParams p;
  p.dtype = dtype_of<T>();
  p.q = q.data.data(), p.k = k.data.data(), p.v = v.data.data(), p.out = out.data.data();
  if (c.lse_mode != 2) {
    if (use64)
      p.lse64 = lse64.data();
    else
      p.lse = lse.data();
  }
  p.q_row_stride = q.row_stride, p.q_head_stride = q.head_stride;
  p.k_row_stride = k.row_stride, p.k_head_stride = k.head_stride;
  p.v_row_stride = v.row_stride, p.v_head_stride = v.head_stride;
  p.out_row_stride = out.row_stride, p.out_head_stride = out.head_stride;
  p.num_sequences = c.n;
  p.total_q = c.Tq, p.total_k = c.Tk;
  for (int64_t b = 0; b < c.n; ++b) {
    p.max_seqlen_q = std::max(p.max_seqlen_q, c.lq[b]);
    p.max_seqlen_k = std::max(p.max_seqlen_k, c.lk[b]);
  }
  p.heads_q = c.hq, p.heads_k = c.hk, p.head_dim = c.D, p.head_dim_v = c.Dv;
  p.scale = c.scale, p.softcap = c.softcap, p.causal = c.causal;
  p.window_left = c.left, p.window_right = c.right;
  p.dout = dout.data.data();
  p.dout_row_stride = dout.row_stride, p.dout_head_stride = dout.head_stride;
  p.dq = dq.data.data(), p.dk = dk.data.data(), p.dv = dv.data.data();
  p.dq_row_stride = dq.row_stride, p.dq_head_stride = dq.head_stride;
  p.dk_row_stride = dk.row_stride, p.dk_head_stride = dk.head_stride;
  p.dv_row_stride = dv.row_stride, p.dv_head_stride = dv.head_stride;
  if (use64)
    p.lse_in64 = lse64.data();
  else
    p.lse_in = lse.data();

  // --- malformations: which of the two calls must throw
  bool fwd_throws = bad != kNone, bwd_throws = bad != kNone;
  bool null_oq = false, null_ok = false;
  const bool on_k = in.flag();  // the k side of an offsets malformation, else q
  std::vector<int64_t>& off = on_k ? arr.ok64 : arr.oq64;
  int64_t* total = on_k ? &p.total_k : &p.total_q;
  if (bad == kDecreasing && c.n == 0) bad = kFirstNotZero;
  switch (bad) {
    case kFirstNotZero: {
      static constexpr int64_t kFirst[] = {1, -1, 7, std::numeric_limits<int32_t>::max(),
                                           std::numeric_limits<int32_t>::min(), -40};
      off[0] = kFirst[in.byte() % 6];
      break;
    }
    case kDecreasing: {
      const int64_t i = 1 + in.byte() % c.n;
      off[i] = off[i - 1] - 1 - in.byte() % 3;
      break;
    }
    case kPastTotal: {
      const int64_t d = 1 + in.byte() % 3;
      if (in.flag())
        *total += d;
      else
        *total -= d;  // may go negative: also an error
      break;
    }
    case kNullPointer: {
      const int which = in.byte() % 11;
      const bool rows = c.Tq > 0, keys = c.Tk > 0;
      bool fwd_needs = true, bwd_needs = true;
      switch (which) {
        case 0: p.q = nullptr, fwd_needs = bwd_needs = rows; break;
        // The forward reads k and v only for query rows; the backward packs every key block.
        case 1: p.k = nullptr, fwd_needs = rows && keys, bwd_needs = keys; break;
        case 2: p.v = nullptr, fwd_needs = rows && keys, bwd_needs = keys; break;
        case 3: p.out = nullptr, fwd_needs = bwd_needs = rows; break;
        case 4: null_oq = true; break;
        case 5: null_ok = true; break;
        case 6: p.dout = nullptr, fwd_needs = false, bwd_needs = rows; break;
        case 7: p.dq = nullptr, fwd_needs = false, bwd_needs = rows; break;
        // dk and dv are outputs for every key, read by no query or not: needed whenever there are keys.
        case 8: p.dk = nullptr, fwd_needs = false, bwd_needs = keys; break;
        case 9: p.dv = nullptr, fwd_needs = false, bwd_needs = keys; break;
        default: p.lse_in = nullptr, p.lse_in64 = nullptr, fwd_needs = false, bwd_needs = rows; break;
      }
      fwd_throws = fwd_needs, bwd_throws = fwd_needs || bwd_needs;
      break;
    }
    case kNegativeSize:
      switch (in.byte() % 6) {
        case 0: p.num_sequences = -1 - in.byte() % 3; break;
        case 1: p.heads_q = -int64_t(in.byte() % 3); break;
        case 2: p.heads_k = -int64_t(in.byte() % 3); break;
        case 3: p.head_dim = -int64_t(in.byte() % 3); break;
        case 4: p.head_dim_v = -int64_t(in.byte() % 3); break;
        default: *total = -1 - in.byte() % 3; break;
      }
      break;
    case kHeadsRatio:
      p.heads_k = 2 + in.byte() % 3;
      p.heads_q = p.heads_k + 1 + in.byte() % (p.heads_k - 1);
      break;
    case kBadWindow: {
      const int64_t w = in.flag() ? std::numeric_limits<int64_t>::min() : -2 - in.byte() % 3;
      (in.flag() ? p.window_left : p.window_right) = w;
      break;
    }
    case kBadSoftcap: p.softcap = in.flag() ? std::numeric_limits<double>::quiet_NaN() : -0.5; break;
    case kBadDType: {
      static constexpr DType kNotFloat[] = {DType::Bool, DType::Int8, DType::Int16, DType::Int32, DType::Int64,
                                            DType::UInt8};
      p.dtype = kNotFloat[in.byte() % 6];
      break;
    }
    case kLse64Mismatch:
      if (std::is_same_v<T, double>) {
        bad = kNone, fwd_throws = bwd_throws = false;  // float64 takes either: nothing malformed
      } else if (in.flag() && c.lse_mode != 2) {
        p.lse = nullptr, p.lse64 = lse64.data();  // the forward refuses, so does the backward
      } else {
        p.lse_in = nullptr, p.lse_in64 = lse64.data(), fwd_throws = false;  // only the backward refuses
      }
      break;
    default: break;
  }
  if (c.idx32) {  // the same values as int32 (the malformed ones are chosen to stay malformed)
    arr.oq32.assign(arr.oq64.begin(), arr.oq64.end());
    arr.ok32.assign(arr.ok64.begin(), arr.ok64.end());
    p.cu_seqlens_q = {null_oq ? nullptr : arr.oq32.data(), false};
    p.cu_seqlens_k = {null_ok ? nullptr : arr.ok32.data(), false};
  } else {
    p.cu_seqlens_q = {null_oq ? nullptr : arr.oq64.data(), true};
    p.cu_seqlens_k = {null_ok ? nullptr : arr.ok64.data(), true};
  }
  if (bad == kNullPointer && !fwd_throws && !bwd_throws) bad = kNone;  // an unused null: a valid call
  if (bad == kNone) fwd_throws = bwd_throws = false;
  const bool do_bwd = c.backward || bwd_throws;

  // --- the calls
  auto call = [&](bool backward, bool must_throw) {
    try {
      if (backward)
        scree::attention::varlen_bwd_cpu(p);
      else
        scree::attention::varlen_fwd_cpu(p);
    } catch (const scree::Error& e) {
      SCREE_FUZZ_CHECK(must_throw, "%s %s threw on a valid call: %s (%s)", name_of<T>(),
                       backward ? "varlen_bwd_cpu" : "varlen_fwd_cpu", e.what(), c.describe().c_str());
      return;
    }
    SCREE_FUZZ_CHECK(!must_throw, "%s %s accepted malformed input %d (%s)", name_of<T>(),
                     backward ? "varlen_bwd_cpu" : "varlen_fwd_cpu", bad, c.describe().c_str());
  };
  call(false, fwd_throws);
  if (do_bwd) call(true, bwd_throws);
  if (bad != kNone) return;

  // --- valid: compare with the reference
  SCREE_FUZZ_CHECK(std::memcmp(q.data.data(), q0.data(), q0.size() * sizeof(T)) == 0 &&
                       std::memcmp(k.data.data(), k0.data(), k0.size() * sizeof(T)) == 0 &&
                       std::memcmp(v.data.data(), v0.data(), v0.size() * sizeof(T)) == 0 &&
                       std::memcmp(dout.data.data(), dout0.data(), dout0.size() * sizeof(T)) == 0,
                   "%s: an input (q, k, v or dout) changed (%s)", name_of<T>(), c.describe().c_str());
  const Expected e = reference(c, q, k, v, do_bwd ? &dout : nullptr, &out);
  compare("out", out, e.out, e.out_b, c);
  if (c.lse_mode != 2) {
    for (int64_t i = 0; i < c.hq * c.Tq; ++i) {
      const double r = e.lse[size_t(i)];
      const double g = use64 ? lse64[size_t(i)] : double(lse[size_t(i)]);
      if (std::isinf(r)) {
        SCREE_FUZZ_CHECK(g == r, "%s lse[%lld] = %.17g, reference -inf (a row that sees no key) (%s)", name_of<T>(),
                         (long long)i, g, c.describe().c_str());
        continue;
      }
      const double tol = e.lse_b[size_t(i)] + (use64 ? std::ldexp(1.0, -52) : std::ldexp(1.0, -23)) * std::fabs(r) +
                         1e-300;
      SCREE_FUZZ_CHECK(std::fabs(g - r) <= tol, "%s lse[%lld] = %.17g, reference %.17g, allowed error %.3g (%s), isa %s",
                       name_of<T>(), (long long)i, g, r, tol, c.describe().c_str(), scree::attention::cpu_isa());
    }
  }
  if (!do_bwd) return;
  compare("dq", dq, e.dq, e.dq_b, c);
  compare("dk", dk, e.dk, e.dk_b, c);
  compare("dv", dv, e.dv, e.dv_b, c);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  Source in(data, size);
  switch (in.byte() % 4) {
    case 0: run<float>(in); break;
    case 1: run<double>(in); break;
    case 2: run<scree::float16>(in); break;
    default: run<scree::bfloat16>(in); break;
  }
  return 0;
}
