// CARAFE forward on tensor cores, for float16 and bfloat16 at scale 2 and K in {3, 5}: what
// uplab.ops.cuda.launchers.reassemble's "auto" picks there (variants.TILED_MMA, on by default;
// path="mma" forces it).
//
//   out[b, c, 2y + dy, 2x + dx] = sum_k masks[b, g*K*K + k, 2y + dy, 2x + dx]
//                                       * features[b, c, y + ky - r, x + kx - r]
//
// Per low-resolution point (parent) this is a small matrix product, D[c, n] = sum_k A[c, k]
// B[k, n]: A = the parent's K x K feature window for 16 channels (16 x K*K), B = the masks of its
// s*s = 4 children (K*K x 4), D = the children's outputs. One mma.sync.m16n8k16 (fp32
// accumulation) takes 16 window offsets, so a parent costs one (K=3) or two (K=5).
//  - K = 3: one parent per mma; B's columns 4..7 are zero and D's are dropped (parents_mma).
//  - K = 5: two neighbouring parents per mma (parent_pairs_mma). Their windows' union, six columns
//    by five rows, fits the 15 pair slots one parent's window already takes, so A serves both and
//    B's columns 4..7 hold the second parent's children: half the mma, and no masking of A. A zero
//    mask times a non-finite feature in the other parent's column would leak NaN, so a chunk whose
//    D has a NaN is recomputed exactly (per parent, A masked), which keeps the PyTorch path's
//    non-finite outputs where they belong. Measured on an H100: docs/benchmarks.md.
//
// Why this shape. The FFMA kernel (reassemble_tiled) spends 100 FMA and 25 shared loads per
// channel and parent; for bfloat16 at the benchmark shape that issue alone is about the 60%
// target's time. Here the FMAs go to the tensor cores, and what remains is feeding them:
//  - Block: MMA_WARPS_Y x MMA_WARPS_X warps over a tile of MMA_WARPS_Y parent rows, MMA_WARPS_X
//    warps a row, each warp 8 parents of its row, one parent at a time along x. Shipped: 16 warps
//    over 32 x 4 parents (64 x 8 outputs), the fastest tile on an H100 (0.364 ms bf16 at K = 5
//    against 0.386 ms for 8 x 8, 66b4ab2, 2026-11-26; docs/benchmarks.md); the variants: 8 warps
//    over 8 x 8, 16 over 16 x 8. B fragments (the masks) are loaded once per block into
//    registers (8 parents x k-steps x 2 registers) and reused for every channel.
//  - Features: the tile plus halo, 16 channels (one mma M) per slab, in a cp.async pipeline of
//    MMA_STAGES buffers of MMA_SLABS slabs (one barrier per buffer), in 4-byte copies (element
//    copies for an odd width or a misaligned base); each thread owns one (row, copy) position of
//    the halo for the whole kernel (stage_chunk).
//  - A fragments, one 32-bit shared load per register: a register holds window offsets k = 2P and
//    2P + 1, so the window is numbered in pairs of horizontally adjacent elements ("pair slots"
//    P = ky * PAIRS + j, PAIRS = (K + 1) / 2 per row, row-major), and a pair is one aligned word.
//    A window starting at an odd column begins its pairs one column early (kx = -1), one starting
//    at an even column ends them one column late (kx = K); that extra element, and the slots past
//    K * PAIRS, are zeroed in the register (an AND with a per-lane mask) and get zero masks in B,
//    so a non-finite feature outside the window cannot reach the sum. Slots past K * PAIRS
//    re-read the last real slot's word.
//  - Bank conflicts: a warp's A load has 8 channels (group_id) x 4 pair slots (in_group). With
//    row-major slots and rows of halo_w + 2 elements (MMA_ROW_STRIDE, the staged width of the
//    4-byte copies) each load touches 32 distinct banks, one wavefront (checked for K = 3 and 5
//    by enumeration and by the emulator's bank trace, tests/ops/test_kernels_on_cpu.py). Loading
//    A element by element from rows padded to 16-byte copies would take 16 loads per parent and
//    step, at 3.6 (K = 5) and 2.8 (K = 3) wavefronts each by the same trace.
//  - Outputs straight from the D fragments: lane (group_id, in_group < 2) holds, after a warp's 8
//    parents, 16 consecutive outputs (32 bytes) of child row in_group for channels group_id and
//    group_id + 8. It hands the second half of each row to lane in_group + 2 (whose D columns are
//    the unused children 4..7), and each lane writes 16 bytes: a store instruction covers 16 rows'
//    32 contiguous bytes (whole sectors when the width is a multiple of 8), with no shared-memory
//    round trip. Tiles at the right edge, or rows not 16-byte aligned, store 4 bytes per parent.
//    The 16-byte store is PTX (store_16_bytes): the compilers split the C++ one into four.
// Shared-memory wavefronts per parent and 16 channels: 8 A loads in the source for K = 5 (4 for
// K = 3), about 5 after the compiler merges the loads of parents p and p + 1, which read the same
// words with different masks; 16-bit A loads at 3.6 wavefronts and outputs staged through shared
// memory would need about 58. Measured on an H100: docs/benchmarks.md.
// Grid: x = tiles of MMA_TILE_W x MMA_WARPS_Y parents (with MMA_STRIP, strips of strip_tiles
// tiles down a column), y = chunks of channels_per_block channels (a multiple of 16),
// z = batch * groups. Dynamic shared memory: mma_shared_mem() in src/uplab/ops/cuda/geometry.py.
#define CP_ASYNC_HELPERS 1
#include "uplab_scalar.cuh"

#define MMA_PARENTS_X 8  // parents of a warp, along x
// The tile (variants.MmaVariant builds others with -D): a block of MMA_WARPS_Y x MMA_WARPS_X
// warps owns MMA_WARPS_Y parent rows of MMA_TILE_W parents, MMA_WARPS_X warps a row. A wider tile
// reads fewer feature sectors per parent: a halo row of 8 parents (12 elements at K = 5) always
// spans two 32-byte sectors, one of 16 parents three, one of 32 four (the emulator's sector trace,
// docs/benchmarks.md); the halo rows' share shrinks with the rows.
#ifndef MMA_WARPS_Y
#define MMA_WARPS_Y 4
#endif
#ifndef MMA_WARPS_X
#define MMA_WARPS_X 4
#endif
#define MMA_TILE_W (MMA_PARENTS_X * MMA_WARPS_X)
#define MMA_THREADS (MMA_WARPS_Y * MMA_WARPS_X * 32)
#define MMA_CHANNELS 16
// The feature pipeline (variants.MmaVariant builds others with -D): MMA_STAGES buffers of
// MMA_SLABS 16-channel slabs, staged together and computed one after another.
#ifndef MMA_STAGES
#define MMA_STAGES 3
#endif
#ifndef MMA_SLABS
#define MMA_SLABS 1
#endif
// Strips (variants.MmaVariant(strip=True) builds MMA_STRIP=1): a block computes strip_tiles
// tiles down a column, one after another, and keeps the bottom 2R halo rows of each tile's
// channels in shared memory (the carry, [channel][2R rows][MMA_ROW_STRIDE]) as the top 2R halo rows
// of the next, so that a column's overlapping halo rows are read from global memory once: at K = 5
// an 8 x 8 tile stages 12 rows, its successors in the strip 8. The launcher picks strip_tiles
// (mma_strip_tiles); without MMA_STRIP the kernel computes one tile and strip_tiles must be 1.
#ifndef MMA_STRIP
#define MMA_STRIP 0
#endif
#define MMA_STAGE_CHANNELS (MMA_CHANNELS * MMA_SLABS)
// Elements per staged feature row: halo_w = MMA_TILE_W + K - 1, one element of start shift
// (4-byte copies) and one of a pair's overhang; also what makes the A loads conflict-free (above).
#define MMA_ROW_STRIDE(K) (MMA_TILE_W + (K) + 1)
// Elements per staged channel: the halo rows, padded to a size in 4-byte words of 4 past a
// multiple of 8, so that the 8 channels of an A load start at 8 distinct multiples of 4 banks. The
// 8 x 8 and the 16 x 8 tiles need no padding; the shipped 32 x 4 tile at K = 5 needs 4 words
// (152 -> 156), without which its A loads take two wavefronts.
#define MMA_CHUNK_PLANE(K) \
    (2 * ((MMA_WARPS_Y + (K) - 1) * MMA_ROW_STRIDE(K) / 2 + \
          (12 - (MMA_WARPS_Y + (K) - 1) * MMA_ROW_STRIDE(K) / 2 % 8) % 8))

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

// Window column of element h (0: low half, 1: high) of pair j in a window that starts at an odd
// (odd = 1) or even staged column; outside [0, K) the element is not the window's.
__device__ __forceinline__ int pair_column(int j, int h, int odd) { return 2 * j + h - odd; }

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

// The lane's A fragment of one k-step from the window whose first pair slot is `window`: the
// words of pair slots [step][r] for channels group_id (a[2r]) and group_id + 8 (a[2r + 1]).
template <int KS, int STEPS>
__device__ __forceinline__ void load_a(const unsigned int* window, const int (&a_word)[STEPS][2],
                                       int step, unsigned int (&a)[4]) {
    constexpr int kPlaneWords = MMA_CHUNK_PLANE(KS) / 2;
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        const unsigned int* at = window + a_word[step][r];
        a[2 * r] = shared_load(at);
        a[2 * r + 1] = shared_load(at + 8 * kPlaneWords);
    }
}

// This warp's 8 parents for one staged chunk: out[h][p] packs parent p's two outputs of child
// row in_group (children 2 in_group, 2 in_group + 1) for channel group_id + 8 h (meaningful in
// lanes in_group < 2). `row` is the chunk's first element of the warp's first window row (4-byte
// aligned); S0 = 1 when parent 0's window starts at an odd column of it (then the windows of the
// even parents do). a_word: the lane's pair slots as word offsets (channel group_id); keep: their
// masks for windows at even [0] and odd [1] columns.
template <typename T, int KS, int S0, int STEPS>
__device__ __forceinline__ void parents_mma(const T* row, const int (&a_word)[STEPS][2],
                                            const unsigned int (&keep)[2][STEPS][2],
                                            const unsigned int (&bfrag)[MMA_PARENTS_X][STEPS][2],
                                            unsigned int (&out)[2][MMA_PARENTS_X]) {
    const unsigned int* words = reinterpret_cast<const unsigned int*>(row);
#pragma unroll
    for (int p = 0; p < MMA_PARENTS_X; ++p) {
        const int odd = (S0 + p) % 2;                       // compile-time once unrolled
        const unsigned int* window = words + (S0 + p) / 2;  // parent p's first pair
        float d[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll
        for (int step = 0; step < STEPS; ++step) {
            unsigned int a[4];
            load_a<KS>(window, a_word, step, a);
#pragma unroll
            for (int i = 0; i < 4; ++i) a[i] = keep[odd][step][i / 2] & a[i];
            mma_16816<T>(d, a, bfrag[p][step]);
        }
        // D: rows (channels) group_id (d[0], d[1]) and group_id + 8 (d[2], d[3]), columns
        // (children) 2 in_group and 2 in_group + 1.
        out[0][p] = pack_outputs<T>(d[0], d[1]);
        out[1][p] = pack_outputs<T>(d[2], d[3]);
    }
}

// K = 5: one mma per pair of parents (2q, 2q + 1) and k-step. Their windows start at staged
// columns 2q and 2q + 1 (x_shift is 0 at K = 5), so the union is six columns, three pair slots per
// row, the same 15 slots as one parent's: A is loaded once for both, B's columns 0..3 are the
// children of parent 2q and 4..7 those of parent 2q + 1, each zero at the other's extra column.
// That halves the mma and needs no AND, but a zero mask times a non-finite feature in the other
// parent's column would turn into NaN: every NaN in D (of a channel below nc) sends the warp's
// chunk through the exact path, two mma per pair with A's extra column cleared for each parent
// (the per-parent kernel's AND masks), so outputs keep the PyTorch path's non-finite values where
// they belong. out[h][q]: lane in_group's parent 2q + in_group / 2, child row in_group % 2.
template <typename T, int KS, int STEPS>
__device__ __forceinline__ void parent_pairs_mma(
    const T* row, const int (&a_word)[STEPS][2], const unsigned int (&keep)[2][STEPS][2],
    const unsigned int (&bfrag)[MMA_PARENTS_X / 2][STEPS][2], int group_id, int in_group, int nc,
    unsigned int (&out)[2][MMA_PARENTS_X / 2]) {
    constexpr int kPairs = MMA_PARENTS_X / 2;
    const unsigned int* words = reinterpret_cast<const unsigned int*>(row);
    float d[kPairs][4];
    bool nan = false;
#pragma unroll
    for (int q = 0; q < kPairs; ++q) {
        const unsigned int* window = words + q;  // the pair's first union pair slot
#pragma unroll
        for (int i = 0; i < 4; ++i) d[q][i] = 0.0f;
#pragma unroll
        for (int step = 0; step < STEPS; ++step) {
            unsigned int a[4];
            load_a<KS>(window, a_word, step, a);
            mma_16816<T>(d[q], a, bfrag[q][step]);
        }
        // bitwise, not short-circuit: no branches in the common path
        nan |= ((group_id < nc) & ((d[q][0] != d[q][0]) | (d[q][1] != d[q][1]))) |
               ((group_id + 8 < nc) & ((d[q][2] != d[q][2]) | (d[q][3] != d[q][3])));
    }
    if (__any_sync(0xffffffffu, nan)) {
#pragma unroll
        for (int q = 0; q < kPairs; ++q) {
            const unsigned int* window = words + q;
            float first[4] = {0.0f, 0.0f, 0.0f, 0.0f}, second[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll
            for (int step = 0; step < STEPS; ++step) {
                unsigned int a[4], a_first[4], a_second[4];
                load_a<KS>(window, a_word, step, a);
#pragma unroll
                for (int i = 0; i < 4; ++i) {
                    a_first[i] = a[i] & keep[0][step][i / 2];
                    a_second[i] = a[i] & keep[1][step][i / 2];
                }
                mma_16816<T>(first, a_first, bfrag[q][step]);
                mma_16816<T>(second, a_second, bfrag[q][step]);
            }
#pragma unroll
            for (int i = 0; i < 4; ++i) d[q][i] = in_group < 2 ? first[i] : second[i];
        }
    }
#pragma unroll
    for (int q = 0; q < kPairs; ++q) {
        out[0][q] = pack_outputs<T>(d[q][0], d[q][1]);
        out[1][q] = pack_outputs<T>(d[q][2], d[q][3]);
    }
}

// Four words to 16-byte-aligned global memory in one instruction. Written in PTX because nvcc
// and NVRTC (CUDA 13) split the equivalent uint4 store here into four 4-byte stores: each output
// sector then takes four L2 write requests (Nsight Compute on an H100, 9735def, 2026-11-26: 3.5x
// the output's sectors, L2 at 78% of its peak, DRAM at 17%).
__device__ __forceinline__ void store_16_bytes(void* to, const unsigned int (&words)[4]) {
#if defined(UPLAB_CUDA_ON_CPU)
    if (reinterpret_cast<unsigned long long>(to) % 16 != 0) {
        cuda_on_cpu::fail("16-byte global store not aligned to 16 bytes");
    }
    *static_cast<uint4*>(to) = make_uint4(words[0], words[1], words[2], words[3]);
#else
    asm volatile("st.global.v4.b32 [%0], {%1, %2, %3, %4};\n" ::"l"(to), "r"(words[0]),
                 "r"(words[1]), "r"(words[2]), "r"(words[3])
                 : "memory");
#endif
}

// Writes a warp's packed outputs (parents_mma) for one chunk: channel group_id + 8 h (h < 2) of
// the nc staged ones, at `to` + 8 h planes (the lane's output row, first parent of the tile);
// parents below n_parents are inside the map. whole_rows (uniform over the warp): all 8 parents
// inside and rows 16-byte aligned, so the 16 outputs of a row go as two 16-byte halves, the second
// from lane in_group + 2 after a shuffle.
template <typename T>
__device__ __forceinline__ void store_rows(const unsigned int (&packed)[2][MMA_PARENTS_X], T* to,
                                           long long out_plane, bool whole_rows, int nc,
                                           int n_parents, int group_id, int in_group) {
    if (whole_rows) {
        const int half = in_group / 2;  // parents 4 half .. 4 half + 3
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            unsigned int words[4];
#pragma unroll
            for (int q = 0; q < 4; ++q) {
                const unsigned int theirs = __shfl_xor_sync(0xffffffffu, packed[h][4 + q], 2);
                words[q] = half ? theirs : packed[h][q];
            }
            if (group_id + 8 * h < nc) store_16_bytes(to + h * 8 * out_plane + 8 * half, words);
        }
    } else if (in_group < 2) {
#pragma unroll
        for (int h = 0; h < 2; ++h) {
#pragma unroll
            for (int p = 0; p < MMA_PARENTS_X; ++p) {
                if (group_id + 8 * h < nc && p < n_parents) {
                    *reinterpret_cast<unsigned int*>(to + h * 8 * out_plane + 2 * p) = packed[h][p];
                }
            }
        }
    }
}

// store_rows for parent_pairs_mma's layout: lane in_group holds parents 2q + in_group / 2 of
// child row in_group % 2. With whole_rows, lane in_group < 2 stores parents 0..3 of its row and
// lane in_group + 2 parents 4..7, 16 bytes each, after swapping two words per channel half with
// each other (the partner's odd or even parents); else each lane stores its own parents inside
// the map, 4 bytes each.
template <typename T>
__device__ __forceinline__ void store_pair_rows(const unsigned int (&packed)[2][MMA_PARENTS_X / 2],
                                                T* to, long long out_plane, bool whole_rows,
                                                int nc, int n_parents, int group_id,
                                                int in_group) {
    const int half = in_group / 2;
    if (whole_rows) {
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            unsigned int theirs[2];
#pragma unroll
            for (int k = 0; k < 2; ++k) {
                const unsigned int mine = half ? packed[h][k] : packed[h][2 + k];
                theirs[k] = __shfl_xor_sync(0xffffffffu, mine, 2);
            }
            unsigned int words[4];
            if (half) {  // parents 4..7: 4, 6 from the partner, 5, 7 this lane's
                words[0] = theirs[0];
                words[1] = packed[h][2];
                words[2] = theirs[1];
                words[3] = packed[h][3];
            } else {  // parents 0..3: 0, 2 this lane's, 1, 3 from the partner
                words[0] = packed[h][0];
                words[1] = theirs[0];
                words[2] = packed[h][1];
                words[3] = theirs[1];
            }
            if (group_id + 8 * h < nc) store_16_bytes(to + h * 8 * out_plane + 8 * half, words);
        }
    } else {
#pragma unroll
        for (int h = 0; h < 2; ++h) {
#pragma unroll
            for (int q = 0; q < MMA_PARENTS_X / 2; ++q) {
                const int p = 2 * q + half;
                if (group_id + 8 * h < nc && p < n_parents) {
                    *reinterpret_cast<unsigned int*>(to + h * 8 * out_plane + 2 * p) = packed[h][q];
                }
            }
        }
    }
}

// This thread's share of staging any chunk: one (row, copy) position of the halo, fixed for the
// whole kernel, for channels first, first + step, ... of the chunk (n_positions = halo rows x
// copies per row <= the block's threads; step = blockDim.x / n_positions threads share a
// position). Fixing it once replaces the flattened-index walk of stage_halo_async, whose carries
// and 64-bit address arithmetic take about 48 instructions per 4-byte copy (sm_90 SASS), most of
// this kernel's instructions at 5 to 6 copies per thread and chunk; the loop below takes about 12
// (Nsight Compute on an H100, 9735def -> adb83b0, 2026-11-26, with the 16-byte stores: 360 M ->
// 199 M warp instructions at 16x256x128x128).
struct StagingPosition {
    long long src;  // element offset in a channel plane (0, still a valid address, outside the map)
    int dst;        // element offset in a staged channel
    int row;        // halo row
    int first, step;
    bool valid;
};

__device__ __forceinline__ StagingPosition staging_position(int n_positions, int n_copies,
                                                            int step_elems, int row_stride,
                                                            int y0, int xa, int height,
                                                            int width) {
    const int position = threadIdx.x % n_positions, hy = position / n_copies;
    const int copy = position - hy * n_copies;
    const int y = y0 + hy, x = xa + copy * step_elems;
    StagingPosition at;
    at.valid = inside(y, height) && inside(x, width);
    at.src = at.valid ? (long long)y * width + x : 0;
    at.dst = hy * row_stride + copy * step_elems;
    at.row = hy;
    at.step = blockDim.x / n_positions;
    // the threads past step * n_positions stage nothing (they would repeat positions of the first)
    const bool staging = threadIdx.x < at.step * n_positions;
    at.first = staging ? threadIdx.x / n_positions : MMA_STAGE_CHANNELS;
    return at;
}

// Stages channels [0, nc) of the chunk at `src` into `buffer` ([c][row][row_stride], zeros outside
// the map): 4-byte cp.async copies (zero-filled with src-size 0), or, for an odd width or a
// 2-byte-aligned base, element by element with plain loads.
template <typename T>
__device__ __forceinline__ void stage_chunk(bool four_bytes, const StagingPosition& at,
                                            const T* src, T* buffer, int nc, long long plane,
                                            int chunk_plane) {
    const T* from = src + at.first * plane + at.src;
    T* to = buffer + at.first * chunk_plane + at.dst;
    const long long from_step = at.step * plane;
    const int to_step = at.step * chunk_plane;
    if (four_bytes) {
        for (int c = at.first; c < nc; c += at.step, from += from_step, to += to_step) {
            copy_or_zero<4>(to, from, at.valid);
        }
    } else {
        for (int c = at.first; c < nc; c += at.step, from += from_step, to += to_step) {
            *to = at.valid ? *from : from_acc<T>(0.0f);
        }
    }
}

// Strip builds: copies the staging position's elements (one 4-byte copy, or one element) of
// channels [0, nc) between two channel-major layouts of `from_plane` and `to_plane` elements per
// channel, at `from` and `to` (both already at the position). The thread that stages a halo
// position above row 2R also keeps and restores its carry, so the carry needs no barrier of its
// own; the staged rows it reads, and the ones it writes, are the pipeline's (its barriers).
template <typename T>
__device__ __forceinline__ void copy_position(bool four_bytes, const StagingPosition& at,
                                              const T* from, int from_plane, T* to, int to_plane,
                                              int nc) {
    from += at.first * from_plane;
    to += at.first * to_plane;
    for (int c = at.first; c < nc; c += at.step, from += at.step * from_plane,
             to += at.step * to_plane) {
        if (four_bytes) {
            *reinterpret_cast<unsigned int*>(to) = *reinterpret_cast<const unsigned int*>(from);
        } else {
            *to = *from;
        }
    }
}

template <typename T, int KS>
__launch_bounds__(MMA_THREADS) __global__ void reassemble_mma(
    const T* __restrict__ features, const T* __restrict__ masks, T* __restrict__ out,
    int channels, int height, int width, int groups, int channels_per_block, int strip_tiles) {
    constexpr int R = (KS - 1) / 2, KK = KS * KS;
    constexpr int PAIRS = (KS + 1) / 2, SLOTS = KS * PAIRS;  // pair slots of a window
    constexpr int STEPS = (2 * SLOTS + 15) / 16;  // mma k-steps: 1 for K=3, 2 for K=5
    static_assert(STEPS <= 2, "a window of at most 16 pair slots");
    constexpr int kRowStride = MMA_ROW_STRIDE(KS);
    constexpr int kHaloW = MMA_TILE_W + 2 * R, kHaloH = MMA_WARPS_Y + 2 * R;
    constexpr int kChunkPlane = MMA_CHUNK_PLANE(KS), kBuffer = MMA_STAGE_CHANNELS * kChunkPlane;
    static_assert(kHaloH * kHaloW <= MMA_THREADS, "a staging position per thread (elements)");
    DYNAMIC_SHARED_MEMORY(smem_raw);
    T* sbuf = reinterpret_cast<T*>(smem_raw);

    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    const int group_id = lane / 4, in_group = lane % 4;  // the mma fragments' lane coordinates
    const int out_h = 2 * height, out_w = 2 * width;
    const long long in_plane = (long long)height * width;
    const long long out_plane = (long long)out_h * out_w;
    const int tiles_x = (width + MMA_TILE_W - 1) / MMA_TILE_W;
    const int px0 = (blockIdx.x % tiles_x) * MMA_TILE_W;
    // the block's tiles: rows strip * n_tiles .. of tiles (one, the block's own, without strips)
    const int strip = blockIdx.x / tiles_x, n_tiles = MMA_STRIP ? strip_tiles : 1;
    const int b = blockIdx.z / groups, g = blockIdx.z % groups;
    const int group_channels = channels / groups;
    const int c_begin = blockIdx.y * channels_per_block;
    const int n_channels = min(channels_per_block, group_channels - c_begin);
    if (n_channels <= 0) return;  // uniform over the block, before any barrier
    // this warp's parent row in the tile and first parent (a multiple of 8 from px0: the same
    // window parity)
    const int warp_row = MMA_WARPS_X == 1 ? warp : warp % MMA_WARPS_Y;
    const int pxw = MMA_WARPS_X == 1 ? px0 : px0 + MMA_PARENTS_X * (warp / MMA_WARPS_Y);

    // Feature staging, as reassemble_tiled's async build, in 4-byte copies: rows py0 - R ..
    // py0 + MMA_WARPS_Y + R, columns from px0 - R rounded down to even (x_shift = 1 when rounded).
    const long long first_channel =
        (long long)b * channels + (long long)g * group_channels + c_begin;
    const T* feat = features + first_channel * in_plane;
    const int copy_elems = async_copy_elems(features, width) > 0 ? 2 : 0;
    const int step_elems = copy_elems > 0 ? copy_elems : 1;
    const int x0 = px0 - R, xa = x0 & -step_elems, x_shift = x0 - xa;
    const int n_copies = (x_shift + kHaloW + step_elems - 1) / step_elems;

    // The chunk pipeline: MMA_STAGES buffers of MMA_STAGE_CHANNELS channels, chunks i + 1 ..
    // i + MMA_STAGES - 2 in flight while chunk i is computed; one barrier per chunk, which also
    // frees the buffer of chunk i - 1 for chunk i + MMA_STAGES - 1. A commit every iteration (empty
    // past the last chunk) keeps "all but the newest MMA_STAGES - 2 groups" equal to "chunks up
    // to i". The first chunks are staged before the lane's masks are loaded into B (below), so
    // their copies are in flight while the block waits for the masks.
    static_assert(MMA_STAGES >= 2 && MMA_STAGES <= 4 && MMA_SLABS >= 1 && MMA_SLABS <= 2,
                  "2 to 4 stages of 1 or 2 slabs");
    const int n_chunks = (n_channels + MMA_STAGE_CHANNELS - 1) / MMA_STAGE_CHANNELS;
    const long long chunk_step = MMA_STAGE_CHANNELS * in_plane;
    // Strip builds: the carry after the buffers, kCarryPlane elements for each of the block's
    // channels (mma_shared_mem).
    constexpr int kCarryRows = 2 * R, kCarryPlane = kCarryRows * kRowStride;
    T* carry = sbuf + MMA_STAGES * kBuffer;

    for (int t = 0; t < n_tiles; ++t) {
        const int py0 = (strip * n_tiles + t) * MMA_WARPS_Y;
        if (MMA_STRIP && py0 >= height) break;  // uniform; a strip past the map's bottom
        const int prow = py0 + warp_row;
        // the tile's top 2R halo rows come from the carry (the tile above kept them); its bottom 2R
        // go to the carry for the tile below
        const bool carried = MMA_STRIP && t > 0;
        const bool carrying = MMA_STRIP && t + 1 < n_tiles && py0 + MMA_WARPS_Y < height;
        const StagingPosition staging =
            staging_position(kHaloH * n_copies, n_copies, step_elems, kRowStride, py0 - R, xa,
                             height, width);
        const bool carry_position = staging.row < kCarryRows;
        auto stage = [&](int chunk) {
            T* buffer = sbuf + (chunk % MMA_STAGES) * kBuffer;
            const int nc = min(MMA_STAGE_CHANNELS, n_channels - chunk * MMA_STAGE_CHANNELS);
            if (carried && carry_position) {
                copy_position(copy_elems > 0, staging,
                              carry + chunk * MMA_STAGE_CHANNELS * kCarryPlane + staging.dst,
                              kCarryPlane, buffer + staging.dst, kChunkPlane, nc);
            } else {
                stage_chunk(copy_elems > 0, staging, feat + chunk * chunk_step, buffer, nc,
                            in_plane, kChunkPlane);
            }
        };
#pragma unroll
        for (int i = 0; i < MMA_STAGES - 1; ++i) {
            if (i < n_chunks) stage(i);
            async_commit();
        }

        // This lane's pair slots P = 8 step + 4 r + in_group: A and B registers [step][r] hold
        // window offsets k = 2P, 2P + 1 (PTX ISA fragments of m16n8k16: rows/columns group_id,
        // k = 2 in_group + 8 r + 16 step + {0, 1}). Slot P is row ky = P / PAIRS, pair
        // j = P % PAIRS.
        int a_word[STEPS][2];
        unsigned int keep[2][STEPS][2];
#pragma unroll
        for (int step = 0; step < STEPS; ++step) {
#pragma unroll
            for (int r = 0; r < 2; ++r) {
                const int slot = 8 * step + 4 * r + in_group, real = min(slot, SLOTS - 1);
                const int ky = real / PAIRS, j = real % PAIRS;
                a_word[step][r] = (group_id * kChunkPlane + ky * kRowStride) / 2 + j;
#pragma unroll
                for (int odd = 0; odd < 2; ++odd) {
                    unsigned int k = 0;
#pragma unroll
                    for (int h = 0; h < 2; ++h) {
                        const bool in_window = slot < SLOTS && inside(pair_column(j, h, odd), KS);
                        if (in_window) k |= 0xffffu << (16 * h);
                    }
                    keep[odd][step][r] = k;
                }
            }
        }

        // B fragments: column n = group_id is child n % 4 (dy = n % 4 / 2, dx = n % 2) of the
        // parent: per parent (K = 3) columns 4..7 are zero; per pair of parents (K = 5,
        // parent_pairs_mma) columns 4..7 belong to the pair's odd parent. Rows as A's; zero outside
        // the parent's window and past the slots.
        //   The lane's mask for window offset (step, r, h) of parent p is at plane ky * K + kx of
        // pixel (2 prow + dy, 2 (pxw + p) + dx). Only the pixel depends on p, by 2 (p - p0)
        // elements from the lane's first parent p0, and kx on p only through the window's start
        // parity, which alternates with p at K = 3 (x_shift + p) and is the lane's own at K = 5
        // (group_id / 4). So the lane's pointers are computed once per parity class (p % 2 at
        // K = 3) and offset (2 STEPS x 2 of them), and each parent's load adds a compile-time
        // offset instead of its own 64-bit plane arithmetic (sm_90 SASS, bf16, K = 5: 1,072
        // static instructions against 1,264, 5576b13; docs/benchmarks.md, "Tensor cores").
        constexpr bool kPaired = KS == 5;
        constexpr int kBParents = kPaired ? MMA_PARENTS_X / 2 : MMA_PARENTS_X;
        constexpr int kClasses = kPaired ? 1 : 2;  // window start parities among the lane's parents
        unsigned int bfrag[kBParents][STEPS][2];
        const int child_index = group_id % 4, dy = child_index / 2, dx = child_index % 2;
        const int p0 = kPaired ? group_id / 4 : 0;
        const T* mask_lane = masks + ((long long)b * groups + g) * KK * out_plane +
                             (long long)(2 * prow + dy) * out_w + 2 * (pxw + p0) + dx;
        const T* mask_at[kClasses][STEPS][2][2];
        bool mask_used[kClasses][STEPS][2][2];
#pragma unroll
        for (int cls = 0; cls < kClasses; ++cls) {
            // the window's start parity; at K = 5 x_shift is 0 (px0 - 2 is even)
            const int odd = kPaired ? group_id / 4 : x_shift ^ cls;
#pragma unroll
            for (int step = 0; step < STEPS; ++step) {
#pragma unroll
                for (int r = 0; r < 2; ++r) {
                    const int slot = 8 * step + 4 * r + in_group;
                    const int ky = slot / PAIRS, j = slot % PAIRS;
#pragma unroll
                    for (int h = 0; h < 2; ++h) {
                        const int kx = pair_column(j, h, odd);
                        const bool used = slot < SLOTS && inside(kx, KS);
                        mask_used[cls][step][r][h] = used;
                        mask_at[cls][step][r][h] =
                            used ? mask_lane + (ky * KS + kx) * out_plane : mask_lane;
                    }
                }
            }
        }
#pragma unroll
        for (int e = 0; e < kBParents; ++e) {
            const int p = kPaired ? 2 * e + p0 : e;
            const bool child = (kPaired || group_id < 4) && prow < height && pxw + p < width;
            const int cls = kPaired ? 0 : e % 2, shift = 2 * (p - p0);  // elements from parent p0
#pragma unroll
            for (int step = 0; step < STEPS; ++step) {
#pragma unroll
                for (int r = 0; r < 2; ++r) {
                    unsigned short bits[2];
#pragma unroll
                    for (int h = 0; h < 2; ++h) {
                        const bool used = child && mask_used[cls][step][r][h];
                        bits[h] = used ? mask_at[cls][step][r][h][shift].bits : 0;
                    }
                    bfrag[e][step][r] = pack_pair(bits[0], bits[1]);
                }
            }
        }

        // Output rows of this lane: child row dy = in_group % 2 of channels group_id + 8 h; lanes
        // in_group < 2 own outputs 0..7 of the warp's 16 per row (parents 0..3), lanes in_group >=
        // 2 outputs 8..15 (parents 4..7), 16 bytes each, when whole_rows; else lanes in_group < 2
        // store 4 bytes per parent inside the map.
        const int out_y = 2 * prow + in_group % 2;
        const bool whole_rows = pxw + MMA_PARENTS_X <= width && width % 4 == 0 &&
                                reinterpret_cast<unsigned long long>(out) % 16 == 0;
        T* out_row =
            out + (first_channel + group_id) * out_plane + (long long)out_y * out_w + 2 * pxw;

        for (int i = 0; i < n_chunks; ++i) {
            async_wait_all_but<MMA_STAGES - 2>();
            __syncthreads();
            const int next = i + MMA_STAGES - 1;
            if (next < n_chunks) stage(next);
            async_commit();
            const T* staged = sbuf + (i % MMA_STAGES) * kBuffer;  // chunk i, landed
            if (carrying && carry_position) {  // its bottom 2R halo rows, for the next tile
                copy_position(copy_elems > 0, staging,
                              staged + MMA_WARPS_Y * kRowStride + staging.dst, kChunkPlane,
                              carry + i * MMA_STAGE_CHANNELS * kCarryPlane + staging.dst,
                              kCarryPlane,
                              min(MMA_STAGE_CHANNELS, n_channels - i * MMA_STAGE_CHANNELS));
            }
            const T* buffer = staged + warp_row * kRowStride + (pxw - px0);
#pragma unroll
            for (int slab = 0; slab < MMA_SLABS; ++slab) {
                const int c0 = i * MMA_STAGE_CHANNELS + slab * MMA_CHANNELS;
                if (c0 >= n_channels) break;  // uniform over the block
                // Channels past nc hold stale values; their D rows are computed and never stored.
                const int nc = min(MMA_CHANNELS, n_channels - c0);
                const T* row = buffer + slab * MMA_CHANNELS * kChunkPlane;
                const int stored = out_y < out_h ? nc : 0;
                if constexpr (kPaired) {
                    unsigned int packed[2][MMA_PARENTS_X / 2];
                    parent_pairs_mma<T, KS>(row, a_word, keep, bfrag, group_id, in_group, nc,
                                            packed);
                    store_pair_rows(packed, out_row + c0 * out_plane, out_plane, whole_rows, stored,
                                    width - pxw, group_id, in_group);
                } else {
                    unsigned int packed[2][MMA_PARENTS_X];
                    if (x_shift) {
                        parents_mma<T, KS, 1>(row, a_word, keep, bfrag, packed);
                    } else {
                        parents_mma<T, KS, 0>(row, a_word, keep, bfrag, packed);
                    }
                    store_rows(packed, out_row + c0 * out_plane, out_plane, whole_rows, stored,
                               width - pxw, group_id, in_group);
                }
            }
        }
        // the next tile's first stagings overwrite buffers that slower warps may still read
        if (MMA_STRIP && t + 1 < n_tiles) __syncthreads();
    }
}
