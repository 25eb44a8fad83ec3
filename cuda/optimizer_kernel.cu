// One launch updates every parameter: the flat buffer is walked with a grid-stride loop, each
// element finds its segment (kernel or bias of a layer, with that layer's L1/L2) and applies
// math::optimizer_update (math::moving_average in a moving-average segment). Config and step
// come from device memory, so a captured graph always uses the current learning rate and step
// count. The last block to finish ends the step (advances step and batch_start), which saves a
// separate one-thread launch per step. Norm clipping and LAMB need sums over whole segments
// first: segment_norms_kernel reduces them into the engine's scratch before the update.
#include <algorithm>

#include "check.h"
#include "fastmlp/math.h"
#include "kernels.h"
#include "reduce.cuh"

namespace fastmlp::cuda {
namespace {

constexpr int kThreads = 256;

// The regularized gradient of parameter k in segment seg (what clipping and the update see).
__device__ __forceinline__ float regularized_gradient(const ParamSegment& seg, float p, float g) {
  return g + math::regularization_grad(p, float(seg.l1), float(seg.l2));
}

// Sums of squares per segment into norms (math::segment_scale's layout): kPhase 0 the
// regularized gradients (and their global sum) for norm clipping; kPhase 1, for LAMB, the
// parameters and the direction of the clipped gradient, from the moments this step's update will
// compute (not stored here). Segment-major: blockIdx.y is the segment, each block reduces its
// share in double and adds it with one atomic (a per-thread atomic would serialize ~10^5 adds on
// one address). The order of the blocks' adds varies, so the last bits of these sums may differ
// from run to run (the CPU sums in a fixed order).
template <int kPhase>
__global__ void segment_norms_kernel(const float* __restrict__ params, const float* __restrict__ grads,
                                     const float* __restrict__ st0, const float* __restrict__ st1,
                                     const ParamSegment* __restrict__ segments, int n_segments,
                                     const OptimizerConfig* config, const TrainCounters* counters, double* norms) {
  __shared__ alignas(8) unsigned char c_raw[sizeof(OptimizerConfig)];
  __shared__ alignas(8) unsigned char s_raw[sizeof(math::StepScalars)];
  __shared__ bool skip_shared;
  __shared__ float grad_scale_shared;
  OptimizerConfig& c = *reinterpret_cast<OptimizerConfig*>(c_raw);
  math::StepScalars& s = *reinterpret_cast<math::StepScalars*>(s_raw);
  const int seg = blockIdx.y;
  const ParamSegment sg = segments[seg];
  if (threadIdx.x == 0) {
    c = *config;
    s = math::step_scalars(c, counters->step, counters->mu_product);
    skip_shared = counters->nonfinite != 0 || sg.moving_average;  // moving statistics are not trained
    // Phase 1 runs after phase 0 has finished (stream order): its sums are complete.
    grad_scale_shared = kPhase == 1 && (c.clipnorm > 0.0 || c.global_clipnorm > 0.0)
                            ? float(math::clip_scale(c, sqrt(norms[seg]), sqrt(norms[kSegmentNormSlots * n_segments])))
                            : 1.0f;
  }
  __syncthreads();
  if (skip_shared) return;  // the whole block returns together (block_sum below needs every thread)
  const float grad_scale = grad_scale_shared;
  double a = 0.0, b = 0.0;
  for (int64_t k = sg.offset + blockIdx.x * int64_t(blockDim.x) + threadIdx.x; k < sg.offset + sg.size;
       k += int64_t(gridDim.x) * blockDim.x) {
    const float p = params[k], g = regularized_gradient(sg, p, grads[k]);
    if (kPhase == 0) {
      a += double(g) * double(g);
    } else {
      const float gc = math::clipped_gradient(c, g, grad_scale);
      const float m = float(c.beta1) * st0[k] + float(1.0 - c.beta1) * gc;
      const float v = float(c.beta2) * st1[k] + float(1.0 - c.beta2) * gc * gc;
      const double r = double(math::lamb_direction(c, s, p, m, v));
      a += double(p) * double(p);
      b += r * r;
    }
  }
  a = block_sum(a);
  if (kPhase == 1) b = block_sum(b);
  if (threadIdx.x == 0) {
    if (kPhase == 0) {
      atomicAdd(&norms[seg], a);
      atomicAdd(&norms[kSegmentNormSlots * n_segments], a);
    } else {
      atomicAdd(&norms[n_segments + seg], a);
      atomicAdd(&norms[2 * n_segments + seg], b);
    }
  }
}

// kSlots: the state slots this optimizer owns. Only those are read and written, from registers,
// so no pointer aliases another (the unused ones would alias slot 0 or the parameters) and the
// compiler may overlap one element's loads with the previous element's stores.
template <int kSlots>
__global__ void optimizer_kernel(int64_t n_params, float* __restrict__ params, const float* __restrict__ grads,
                                 float* __restrict__ st0, float* __restrict__ st1, float* __restrict__ st2,
                                 const ParamSegment* __restrict__ segments, int n_segments, bool any_regularizer,
                                 const OptimizerConfig* config, const double* norms, TrainCounters* counters,
                                 int rows) {
  // Raw shared storage: __shared__ variables cannot have constructors.
  __shared__ alignas(8) unsigned char c_raw[sizeof(OptimizerConfig)];
  __shared__ alignas(8) unsigned char s_raw[sizeof(math::StepScalars)];
  __shared__ bool skip_shared;
  OptimizerConfig& c = *reinterpret_cast<OptimizerConfig*>(c_raw);
  math::StepScalars& s = *reinterpret_cast<math::StepScalars*>(s_raw);
  if (threadIdx.x == 0) {  // once per block, not per element: pow/cos of the schedule
    c = *config;
    s = math::step_scalars(c, counters->step, counters->mu_product);
    // Read once for the block: another block may set the flag meanwhile, and threads that read
    // it at different times would disagree about the block_sum barrier below.
    skip_shared = counters->nonfinite != 0;  // keep the last good weights
  }
  __syncthreads();
  const bool skip = skip_shared;
  double penalty = 0.0;
  bool overflowed = false;
  int seg = -1;
  math::SegmentScale scale;
  for (int64_t k = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; !skip && k < n_params;
       k += int64_t(gridDim.x) * blockDim.x) {
    int next = seg < 0 ? 0 : seg;
    while (next + 1 < n_segments && k >= segments[next + 1].offset) ++next;  // k only grows
    if (next != seg) {
      seg = next;
      scale = math::segment_scale(c, norms, n_segments, seg);
    }
    if (segments[seg].moving_average) {
      // BatchNormalization's moving statistics: grads[k] holds the batch statistic. Not trained,
      // so no optimizer state, decay or penalty; a non-finite average keeps the old value.
      const float m = math::moving_average(params[k], grads[k], segments[seg].momentum);
      if (isfinite(m)) params[k] = m;
      continue;
    }
    const float l1 = float(segments[seg].l1), l2 = float(segments[seg].l2);
    float p = params[k];
    float g = grads[k];
    float s0 = kSlots > 0 ? st0[k] : 0.0f, s1 = kSlots > 1 ? st1[k] : 0.0f, s2 = kSlots > 2 ? st2[k] : 0.0f;
    if (l1 != 0.0f || l2 != 0.0f) {
      penalty += double(math::regularization_penalty(p, l1, l2));
      g += math::regularization_grad(p, l1, l2);
    }
    g = math::clipped_gradient(c, g, float(scale.grad));
    overflowed |= !math::guarded_update(c, s, p, g, s0, s1, s2, float(scale.trust));
    params[k] = p;
    if (kSlots > 0) st0[k] = s0;
    if (kSlots > 1) st1[k] = s1;
    if (kSlots > 2) st2[k] = s2;
  }
  // Not nonfinite yet: blocks that start later must still see the skip flag this step began with
  // (as the CPU does, which updates every segment and flags the overflow afterwards).
  if (overflowed) {
    counters->update_overflow = 1;  // same value from every thread that saw one
    __threadfence();
  }
  if (any_regularizer && !skip) {
    penalty = block_sum(penalty);
    if (threadIdx.x == 0) atomicAdd(&counters->reg_sum, penalty * rows);
  }
  // Every block read counters->step above; only when all have finished may it advance.
  __shared__ bool last;
  if (threadIdx.x == 0) {
    __threadfence();
    last = atomicAdd(&counters->blocks_done, 1u) == gridDim.x - 1;
  }
  __syncthreads();
  if (last && threadIdx.x == 0) {
    counters->blocks_done = 0;
    if (!skip) {
      counters->step += 1;
      counters->mu_product *= s.mu;  // NAdam's running product (unused by the others)
    }
    counters->batch_start += rows;
    volatile int32_t* overflow = &counters->update_overflow;  // written by other blocks
    if (*overflow) {
      counters->nonfinite = 1;  // later steps are skipped; the weights stay finite
      *overflow = 0;
    }
  }
}

}  // namespace

void launch_optimizer(int64_t n_params, float* params, const float* grads, float* state, int slots,
                      const ParamSegment* segments, int n_segments, bool any_regularizer,
                      const OptimizerConfig* config, int norm_passes, double* segment_norms,
                      TrainCounters* counters, int rows, cudaStream_t s) {
  // Slots the optimizer does not own are null: the kernel for `slots` never touches them.
  float* st0 = slots > 0 ? state : nullptr;
  float* st1 = slots > 1 ? state + n_params : nullptr;
  float* st2 = slots > 2 ? state + 2 * n_params : nullptr;
  // A grid-stride loop over a few blocks per SM: each block pays once for the schedule's
  // pow/cos and one ticket atomic, so thousands of blocks cost more than they hide (measured on
  // an H100: 34 us per Adam step over 670k parameters with one block per 256 of them).
  static const int max_blocks = [] {
    int device = 0, sms = 0;
    cudaGetDevice(&device);
    cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
    return 4 * (sms > 0 ? sms : 32);
  }();
  int64_t blocks = (n_params + kThreads - 1) / kThreads;
  if (blocks > max_blocks) blocks = max_blocks;
  const double* norms = norm_passes ? segment_norms : nullptr;
  if (norm_passes) {
    // The passes a config needs run before the update (the clipping pass first: LAMB's reads
    // its factor); sums it does not need stay 0 and segment_scale ignores them.
    FASTMLP_CUDA_CHECK(cudaMemsetAsync(segment_norms, 0, sizeof(double) * (kSegmentNormSlots * n_segments + 1), s));
    // Enough blocks per segment to fill the GPU for the largest one (a grid-stride loop inside).
    const dim3 grid(unsigned(std::min<int64_t>(std::max<int64_t>(max_blocks / std::max(n_segments, 1), 1), 1024)),
                    unsigned(n_segments));
    if (norm_passes & kClipNormPass) {
      segment_norms_kernel<0><<<grid, kThreads, 0, s>>>(params, grads, st0, st1, segments, n_segments, config,
                                                         counters, segment_norms);
      FASTMLP_LAUNCH_CHECK("segment_norms_kernel<0>");
    }
    if (norm_passes & kTrustRatioPass) {
      segment_norms_kernel<1><<<grid, kThreads, 0, s>>>(params, grads, st0, st1, segments, n_segments, config,
                                                         counters, segment_norms);
      FASTMLP_LAUNCH_CHECK("segment_norms_kernel<1>");
    }
  }
  const auto kernel = slots == 0 ? optimizer_kernel<0>
                      : slots == 1 ? optimizer_kernel<1>
                      : slots == 2 ? optimizer_kernel<2>
                                   : optimizer_kernel<3>;
  kernel<<<int(blocks), kThreads, 0, s>>>(n_params, params, grads, st0, st1, st2, segments, n_segments,
                                          any_regularizer, config, norms, counters, rows);
  FASTMLP_LAUNCH_CHECK("optimizer_kernel");
}

}  // namespace fastmlp::cuda
