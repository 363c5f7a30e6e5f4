// Hopper (sm_90a) instructions the warp-specialised kernels are built from, as inline PTX:
// mbarriers (init, arrive, arrive with an expected transaction count, parity wait), the wgmma
// fence / commit / wait protocol, the proxy fence between ordinary shared-memory stores and the
// async units, bulk reduce-adds from shared to global memory (and their completion groups),
// setmaxnreg, and the shared-memory matrix descriptors of wgmma for 128-byte-swizzled tiles.
// TMA loads are in tma.cuh, named barriers in named_barrier.cuh.
#pragma once

#include <cuda.h>

#include <cstdint>

namespace scree::cuda_attention::sm90 {

__device__ __forceinline__ uint32_t smem_u32(const void* p) { return static_cast<uint32_t>(__cvta_generic_to_shared(p)); }

// A value the same in every lane of the warp, in a form the compiler can prove so (a shuffle from
// lane 0): what is derived from it (a warpgroup's smem offsets, hence its wgmma descriptors) then
// lives in uniform registers, instead of being rebuilt in vector registers and moved over by
// R2UR before every wgmma (372 R2UR in the D = 128 backward kernel with threadIdx.x / 128).
__device__ __forceinline__ int warp_uniform(int v) { return __shfl_sync(0xffffffffu, v, 0); }

// A kernel's shared memory as one struct whose tiles are alignas(1024) (the 128-byte swizzle
// atom): the dynamic base is aligned up to 1024 bytes inside an allocation 1 KiB larger. The
// opt-in limit is 227 KiB a block.
template <class Smem>
__device__ __forceinline__ Smem& aligned_smem(char* raw) {
  return *reinterpret_cast<Smem*>(raw + ((1024 - (smem_u32(raw) & 1023)) & 1023));
}
template <class Smem>
constexpr int smem_bytes() {
  static_assert(sizeof(Smem) + 1024 <= 227 * 1024, "the tiles do not fit the 227 KiB of shared memory");
  return int(sizeof(Smem)) + 1024;
}

__device__ __forceinline__ void mbar_init(uint64_t* bar, uint32_t count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(smem_u32(bar)), "r"(count));
}
// Makes the initialised barriers visible to the async proxy (the TMA unit) before first use.
__device__ __forceinline__ void fence_barrier_init() { asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory"); }

__device__ __forceinline__ void mbar_arrive(uint64_t* bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(smem_u32(bar)) : "memory");
}
__device__ __forceinline__ void mbar_arrive_expect_tx(uint64_t* bar, uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(smem_u32(bar)), "r"(bytes) : "memory");
}
// Returns once the phase of the given parity has completed.
__device__ __forceinline__ void mbar_wait(uint64_t* bar, uint32_t parity) {
  asm volatile(
      "{\n.reg .pred done;\nWAIT:\n"
      "mbarrier.try_wait.parity.shared::cta.b64 done, [%0], %1;\n"
      "@!done bra WAIT;\n}\n" ::"r"(smem_u32(bar)),
      "r"(parity)
      : "memory");
}

__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void wgmma_wait() { asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory"); }

// Keeps the compiler from moving reads or writes of wgmma registers across the async boundary:
// accumulators (written behind the compiler's back until wgmma_wait) and A fragments in registers
// (read asynchronously until then, so they must keep their values, and registers, until a fence
// after the wait).
__device__ __forceinline__ void fence_reg(float& x) { asm volatile("" : "+f"(x)::"memory"); }
__device__ __forceinline__ void fence_reg(uint32_t& x) { asm volatile("" : "+r"(x)::"memory"); }
template <class E, int N>
__device__ __forceinline__ void fence_regs(E (&d)[N][4]) {
#pragma unroll
  for (int i = 0; i < N; ++i)
#pragma unroll
    for (int e = 0; e < 4; ++e) fence_reg(d[i][e]);
}

// Ordinary shared-memory stores (st.shared, by this thread) become visible to the async proxy
// (wgmma operands read from shared memory, bulk copies) once each writing thread has run this and
// the readers are past a barrier that orders them after it.
__device__ __forceinline__ void fence_proxy_async_smem() { asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); }

// Bulk reduce-add of `bytes` (a multiple of 16; both addresses 16-byte aligned) fp32 values from
// shared to global memory, element-wise atomic with other adds; tracked by this thread's bulk
// groups: commit, then wait until at most N groups are still reading shared memory (.read) or
// still writing (the plain form: the adds are done and visible to this thread).
__device__ __forceinline__ void bulk_reduce_add_f32(float* gmem, const void* smem, uint32_t bytes) {
  asm volatile("cp.reduce.async.bulk.global.shared::cta.bulk_group.add.f32 [%0], [%1], %2;\n" ::"l"(gmem),
               "r"(smem_u32(smem)), "r"(bytes)
               : "memory");
}
__device__ __forceinline__ void bulk_commit() { asm volatile("cp.async.bulk.commit_group;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void bulk_wait_read() { asm volatile("cp.async.bulk.wait_group.read %0;\n" ::"n"(N) : "memory"); }
template <int N>
__device__ __forceinline__ void bulk_wait() { asm volatile("cp.async.bulk.wait_group %0;\n" ::"n"(N) : "memory"); }

template <int REGS>
__device__ __forceinline__ void setmaxnreg_inc() { asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(REGS)); }
template <int REGS>
__device__ __forceinline__ void setmaxnreg_dec() { asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(REGS)); }

// wgmma shared-memory descriptors for tiles stored as TMA writes them with 128-byte swizzle:
// rows of 128 bytes (64 16-bit elements), 8-row atoms of 1024 bytes, tile base 1024-byte aligned.
// Bits: [0,14) address >> 4, [16,30) leading byte offset >> 4, [32,46) stride byte offset >> 4,
// [62,64) layout 1 = 128-byte swizzle.
//  K-major (the reduction dim contiguous: Q and K for S = Q K^T): stride = 1024 bytes between
//  8-row groups; the leading offset is unused (1). A k-step of 16 elements moves the address 32 bytes.
//  MN-major (the output dim contiguous: V for O += P V): leading = bytes between 64-column slabs,
//  stride = 1024 bytes between groups of 8 reduction rows; a k-step of 16 rows moves 2048 bytes.
//
// SmemDesc holds a tile's descriptor once (its base address and offsets), and at(byte offset) gives
// a k-step's descriptor with one 32-bit add: a shared-memory address is < 2^18 (227 KiB), so
// address >> 4 fills at most the 14-bit field, the fields never overlap and (base + off) >> 4 ==
// (base >> 4) + (off >> 4) for 16-byte multiples. Built per wgmma from the address instead, the
// descriptors' shifts and masks on the uniform datapath took 13.7% of the short backward's
// consumer warp samples on an H200 (ncu, benchmarks/NOTES.md).
struct SmemDesc {
  uint32_t lo, hi;  // [0, 14) address >> 4 and [16, 30) leading offset >> 4; [0, 14) stride >> 4 and the layout
  __device__ __forceinline__ static SmemDesc sw128(uint32_t smem_addr, uint32_t leading_bytes, uint32_t stride_bytes) {
    return {(smem_addr >> 4) | (((leading_bytes >> 4) & 0x3FFF) << 16), ((stride_bytes >> 4) & 0x3FFF) | (1u << 30)};
  }
  // off: bytes past the base, a multiple of 16 (a compile-time constant at every call).
  __device__ __forceinline__ uint64_t at(uint32_t off) const {
    return (uint64_t(hi) << 32) | uint64_t(lo + (off >> 4));
  }
};

}  // namespace scree::cuda_attention::sm90
