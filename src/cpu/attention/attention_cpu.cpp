// CPU attention front door: parameter validation (the one place for it), and the choice between
// the AMX, AVX-512, AVX2+FMA+F16C and portable builds of the kernels, made once per process from
// cpuid (SCREE_CPU_ISA=generic|portable|avx2|avx512|amx asks for one, in that order; a build the
// CPU cannot run is never taken: the best one it can below the request runs instead). The amx
// build also needs the OS's permission for the tile state (amx_os.h); refused, avx512 runs. The
// avx512bf16 build (the bf16 forward on VDPBF16PS) runs only when asked for by name
// (SCREE_CPU_ISA=avx512bf16) on a CPU with AVX512-BF16: on the one such CPU measured (the 16-core
// AMX Xeon) its bf16 forward ran 0.45-0.8x the avx512 build's converted one (benchmarks/NOTES.md,
// twenty-fifth session), so it is never the default. In the amx build, bf16 calls whose sequences
// all have <= 16 queries and keys run the avx512 build's kernels (on_tiles: the tiles do not pay).
#include <cstdlib>
#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif
#include <string>
#include <vector>

#include "amx_os.h"
#include "scree/attention/cpu.h"
#include "scree/error.h"
#include "scree/layout.h"
#include "scree/paged.h"

namespace scree::cpu {
#if defined(SCREE_HAVE_AMX_KERNELS)
namespace amx {
void varlen_fwd(const attention::VarlenParams& p);
void varlen_bwd(const attention::VarlenBackwardParams& p);
}  // namespace amx
#endif
#if defined(SCREE_HAVE_AVX512BF16_KERNELS)
namespace avx512bf16 {
void varlen_fwd(const attention::VarlenParams& p);
void varlen_bwd(const attention::VarlenBackwardParams& p);
}  // namespace avx512bf16
#endif
#if defined(SCREE_HAVE_AVX512_KERNELS)
namespace avx512 {
void varlen_fwd(const attention::VarlenParams& p);
void varlen_bwd(const attention::VarlenBackwardParams& p);
}  // namespace avx512
#endif
#if defined(SCREE_HAVE_AVX2_KERNELS)
namespace avx2 {
void varlen_fwd(const attention::VarlenParams& p);
void varlen_bwd(const attention::VarlenBackwardParams& p);
}  // namespace avx2
#endif
namespace generic {
void varlen_fwd(const attention::VarlenParams& p);
void varlen_bwd(const attention::VarlenBackwardParams& p);
}  // namespace generic
}  // namespace scree::cpu

namespace scree::attention {
namespace {

enum class Isa { kGeneric = 0, kAvx2 = 1, kAvx512 = 2, kAvx512Bf16 = 3, kAmx = 4 };

// The best build this CPU runs, capped by SCREE_CPU_ISA (tests run every build the machine has).
Isa isa() {
  static const Isa chosen = [] {
    Isa cap = Isa::kAmx;
    if (const char* force = std::getenv("SCREE_CPU_ISA")) {
      const std::string f(force);
      if (f == "generic" || f == "portable") cap = Isa::kGeneric;
      else if (f == "avx2") cap = Isa::kAvx2;
      else if (f == "avx512") cap = Isa::kAvx512;
      else if (f == "avx512bf16") cap = Isa::kAvx512Bf16;
    }
#if defined(__x86_64__) || defined(__i386__)
    // F16C from CPUID leaf 1, ECX bit 29: clang's __builtin_cpu_supports has no "f16c" (a compile
    // error there); every CPU with AVX2 and FMA has it, but the kernels use it, so ask.
    unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
    const bool f16c = __get_cpuid(1, &eax, &ebx, &ecx, &edx) && (ecx & (1u << 29)) != 0;
    const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && f16c;
    const bool avx512 = avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
    // AVX512-BF16: CPUID leaf 7 sub-leaf 1, EAX bit 5 (asked directly: compilers' cpu_supports
    // names for it differ by version).
    const bool bf16 = avx512 && __get_cpuid_count(7, 1, &eax, &ebx, &ecx, &edx) && (eax & (1u << 5)) != 0;
#if defined(SCREE_HAVE_AMX_KERNELS)
    // Asked last (the permission is requested only when the amx build may be chosen).
    if (avx512 && cap >= Isa::kAmx && cpu::amx_bf16_usable()) return Isa::kAmx;
#endif
#if defined(SCREE_HAVE_AVX512BF16_KERNELS)
    if (bf16 && cap == Isa::kAvx512Bf16) return Isa::kAvx512Bf16;  // by name only (see above)
#endif
#if defined(SCREE_HAVE_AVX512_KERNELS)
    if (avx512 && cap >= Isa::kAvx512) return Isa::kAvx512;
#endif
#if defined(SCREE_HAVE_AVX2_KERNELS)
    if (avx2 && cap >= Isa::kAvx2) return Isa::kAvx2;
#endif
    (void)bf16, (void)avx512, (void)avx2, (void)cap;
#endif
    return Isa::kGeneric;
  }();
  return chosen;
}

void check_offsets(const Offsets& off, int64_t n, int64_t total, const char* name) {
  require(off.data != nullptr, ErrorKind::InvalidArgument, [&] { return std::string(name) + " is null"; });
  try {
    if (off.is_int64)
      RaggedLayout::from_offsets(static_cast<const int64_t*>(off.data), n + 1, 1, total);
    else
      RaggedLayout::from_offsets(static_cast<const int32_t*>(off.data), n + 1, 1, total);
  } catch (const Error& e) {
    throw Error(e.kind(), std::string(name) + ": " + e.what());
  }
}

// A paged forward's table against the lengths cu_seqlens_k gives (PagedLayout: the pages each
// sequence uses exist, its length fits its row).
void check_pages(const VarlenParams& p) {
  require(p.page_size >= 1 && p.page_table_width >= 0 && p.page_table_stride >= 0 && p.kv_rows >= 0 &&
              p.kv_rows % p.page_size == 0,
          ErrorKind::InvalidArgument, [&] {
            return "paged keys: page_size " + std::to_string(p.page_size) + " must be >= 1 and divide the " +
                   std::to_string(p.kv_rows) + " rows of k and v";
          });
  const int64_t n = p.num_sequences;
  std::vector<int64_t> lens(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) lens[i] = p.cu_seqlens_k[i + 1] - p.cu_seqlens_k[i];
  const int64_t pages = p.kv_rows / p.page_size;
  if (p.page_table_int64)
    PagedLayout::from_tables(static_cast<const int64_t*>(p.page_table), n, p.page_table_width, p.page_table_stride, 1,
                             lens.data(), 1, pages, p.page_size);
  else
    PagedLayout::from_tables(static_cast<const int32_t*>(p.page_table), n, p.page_table_width, p.page_table_stride, 1,
                             lens.data(), 1, pages, p.page_size);
}

}  // namespace

void validate(const VarlenParams& p) {
  require(p.dtype == DType::Float32 || p.dtype == DType::Float64 || p.dtype == DType::Float16 ||
              p.dtype == DType::BFloat16,
          ErrorKind::DTypeMismatch, [] { return std::string("attention needs float32, float64, float16 or bfloat16"); });
  require(p.heads_q > 0 && p.heads_k > 0 && p.heads_q % p.heads_k == 0, ErrorKind::ShapeMismatch, [&] {
    return "query heads (" + std::to_string(p.heads_q) + ") must be a positive multiple of key/value heads (" +
           std::to_string(p.heads_k) + ")";
  });
  require(p.head_dim > 0 && p.head_dim_v > 0, ErrorKind::ShapeMismatch, [&] {
    return "head dims must be positive, got D=" + std::to_string(p.head_dim) + ", Dv=" + std::to_string(p.head_dim_v);
  });
  require(p.num_sequences >= 0, ErrorKind::ShapeMismatch, [] { return std::string("negative number of sequences"); });
  check_offsets(p.cu_seqlens_q, p.num_sequences, p.total_q, "cu_seqlens_q");
  check_offsets(p.cu_seqlens_k, p.num_sequences, p.total_k, "cu_seqlens_k");
  if (p.paged) check_pages(p);
  require(p.softcap >= 0.0, ErrorKind::InvalidArgument, [] { return std::string("softcap must be >= 0 (0 = off)"); });
  require(p.window_left >= kUnbounded && p.window_right >= kUnbounded, ErrorKind::InvalidArgument,
          [] { return std::string("window sides must be >= 0, or -1 for unbounded"); });
  const bool has_rows = p.total_q > 0;
  require(!has_rows || (p.q && p.out && (p.total_k == 0 || (p.k && p.v))), ErrorKind::InvalidArgument,
          [] { return std::string("null q/k/v/out pointer"); });
  require(p.lse64 == nullptr || p.dtype == DType::Float64, ErrorKind::InvalidArgument,
          [] { return std::string("a float64 lse (lse64) is for float64 inputs only; use the float32 lse"); });
}

#if defined(SCREE_HAVE_AMX_KERNELS) && defined(SCREE_HAVE_AVX512_KERNELS)
// Whether a bf16 call in the amx build goes to the tiles. Where no sequence passes 16 queries or
// keys, each work item's tile setup, packing and first products' latency cost more than its
// arithmetic, and the avx512 build's converted fp32 kernels are faster; from 32 tokens the tiles
// win (bf16, 4 sequences x 8 heads, causal, 2 threads, 2-core AMX Xeon, us a call through
// scree.varlen_attention, amx vs avx512: 16 tokens d64 forward 47 vs 40, forward+backward 270 vs
// 208; d128 65 vs 57, 444 vs 300; 32 tokens d64 59 vs 67, 343 vs 355; d128 81 vs 115, 584 vs 619;
// benchmarks/NOTES.md, thirty-first session). Other dtypes run the same vector code in both builds.
constexpr int64_t kTilesFromTokens = 17;
template <class Params>
bool on_tiles(const Params& p) {
  return p.dtype != DType::BFloat16 || p.max_seqlen_q >= kTilesFromTokens || p.max_seqlen_k >= kTilesFromTokens;
}
#endif

void varlen_fwd_cpu(const VarlenParams& params) {
  validate(params);
  VarlenParams p = params;
  make_windows_reachable(p);
#if defined(SCREE_HAVE_AMX_KERNELS) && defined(SCREE_HAVE_AVX512_KERNELS)
  if (isa() == Isa::kAmx) return on_tiles(p) ? cpu::amx::varlen_fwd(p) : cpu::avx512::varlen_fwd(p);
#elif defined(SCREE_HAVE_AMX_KERNELS)
  if (isa() == Isa::kAmx) return cpu::amx::varlen_fwd(p);
#endif
#if defined(SCREE_HAVE_AVX512BF16_KERNELS)
  if (isa() == Isa::kAvx512Bf16) return cpu::avx512bf16::varlen_fwd(p);
#endif
#if defined(SCREE_HAVE_AVX512_KERNELS)
  if (isa() == Isa::kAvx512) return cpu::avx512::varlen_fwd(p);
#endif
#if defined(SCREE_HAVE_AVX2_KERNELS)
  if (isa() == Isa::kAvx2) return cpu::avx2::varlen_fwd(p);
#endif
  cpu::generic::varlen_fwd(p);
}

void varlen_bwd_cpu(const VarlenBackwardParams& params) {
  validate(params);
  VarlenBackwardParams p = params;
  make_windows_reachable(p);
  require(p.lse_in64 == nullptr || p.dtype == DType::Float64, ErrorKind::InvalidArgument,
          [] { return std::string("a float64 lse (lse_in64) is for float64 inputs only; use the float32 lse"); });
  const bool has_lse = p.lse_in != nullptr || p.lse_in64 != nullptr;
  // The backward packs every key block and writes dk, dv for every key, seen by a query or not
  // (zeros then): k, v, dk, dv are needed whenever there are keys, even with no query rows, where
  // validate() lets k and v be null (fuzz_attention: null k read, null dk written at total_q = 0).
  require((p.total_q == 0 || (p.dout && has_lse && p.dq)) && (p.total_k == 0 || (p.k && p.v && p.dk && p.dv)),
          ErrorKind::InvalidArgument,
          [] { return std::string("backward needs dout, lse, dq (with query rows) and k, v, dk, dv (with keys)"); });
#if defined(SCREE_HAVE_AMX_KERNELS) && defined(SCREE_HAVE_AVX512_KERNELS)
  if (isa() == Isa::kAmx) return on_tiles(p) ? cpu::amx::varlen_bwd(p) : cpu::avx512::varlen_bwd(p);
#elif defined(SCREE_HAVE_AMX_KERNELS)
  if (isa() == Isa::kAmx) return cpu::amx::varlen_bwd(p);
#endif
#if defined(SCREE_HAVE_AVX512BF16_KERNELS)
  if (isa() == Isa::kAvx512Bf16) return cpu::avx512bf16::varlen_bwd(p);
#endif
#if defined(SCREE_HAVE_AVX512_KERNELS)
  if (isa() == Isa::kAvx512) return cpu::avx512::varlen_bwd(p);
#endif
#if defined(SCREE_HAVE_AVX2_KERNELS)
  if (isa() == Isa::kAvx2) return cpu::avx2::varlen_bwd(p);
#endif
  cpu::generic::varlen_bwd(p);
}

const char* cpu_isa() {
  switch (isa()) {
    case Isa::kAmx: return "amx";
    case Isa::kAvx512Bf16: return "avx512bf16";
    case Isa::kAvx512: return "avx512";
    case Isa::kAvx2: return "avx2";
    case Isa::kGeneric: break;
  }
  return "generic";
}

}  // namespace scree::attention
