// Layout kernels on the CPU: pack, pad, unpad (by offsets or by mask) and gather of whole
// sequences. They move rows of bytes (row_bytes = prod(feature) * itemsize), so one compiled
// body serves every element type; only the pad value needs the element's bytes.
// Offsets are host int64 that RaggedLayout has already validated; the other arguments that can be
// checked without the buffers' sizes are checked here (scree::Error).
#pragma once

#include <cstdint>

namespace scree::ops {

// dst[offsets[i]:offsets[i+1]] = sources[i] for i < n.
void pack(const void* const* sources, const int64_t* offsets, int64_t n, int64_t row_bytes, void* dst);

// padded: (n, max_len, row); mask: (n, max_len) bytes (1 = token) or nullptr. Padding rows are
// filled with `pad_value` (elem_bytes bytes, repeated). left=true puts each sequence at the end.
// Throws ShapeMismatch when a sequence is longer than max_len, InvalidArgument when row_bytes is
// not a multiple of elem_bytes.
void pad(const void* values, const int64_t* offsets, int64_t n, int64_t max_len, int64_t row_bytes,
         const void* pad_value, int64_t elem_bytes, bool left, void* padded, uint8_t* mask);

// Inverse of pad: values[offsets[i] + j] = padded[i, j (+ max_len - len when left)]. Throws
// ShapeMismatch when a sequence is longer than max_len.
void unpad(const void* padded, const int64_t* offsets, int64_t n, int64_t max_len, int64_t row_bytes,
           bool left, void* values);

// offsets[0..n] from a (n, max_len) mask: lengths are the number of nonzero entries per row.
void mask_offsets(const uint8_t* mask, int64_t n, int64_t max_len, int64_t* offsets);

// values = padded[mask] (row order), with offsets from mask_offsets.
void unpad_mask(const void* padded, const uint8_t* mask, const int64_t* offsets, int64_t n, int64_t max_len,
                int64_t row_bytes, void* values);

// out_offsets[0..count] for sequences `indices` (each in [0, n), else scree::Error naming it;
// also InvalidArgument when the gathered total passes INT64_MAX).
void gather_offsets(const int64_t* offsets, int64_t n, const int64_t* indices, int64_t count,
                    int64_t* out_offsets);

// out[out_offsets[j]:out_offsets[j+1]] = values[offsets[indices[j]]:offsets[indices[j]+1]].
void gather(const void* values, const int64_t* offsets, const int64_t* indices, int64_t count,
            const int64_t* out_offsets, int64_t row_bytes, void* out);

}  // namespace scree::ops
