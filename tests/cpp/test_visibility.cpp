// visible_queries (the key-side inverse of visible_keys, used by the backward kernels to find the
// query tiles a key tile needs) against brute force over visible_keys: every small length pair,
// causal or not, windows bounded or not on each side, every key range.
#include <gtest/gtest.h>

#include <cstdint>

#include "scree/attention/params.h"

namespace {

using scree::attention::KeyRange;
using scree::attention::QueryRange;
using scree::attention::VarlenParams;

TEST(Visibility, QueriesOfKeysMatchBruteForce) {
  int checked = 0;
  for (bool causal : {false, true})
    for (int64_t left : {-1, 0, 1, 3, 7})
      for (int64_t right : {-1, 0, 2, 5}) {
        VarlenParams p;
        p.causal = causal, p.window_left = left, p.window_right = right;
        for (int64_t Lq = 0; Lq <= 13; ++Lq)
          for (int64_t Lk = 0; Lk <= 13; ++Lk)
            for (int64_t j0 = -1; j0 <= Lk + 1; ++j0)
              for (int64_t j1 = j0; j1 <= Lk + 2; ++j1) {
                int64_t lo = -1, hi = -1;
                for (int64_t i = 0; i < Lq; ++i) {
                  const KeyRange r = scree::attention::visible_keys(p, i, Lq, Lk);
                  const bool sees = (r.lo < j1 && r.hi > j0 && r.lo < r.hi && r.hi > 0 && r.lo < Lk) &&
                                    (r.lo > j0 ? r.lo : j0) < (r.hi < j1 ? r.hi : j1);
                  if (sees) {
                    if (lo < 0) lo = i;
                    ASSERT_TRUE(hi < 0 || hi == i) << "the queries seeing a key range are not one range";
                    hi = i + 1;
                  }
                }
                const QueryRange q = scree::attention::visible_queries(p, j0, j1, Lq, Lk);
                if (lo < 0) {
                  EXPECT_EQ(q.lo, q.hi) << "causal " << causal << " left " << left << " right " << right << " Lq " << Lq
                                        << " Lk " << Lk << " keys [" << j0 << ", " << j1 << ")";
                } else {
                  EXPECT_EQ(q.lo, lo) << "causal " << causal << " left " << left << " right " << right << " Lq " << Lq
                                      << " Lk " << Lk << " keys [" << j0 << ", " << j1 << ")";
                  EXPECT_EQ(q.hi, hi) << "causal " << causal << " left " << left << " right " << right << " Lq " << Lq
                                      << " Lk " << Lk << " keys [" << j0 << ", " << j1 << ")";
                }
                ++checked;
              }
      }
  EXPECT_GT(checked, 100000);
}

}  // namespace
