// Host-side CUDA runtime queries, compiled only when scree is built with CUDA (SCREE_WITH_CUDA).
#pragma once

namespace scree::cuda {

// Number of visible CUDA devices; 0 when there is no driver or no device (never throws).
int device_count() noexcept;

}  // namespace scree::cuda
