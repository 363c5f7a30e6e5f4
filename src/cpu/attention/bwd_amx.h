// Entry of the AMX bfloat16 backward (bwd_amx.cpp, compiled in the amx build only), called by
// bwd.cpp's varlen_bwd of that build for bfloat16 inputs.
#pragma once

#include "isa.h"

#include "scree/attention/params.h"

SCREE_CPU_NAMESPACE_BEGIN

void backward_bf16_amx(const attention::VarlenBackwardParams& p);

SCREE_CPU_NAMESPACE_END
