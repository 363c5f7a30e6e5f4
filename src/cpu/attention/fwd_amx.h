// Entry of the AMX bfloat16 forward (fwd_amx.cpp, compiled in the amx build only), called by
// fwd.cpp's varlen_fwd of that build for bfloat16 inputs.
#pragma once

#include "isa.h"

#include "scree/attention/params.h"

SCREE_CPU_NAMESPACE_BEGIN

void forward_bf16_amx(const attention::VarlenParams& p);

SCREE_CPU_NAMESPACE_END
