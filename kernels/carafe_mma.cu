// CARAFE forward on tensor cores, for float16 and bfloat16 at scale 2 and K in {3, 5} (opt-in:
// _cupy_kernels.reassemble(path="mma"), or TILED_MMA; not yet measured on a GPU):
//
//   out[b, c, 2y + dy, 2x + dx] = sum_k masks[b, g*K*K + k, 2y + dy, 2x + dx]
//                                       * features[b, c, y + ky - r, x + kx - r]
//
// Per low-resolution point (parent) this is a small matrix product, D[c, n] = sum_k A[c, k]
// B[k, n]: A = the parent's K x K feature window for 16 channels (16 x K*K), B = the masks of its
// s*s = 4 children (K*K x 4), D = the children's outputs. One mma.sync.m16n8k16 (fp32
// accumulation) takes 16 window offsets, so a parent costs one (K=3) or two (K=5). B's columns
// 4..7 are zero and D's are dropped: filling them with a second parent's children would need that
// parent's window in the same A, and a zero mask times an infinite feature would then leak NaN
// into the first parent's outputs.
//
// Why this shape. The FFMA kernel (reassemble_tiled) spends 100 FMA and 25 shared loads per
// channel and parent; for bfloat16 at the benchmark shape that issue alone is about the 60%
// target's time. Here the FMAs go to the tensor cores, and what remains is feeding them:
//  - Block: 8 warps; warp w owns parent row w of an 8 x 8-parent tile (16 x 16 outputs), one
//    parent at a time along x. B fragments (the masks) are loaded once per block into registers
//    (8 parents x k-steps x 2 registers) and reused for every channel.
//  - Features: the tile plus halo, 16 channels (one mma M) per chunk, double-buffered with
//    cp.async exactly as reassemble_tiled's async build (stage_halo_async_any, uplab_scalar.cuh).
//    A fragments are read from shared memory element by element (a window's offsets are not
//    contiguous, so ldmatrix does not apply), at lane-constant offsets; offsets past K*K read a
//    zero tail after the buffer instead of being predicated.
//  - Outputs: D holds (channel, child) pairs, which would reach global memory as 4-byte pieces
//    of 16 different rows. Each warp stages its 16 channels x 2 rows x 16 outputs in shared memory
//    (rows padded to 18 elements against bank conflicts) and writes them as whole 32-byte rows.
// By PTX count (nvcc -ptx, sm_90, bfloat16, K=5) a warp spends about 466 instructions per chunk
// of 16 channels x 8 parents, 3.6 per (channel, parent), against about 4.5 in reassemble_tiled
// (144 per channel for 32 parents, plus stores): fewer, but the element-wise A loads and their
// packing are now the bulk. Only a GPU run can say whether this beats the FFMA kernel.
// Grid: x = tiles of 8 x 8 parents, y = chunks of channels_per_block channels (a multiple of 16),
// z = batch * groups. Dynamic shared memory: mma_shared_mem() in _cupy_kernels.py.
#define CP_ASYNC_HELPERS 1
#include "uplab_scalar.cuh"

#define MMA_WARPS 8
#define MMA_PARENTS_X 8
#define MMA_CHANNELS 16
#define MMA_OUT_PITCH 18  // elements per staged output row (16 outputs + 2 of padding)
#define MMA_ZEROS 16      // zero elements after each staged buffer (>= MMA_PARENTS_X, 16 bytes)

template <typename T>
struct IsBfloat16 {
    static constexpr bool value = false;
};

template <>
struct IsBfloat16<bfloat16_t> {
    static constexpr bool value = true;
};

// d += A B for one warp (PTX ISA, mma.sync.aligned.m16n8k16.row.col.f32.{bf16,f16}).
template <typename T>
__device__ __forceinline__ void mma_16816(float (&d)[4], const unsigned int (&a)[4],
                                          const unsigned int (&b)[2]) {
#if defined(UPLAB_CUDA_ON_CPU)
    cuda_on_cpu::mma_m16n8k16<IsBfloat16<T>::value>(d, a, b, d);
#elif __CUDA_ARCH__ >= 800
    if constexpr (IsBfloat16<T>::value) {
        asm volatile(
            "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, "
            "{%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
            : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
    } else {
        asm volatile(
            "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, "
            "{%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
            : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
    }
#else
    __trap();  // the dispatcher never launches this below sm_80
#endif
}

__device__ __forceinline__ unsigned int pack_pair(unsigned short lo, unsigned short hi) {
    return static_cast<unsigned int>(lo) | (static_cast<unsigned int>(hi) << 16);
}

// Two accumulators as one packed pair of T, lo in the low half (one cvt on sm_80+: round to
// nearest even, as from_acc).
template <typename T>
__device__ __forceinline__ unsigned int pack_outputs(float lo, float hi) {
#if !defined(UPLAB_CUDA_ON_CPU) && __CUDA_ARCH__ >= 800
    unsigned int packed;
    if constexpr (IsBfloat16<T>::value) {
        asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(packed) : "f"(hi), "f"(lo));
    } else {
        asm("cvt.rn.f16x2.f32 %0, %1, %2;" : "=r"(packed) : "f"(hi), "f"(lo));
    }
    return packed;
#else
    return pack_pair(from_acc<T>(lo).bits, from_acc<T>(hi).bits);
#endif
}

template <typename T, int KS>
__launch_bounds__(MMA_WARPS * 32) __global__ void reassemble_mma(
    const T* __restrict__ features, const T* __restrict__ masks, T* __restrict__ out,
    int channels, int height, int width, int groups, int channels_per_block) {
    constexpr int R = (KS - 1) / 2, KK = KS * KS;
    constexpr int STEPS = (KK + 15) / 16;  // mma k-steps of 16 window offsets: 1 for K=3, 2 for K=5
    static_assert(STEPS <= 2, "K*K <= 32");
    DYNAMIC_SHARED_MEMORY(smem_raw);
    T* sbuf = reinterpret_cast<T*>(smem_raw);

    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    const int group_id = lane / 4, in_group = lane % 4;  // the mma fragments' lane coordinates
    const int out_h = 2 * height, out_w = 2 * width;
    const long long in_plane = (long long)height * width;
    const long long out_plane = (long long)out_h * out_w;
    const int tiles_x = (width + MMA_PARENTS_X - 1) / MMA_PARENTS_X;
    const int px0 = (blockIdx.x % tiles_x) * MMA_PARENTS_X;
    const int py0 = (blockIdx.x / tiles_x) * MMA_WARPS;
    const int b = blockIdx.z / groups, g = blockIdx.z % groups;
    const int group_channels = channels / groups;
    const int c_begin = blockIdx.y * channels_per_block;
    const int n_channels = min(channels_per_block, group_channels - c_begin);
    if (n_channels <= 0) return;  // uniform over the block, before any barrier
    const int prow = py0 + warp;  // this warp's parent row

    // B fragments: column n = group_id is child n of the parent (n < 4: dy = n / 2, dx = n % 2),
    // rows k = 16 * step + 2 * in_group + {0, 1} (register 0) and + 8 (register 1).
    unsigned int bfrag[MMA_PARENTS_X][STEPS][2];
    const T* mask_bg = masks + ((long long)b * groups + g) * KK * out_plane;
    const int dy = group_id / 2, dx = group_id % 2;
#pragma unroll
    for (int p = 0; p < MMA_PARENTS_X; ++p) {
        const bool child = group_id < 4 && prow < height && px0 + p < width;
        const long long pixel = (long long)(2 * prow + dy) * out_w + 2 * (px0 + p) + dx;
#pragma unroll
        for (int step = 0; step < STEPS; ++step) {
#pragma unroll
            for (int r = 0; r < 2; ++r) {
                const int k = 16 * step + 2 * in_group + 8 * r;
                const unsigned short lo =
                    child && k < KK ? mask_bg[k * out_plane + pixel].bits : 0;
                const unsigned short hi =
                    child && k + 1 < KK ? mask_bg[(k + 1) * out_plane + pixel].bits : 0;
                bfrag[p][step][r] = pack_pair(lo, hi);
            }
        }
    }

    // Feature staging, as reassemble_tiled's async build: rows py0 - R .. py0 + MMA_WARPS + R,
    // columns from px0 - R rounded down to the copy width.
    const int halo_w = MMA_PARENTS_X + 2 * R, halo_h = MMA_WARPS + 2 * R;
    const int row_stride = async_row_stride<T>(halo_w), chunk_plane = halo_h * row_stride;
    // Each buffer: MMA_CHANNELS staged planes, then MMA_ZEROS zeros that the window offsets past
    // K*K read instead (no predicate in the loop; a zero times a zero mask stays zero).
    const int zeros = MMA_CHANNELS * chunk_plane, buffer = zeros + MMA_ZEROS;
    const long long first_channel =
        (long long)b * channels + (long long)g * group_channels + c_begin;
    const T* feat = features + first_channel * in_plane;
    const int copy_elems = async_copy_elems(features, width);
    const int step_elems = copy_elems > 0 ? copy_elems : 1;
    const int x0 = px0 - R, xa = x0 & -step_elems;
    const int n_copies = (x0 - xa + halo_w + step_elems - 1) / step_elems;
    // A fragments: rows (channels) group_id and group_id + 8, window offsets k as for B. A lane's
    // offsets are fixed, so are their positions in a buffer: the window of this warp's parent p
    // starts at staged row `warp`, column p + (x0 - xa); offsets past K*K read the zeros.
    const int window0 = warp * row_stride + (x0 - xa);
    int a_lo[STEPS][2][2], a_hi[STEPS][2][2];  // [step][r][h]: k = 16 step + 2 in_group + 8 r + h
#pragma unroll
    for (int step = 0; step < STEPS; ++step) {
#pragma unroll
        for (int r = 0; r < 2; ++r) {
#pragma unroll
            for (int h = 0; h < 2; ++h) {
                const int k = 16 * step + 2 * in_group + 8 * r + h;
                const int at = window0 + (k / KS) * row_stride + k % KS;
                a_lo[step][r][h] = k < KK ? group_id * chunk_plane + at : zeros;
                a_hi[step][r][h] = k < KK ? (group_id + 8) * chunk_plane + at : zeros;
            }
        }
    }
    if (threadIdx.x < 2 * MMA_ZEROS) {
        sbuf[(threadIdx.x / MMA_ZEROS) * buffer + zeros + threadIdx.x % MMA_ZEROS] =
            from_acc<T>(0.0f);  // ordered before any read by the first chunk's barrier
    }
    T* ostage = sbuf + 2 * buffer + warp * (2 * MMA_CHANNELS * MMA_OUT_PITCH);
    // Output pass: lane -> staged row 4 pass + lane / 8 (channel 2 pass + lane / 16, child row
    // lane / 8 % 2), two outputs at column 2 (lane % 8).
    const int out_row = lane / 8, out_col = 2 * (lane % 8);
    const int out_y = 2 * prow + out_row % 2, out_x = 2 * px0 + out_col;
    const bool out_inside = out_y < out_h && out_x < out_w;
    const T* out_from = ostage + out_row * MMA_OUT_PITCH + out_col;
    T* out_to = out + (first_channel + out_row / 2) * out_plane + (long long)out_y * out_w + out_x;

    const int n_chunks = (n_channels + MMA_CHANNELS - 1) / MMA_CHANNELS;
    stage_halo_async_any(copy_elems, feat, sbuf, min(MMA_CHANNELS, n_channels), in_plane, height,
                         width, py0 - R, xa, halo_h, n_copies, row_stride);
    async_commit();
    for (int i = 0; i < n_chunks; ++i) {
        const int c0 = i * MMA_CHANNELS, nc = min(MMA_CHANNELS, n_channels - c0);
        if (i + 1 < n_chunks) {
            const int c1 = c0 + MMA_CHANNELS;
            stage_halo_async_any(copy_elems, feat + c1 * in_plane, sbuf + ((i + 1) & 1) * buffer,
                                 min(MMA_CHANNELS, n_channels - c1), in_plane, height, width,
                                 py0 - R, xa, halo_h, n_copies, row_stride);
        }
        async_commit();  // empty after the last chunk, so that "all but the newest" is chunk i
        async_wait_all_but_newest();
        __syncthreads();
        // Channels past nc hold stale values; their D rows are computed and never stored.
        const T* chunk = sbuf + (i & 1) * buffer;
#pragma unroll
        for (int p = 0; p < MMA_PARENTS_X; ++p) {
            float d[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll
            for (int step = 0; step < STEPS; ++step) {
                unsigned int a[4];
#pragma unroll
                for (int r = 0; r < 2; ++r) {
                    const T* at = chunk + p;  // + a lane offset: parent p's window element
                    a[2 * r] = pack_pair(at[a_lo[step][r][0]].bits, at[a_lo[step][r][1]].bits);
                    a[2 * r + 1] = pack_pair(at[a_hi[step][r][0]].bits, at[a_hi[step][r][1]].bits);
                }
                mma_16816<T>(d, a, bfrag[p][step]);
            }
            // D: rows group_id (d[0], d[1]) and group_id + 8 (d[2], d[3]), columns (children)
            // 2 * in_group and + 1: child row dy = in_group, columns dx = 0, 1 (in_group < 2).
            if (in_group < 2) {
                T* s = ostage + (2 * group_id + in_group) * MMA_OUT_PITCH + 2 * p;
                *reinterpret_cast<unsigned int*>(s) = pack_outputs<T>(d[0], d[1]);
                *reinterpret_cast<unsigned int*>(s + 2 * 8 * MMA_OUT_PITCH) =
                    pack_outputs<T>(d[2], d[3]);
            }
        }
        __syncwarp();
        // The warp's 16 channels x 2 rows x 16 outputs, one 4-byte pair per lane and pass.
        T* to = out_to + c0 * out_plane;
#pragma unroll
        for (int pass = 0; pass < MMA_CHANNELS / 2; ++pass, to += 2 * out_plane) {
            if (out_inside && 2 * pass + out_row / 2 < nc) {
                *reinterpret_cast<unsigned int*>(to) =
                    *reinterpret_cast<const unsigned int*>(out_from + 4 * pass * MMA_OUT_PITCH);
            }
        }
        __syncwarp();
        __syncthreads();
    }
}
