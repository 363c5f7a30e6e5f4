// Scores as the spec defines them (DESIGN §3): s = scale * q.k, then softcap * tanh(s / softcap)
// when a softcap is set, and the derivative the backward needs. One definition for the forward,
// the backward and the dq kernels.
#pragma once

#include "scree/attention/params.h"

namespace scree::cuda_attention {

constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

struct ScoreMap {
  float scale;       // p.scale
  float softcap;     // 0 = off
  float inv_softcap;
  float scale_log2;  // scale * log2(e): the forward's exp2 argument straight from q.k (folds())

  static ScoreMap from(const attention::VarlenParams& p) {
    const float cap = float(p.softcap);
    return {float(p.scale), cap, cap > 0.f ? 1.f / cap : 0.f, float(p.scale) * kLog2e};
  }
  // The forward may work on raw q.k (max and exp2 through scale_log2) when the score is a positive
  // multiple of it: no softcap, scale > 0 (a max of q.k is then a max of the scores). The forward
  // kernels are instantiated both ways; their launchers pick with this.
  bool folds() const { return softcap == 0.f && scale > 0.f; }
  __device__ __forceinline__ float operator()(float qk) const {
    const float s = qk * scale;
    return softcap > 0.f ? softcap * tanhf(s * inv_softcap) : s;
  }
  // d(score)/d(qk) given the score: scale, times 1 - tanh^2 when capped.
  __device__ __forceinline__ float grad(float s) const {
    if (softcap > 0.f) {
      const float t = s * inv_softcap;
      return scale * (1.f - t * t);
    }
    return scale;
  }
};

}  // namespace scree::cuda_attention
