// libFuzzer target: segment_reduce (include/scree/ops/reduce.h) for every instantiated
// (input, output) type pair and op, on raw value bits (NaN, inf, subnormals, integer edges) and
// valid offsets (lengths near INT64_MAX when a row has no features). The result must equal a
// naive loop written here that accumulates in the documented type and order (so float results
// are compared bit for bit, any NaN matching any NaN), or the call must throw scree::Error for
// the pairs the header rules out (mean of integers, an integer sum or product narrower than int64).
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#include "fuzz_input.h"
#include "scree/dtypes.h"
#include "scree/error.h"
#include "scree/ops/reduce.h"

namespace {

using scree::Accum;
using scree::ErrorKind;
using scree::ops::Reduce;
using scree::fuzz::Input;

template <class T>
bool same(T a, T b) {
  if constexpr (std::is_same_v<T, scree::float16> || std::is_same_v<T, scree::bfloat16>) {
    const float x = scree::to_float(a), y = scree::to_float(b);
    return (std::isnan(x) && std::isnan(y)) || a.bits == b.bits;
  } else if constexpr (std::is_floating_point_v<T>) {
    return (std::isnan(a) && std::isnan(b)) || std::memcmp(&a, &b, sizeof(T)) == 0;
  } else {
    return a == b;
  }
}

// The documented semantics, one element at a time.
template <class T, class Out>
Out reference(const std::vector<T>& v, const std::vector<int64_t>& off, int64_t i, int64_t f, int64_t F, Reduce op) {
  const int64_t len = off[i + 1] - off[i];
  if constexpr (std::is_integral_v<T>) {
    if (op == Reduce::Max || op == Reduce::Min) {
      T m = op == Reduce::Max ? std::numeric_limits<T>::lowest() : std::numeric_limits<T>::max();
      for (int64_t r = off[i]; r < off[i + 1]; ++r) m = op == Reduce::Max ? std::max(m, v[r * F + f]) : std::min(m, v[r * F + f]);
      return static_cast<Out>(m);
    }
    // integer sums and products wrap modulo 2^64, as NumPy's and torch's int64 ones do
    uint64_t s = op == Reduce::Prod ? 1 : 0;
    for (int64_t r = off[i]; r < off[i + 1]; ++r) {
      const uint64_t x = static_cast<uint64_t>(static_cast<int64_t>(v[r * F + f]));
      s = op == Reduce::Prod ? s * x : s + x;
    }
    return static_cast<Out>(static_cast<int64_t>(s));
  } else {
    using A = typename Accum<T>::type;
    A acc = op == Reduce::Max   ? -std::numeric_limits<A>::infinity()
            : op == Reduce::Min ? std::numeric_limits<A>::infinity()
            : op == Reduce::Prod ? A(1)
                                 : A(0);
    bool nan = false;
    for (int64_t r = off[i]; r < off[i + 1]; ++r) {
      const A x = Accum<T>::load(v[r * F + f]);
      if (op == Reduce::Max || op == Reduce::Min) {
        nan = nan || std::isnan(x);
        acc = op == Reduce::Max ? std::max(acc, x) : std::min(acc, x);
      } else if (op == Reduce::Prod) {
        acc *= x;
      } else {
        acc += x;
      }
    }
    if (nan) acc = std::numeric_limits<A>::quiet_NaN();
    if (op == Reduce::Mean) acc = acc / A(len);
    return Accum<Out>::store(acc);
  }
}

template <class T, class Out>
void check(Input& in) {
  const Reduce op = static_cast<Reduce>(in.byte() % 5);  // Sum, Mean, Max, Min, Prod
  const int64_t n = in.small(0, 8);
  const int64_t F = in.small(0, 5);
  std::vector<int64_t> off(static_cast<size_t>(n + 1), 0);
  for (int64_t i = 0; i < n; ++i) {
    // Without features a sequence may be as long as the layout allows: the kernel must not walk it.
    const int64_t len = F == 0 && in.flag() ? std::numeric_limits<int64_t>::max() / (n + 1) : in.small(0, 6);
    off[i + 1] = off[i] + len;
  }
  const int64_t total = off[n];
  std::vector<T> v(static_cast<size_t>(F == 0 ? 0 : total * F));
  for (auto& x : v) {
    const uint64_t bits = in.raw(sizeof(T));
    std::memcpy(&x, &bits, sizeof(T));
  }
  std::vector<Out> out(static_cast<size_t>(n * F) + 1);
  for (auto& o : out) std::memset(&o, 0x5A, sizeof(Out));
  const Out sentinel = out.back();

  const bool rejected = (std::is_integral_v<T> && op == Reduce::Mean) ||
                        (std::is_integral_v<T> && (op == Reduce::Sum || op == Reduce::Prod) &&
                         !std::is_same_v<Out, int64_t>);
  try {
    scree::ops::segment_reduce(v.data(), off.data(), n, F, op, out.data());
    SCREE_FUZZ_CHECK(!rejected, "op %d accepted for an integer type it does not serve", int(op));
  } catch (const scree::Error& e) {
    SCREE_FUZZ_CHECK(rejected, "segment_reduce threw: %s", e.what());
    SCREE_FUZZ_CHECK(e.kind() == ErrorKind::DTypeMismatch, "kind %d: %s", int(e.kind()), e.what());
    return;
  }
  for (int64_t i = 0; i < n; ++i)
    for (int64_t f = 0; f < F; ++f)
      SCREE_FUZZ_CHECK((same(out[i * F + f], reference<T, Out>(v, off, i, f, F, op))),
                       "op %d, sequence %lld, feature %lld differs", int(op), (long long)i, (long long)f);
  SCREE_FUZZ_CHECK(std::memcmp(&out.back(), &sentinel, sizeof(Out)) == 0, "wrote past out[n * F]");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  Input in(data, size);
  switch (in.byte() % 7) {
    case 0: check<float, float>(in); break;
    case 1: check<double, double>(in); break;
    case 2: check<scree::float16, scree::float16>(in); break;
    case 3: check<scree::bfloat16, scree::bfloat16>(in); break;
    case 4: check<int32_t, int32_t>(in); break;
    case 5: check<int32_t, int64_t>(in); break;
    default: check<int64_t, int64_t>(in); break;
  }
  return 0;
}
