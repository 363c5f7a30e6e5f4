// The Hopper forward's rows-a-tile choice (src/cuda/attention/sm90/fwd_rows.h; host code, so it is
// tested here, without a GPU): 192 rows only at head dim 64 over per-sequence tiles of packed K/V,
// not for causal calls whose longest query sequence is at most 512; SCREE_SM90_FWD_ROWS forces
// either where 192 is possible and nothing elsewhere; turns only with 192 rows and
// SCREE_SM90_FWD_TURNS=1.
#include <gtest/gtest.h>

#include <cstdlib>
#include <string>

#include "../../src/cuda/attention/sm90/fwd_rows.h"

namespace {

using scree::cuda_attention::sm90::fwd_rows;

struct Env {  // sets (or unsets, value null) a variable for one scope, then puts its old value back
  const char* name;
  std::string old;
  bool had;
  Env(const char* n, const char* value) : name(n), had(std::getenv(n) != nullptr) {
    if (had) old = std::getenv(n);
    if (value != nullptr) {
      setenv(n, value, 1);
    } else {
      unsetenv(n);
    }
  }
  ~Env() {
    if (had) {
      setenv(name, old.c_str(), 1);
    } else {
      unsetenv(name);
    }
  }
};

TEST(Sm90FwdRows, AutoRule) {
  Env rows("SCREE_SM90_FWD_ROWS", nullptr), turns("SCREE_SM90_FWD_TURNS", nullptr);
  EXPECT_EQ(fwd_rows(64, true, false, 4096).rows, 192);
  EXPECT_EQ(fwd_rows(64, true, false, 129).rows, 192);
  EXPECT_EQ(fwd_rows(64, true, true, 4096).rows, 192);
  EXPECT_EQ(fwd_rows(64, true, true, 513).rows, 192);
  EXPECT_EQ(fwd_rows(64, true, true, 512).rows, 128);  // short causal: the diagonal tiles' waste
  EXPECT_EQ(fwd_rows(128, true, false, 4096).rows, 128);
  EXPECT_EQ(fwd_rows(64, false, false, 4096).rows, 128);  // packed, head-grouped or paged tiles
  EXPECT_FALSE(fwd_rows(64, true, false, 4096).turns);
}

TEST(Sm90FwdRows, Switches) {
  {
    Env rows("SCREE_SM90_FWD_ROWS", "128");
    EXPECT_EQ(fwd_rows(64, true, false, 4096).rows, 128);
  }
  {
    Env rows("SCREE_SM90_FWD_ROWS", "192"), turns("SCREE_SM90_FWD_TURNS", "1");
    EXPECT_EQ(fwd_rows(64, true, true, 100).rows, 192);
    EXPECT_TRUE(fwd_rows(64, true, true, 100).turns);
    EXPECT_EQ(fwd_rows(128, true, false, 4096).rows, 128);  // no 192-row kernel to force
    EXPECT_FALSE(fwd_rows(128, true, false, 4096).turns);
    EXPECT_EQ(fwd_rows(64, false, false, 4096).rows, 128);
  }
  {
    Env rows("SCREE_SM90_FWD_ROWS", "256"), turns("SCREE_SM90_FWD_TURNS", "0");  // unknown: the rule
    EXPECT_EQ(fwd_rows(64, true, true, 300).rows, 128);
    EXPECT_EQ(fwd_rows(64, true, false, 300).rows, 192);
    EXPECT_FALSE(fwd_rows(64, true, false, 300).turns);
  }
}

}  // namespace
