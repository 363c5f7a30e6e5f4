// Prototype of the kernel changes proposed in benchmarks/NOTES.md, for measurement only (built
// by benchmarks/diag_layout.py with `cc -O3 -mavx2 -fopenmp -shared`). Not part of scree.
#include <immintrin.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <omp.h>

// dst <- src, `bytes` bytes; streaming (non-temporal) 32-byte stores for the aligned body.
static void copy_nt(unsigned char* dst, const unsigned char* src, int64_t bytes) {
  int64_t head = (int64_t)((32 - ((uintptr_t)dst & 31)) & 31);
  if (head > bytes) head = bytes;
  if (head) memcpy(dst, src, head);
  dst += head; src += head; bytes -= head;
  int64_t body = bytes & ~(int64_t)127;
  for (int64_t i = 0; i < body; i += 128) {
    __m256i a = _mm256_loadu_si256((const __m256i*)(src + i));
    __m256i b = _mm256_loadu_si256((const __m256i*)(src + i + 32));
    __m256i c = _mm256_loadu_si256((const __m256i*)(src + i + 64));
    __m256i d = _mm256_loadu_si256((const __m256i*)(src + i + 96));
    _mm256_stream_si256((__m256i*)(dst + i), a);
    _mm256_stream_si256((__m256i*)(dst + i + 32), b);
    _mm256_stream_si256((__m256i*)(dst + i + 64), c);
    _mm256_stream_si256((__m256i*)(dst + i + 96), d);
  }
  if (bytes > body) memcpy(dst + body, src + body, bytes - body);
}

static void zero_nt(unsigned char* dst, int64_t bytes) {
  int64_t head = (int64_t)((32 - ((uintptr_t)dst & 31)) & 31);
  if (head > bytes) head = bytes;
  if (head) memset(dst, 0, head);
  dst += head; bytes -= head;
  int64_t body = bytes & ~(int64_t)31;
  __m256i z = _mm256_setzero_si256();
  for (int64_t i = 0; i < body; i += 32) _mm256_stream_si256((__m256i*)(dst + i), z);
  if (bytes > body) memset(dst + body, 0, bytes - body);
}

static void copy(unsigned char* d, const unsigned char* s, int64_t b, int nt) {
  if (nt) copy_nt(d, s, b); else memcpy(d, s, b);
}

// static split by weight (offsets), like scree's parallel_for
static void bounds(const int64_t* w, int64_t n, int parts, int p, int64_t* b, int64_t* e) {
  int64_t lo = w[0], hi = w[n];
  int64_t t0 = lo + (hi - lo) * p / parts, t1 = lo + (hi - lo) * (p + 1) / parts;
  int64_t i = 0, j;
  while (i < n && w[i] < t0) ++i;
  j = i;
  while (j < n && w[j] < t1) ++j;
  *b = p == 0 ? 0 : i; *e = p == parts - 1 ? n : j;
}

void pack(const void* const* sources, const int64_t* off, int64_t n, int64_t rb, void* dst, int threads, int nt) {
  unsigned char* out = (unsigned char*)dst;
#pragma omp parallel num_threads(threads)
  {
    int64_t b, e;
    bounds(off, n, omp_get_num_threads(), omp_get_thread_num(), &b, &e);
    for (int64_t i = b; i < e; ++i)
      copy(out + off[i] * rb, (const unsigned char*)sources[i], (off[i + 1] - off[i]) * rb, nt);
    if (nt) _mm_sfence();
  }
}

void unpad(const void* padded, const int64_t* off, int64_t n, int64_t L, int64_t rb, void* values, int threads, int nt) {
  const unsigned char* in = (const unsigned char*)padded;
  unsigned char* out = (unsigned char*)values;
#pragma omp parallel num_threads(threads)
  {
    int64_t b, e;
    bounds(off, n, omp_get_num_threads(), omp_get_thread_num(), &b, &e);
    for (int64_t i = b; i < e; ++i)
      copy(out + off[i] * rb, in + i * L * rb, (off[i + 1] - off[i]) * rb, nt);
    if (nt) _mm_sfence();
  }
}

// to_padded, right padding, zero pad: fill=1 writes the pad rows (as scree does today),
// fill=0 assumes the output is already zero (calloc / np.zeros) and writes only data + mask.
void pad(const void* values, const int64_t* off, int64_t n, int64_t L, int64_t rb, void* padded, uint8_t* mask,
         int threads, int nt, int fill) {
  const unsigned char* in = (const unsigned char*)values;
  unsigned char* out = (unsigned char*)padded;
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    int64_t len = off[i + 1] - off[i];
    unsigned char* blk = out + i * L * rb;
    copy(blk, in + off[i] * rb, len * rb, nt);
    if (fill) { if (nt) zero_nt(blk + len * rb, (L - len) * rb); else memset(blk + len * rb, 0, (L - len) * rb); }
    memset(mask + i * L, 1, len);
    if (fill) memset(mask + i * L + len, 0, L - len);
  }
  if (nt) {
#pragma omp parallel num_threads(threads)
    _mm_sfence();
  }
}

// madvise(MADV_HUGEPAGE) on the 2 MiB-aligned interior of [p, p+bytes): what the proposed
// prepare_output() would do before a kernel first touches a fresh output.
int advise_huge(void* p, int64_t bytes) {
  uintptr_t a = ((uintptr_t)p + (2u << 20) - 1) & ~(uintptr_t)((2u << 20) - 1);
  uintptr_t e = ((uintptr_t)p + bytes) & ~(uintptr_t)((2u << 20) - 1);
  if (e <= a) return 0;
  return madvise((void*)a, e - a, MADV_HUGEPAGE);
}

// NumPy's way (numpy/_core/src/multiarray/alloc.c): madvise from the first 4 KiB page boundary
// inside the buffer to its end, so the whole mapping (whose start the kernel aligns to 2 MiB for
// large anonymous mmaps) stays one THP-eligible VMA.
int advise_huge_numpy_style(void* p, int64_t bytes) {
  uintptr_t a = ((uintptr_t)p + 4095) & ~(uintptr_t)4095;
  uintptr_t e = (uintptr_t)p + bytes;
  if (e <= a) return 0;
  return madvise((void*)a, e - a, MADV_HUGEPAGE);
}
