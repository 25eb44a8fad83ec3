// FASTMLP_VECTOR_CLONES: compile a loop for several x86-64 vector widths and pick one when the
// library loads.
//
// The wheel is built for any x86-64 (no -march), which gives the compiler SSE2 only: 4 floats per
// instruction on a CPU that may do 16. GCC's target_clones emits one copy of the function per
// entry below plus a resolver (a glibc ifunc) that chooses the widest the CPU supports, once, at
// load time. The math.h functions the loops call are always_inline, so they are compiled into
// each copy. Measured on the project's AVX-512 machine, 784-100-10 SGD at batch 1: 30 µs per row
// with SSE2 against 21 µs with AVX-512 (the optimizer pass alone went from 38% of the step to
// under 15%).
//
// ISA names only, no "arch=": GCC does not inline a function compiled for another -march into
// the clone, and the loops need math.h inlined.
#pragma once

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(FASTMLP_NO_VECTOR_CLONES)
#define FASTMLP_VECTOR_CLONES __attribute__((target_clones("default", "avx2", "avx512f")))
#else
#define FASTMLP_VECTOR_CLONES
#endif
