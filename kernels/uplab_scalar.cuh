// Storage types and float32/float64 accumulation shared by kernels/*.cu.
//
// The kernels are templates on the storage type only (float, double, half_t, bfloat16_t); every
// size is a kernel argument, so a new image, channel count, kernel size or scale never recompiles.
// Half and bfloat16 are plain 16-bit structs converted by hand (PTX cvt for half, bit arithmetic
// for bfloat16), so NVRTC needs no CUDA headers at all: the sources compile the same with nvcc and
// with any CuPy wheel. Both accumulate in float32; float64 accumulates in float64.
#pragma once

// Host emulation (tests/ops/cuda_on_cpu, compiled with -DUPLAB_CUDA_ON_CPU) runs these sources on
// the CPU: the #ifdef UPLAB_CUDA_ON_CPU branches below are its only hooks, and a GPU build
// compiles none of them.

// The kernels' dynamic shared memory, `name` as unsigned char[], 16-byte aligned.
#ifdef UPLAB_CUDA_ON_CPU
#define DYNAMIC_SHARED_MEMORY(name) unsigned char* const name = cuda_on_cpu::dynamic_shared_memory()
#else
#define DYNAMIC_SHARED_MEMORY(name) extern __shared__ __align__(16) unsigned char name[]
#endif

struct half_t {
    unsigned short bits;
};

struct bfloat16_t {
    unsigned short bits;
};

template <typename T>
struct AccOf {
    typedef float type;
};

template <>
struct AccOf<double> {
    typedef double type;
};

__device__ __forceinline__ float to_acc(float v) { return v; }

__device__ __forceinline__ double to_acc(double v) { return v; }

__device__ __forceinline__ float to_acc(bfloat16_t v) {
    return __uint_as_float(static_cast<unsigned int>(v.bits) << 16);
}

__device__ __forceinline__ float to_acc(half_t v) {
#ifdef UPLAB_CUDA_ON_CPU
    return cuda_on_cpu::half_to_float(v.bits);
#else
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(v.bits));
    return f;
#endif
}

template <typename T>
__device__ __forceinline__ T from_acc(typename AccOf<T>::type v);

template <>
__device__ __forceinline__ float from_acc<float>(float v) { return v; }

template <>
__device__ __forceinline__ double from_acc<double>(double v) { return v; }

template <>
__device__ __forceinline__ bfloat16_t from_acc<bfloat16_t>(float v) {
    // Round to nearest even, as PyTorch's float -> bfloat16 conversion does; NaN stays NaN.
    unsigned int u = __float_as_uint(v);
    bfloat16_t out;
    if ((u & 0x7fffffffu) > 0x7f800000u) {
        out.bits = 0x7fc0;
        return out;
    }
    u += 0x7fffu + ((u >> 16) & 1u);
    out.bits = static_cast<unsigned short>(u >> 16);
    return out;
}

template <>
__device__ __forceinline__ half_t from_acc<half_t>(float v) {
    half_t out;
#ifdef UPLAB_CUDA_ON_CPU
    out.bits = cuda_on_cpu::float_to_half(v);
#else
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(out.bits) : "f"(v));
#endif
    return out;
}

// Two horizontally adjacent outputs in one store. Callers guarantee 2-element alignment (an even
// column in a row of even width, in a buffer this package allocated).
__device__ __forceinline__ void store_pair(float* p, float a, float b) {
    *reinterpret_cast<float2*>(p) = make_float2(a, b);
}

__device__ __forceinline__ void store_pair(double* p, double a, double b) {
    *reinterpret_cast<double2*>(p) = make_double2(a, b);
}

template <typename T>
__device__ __forceinline__ void store_pair(T* p, float a, float b) {
    const unsigned int lo = from_acc<T>(a).bits, hi = from_acc<T>(b).bits;
    *reinterpret_cast<unsigned int*>(p) = lo | (hi << 16);
}

__device__ __forceinline__ bool inside(int i, int n) { return 0 <= i && i < n; }

// A shared-memory load of at most 4 bytes that the CPU emulation can trace for bank conflicts
// (CUDA_ON_CPU_BANKS, tests/ops/cuda_on_cpu); on a GPU it is the plain load.
template <typename W>
__device__ __forceinline__ W shared_load(const W* p) {
#ifdef UPLAB_CUDA_ON_CPU
    cuda_on_cpu::note_shared_load(p, sizeof(W));
#endif
    return *p;
}

// Tiled kernels (reassemble_tiled, window_dot_tiled) for an even scale and K in {3, 5, 7}: one
// thread owns TILED_QUAD_ROWS(K) x 2 output pixels of one low-resolution parent (a 2x2 quad for
// K <= 5, a horizontal pair for K = 7, so that the per-pixel K*K operands fit in registers).
#define TILED_MAX_THREADS 256
// Resident blocks of TILED_MAX_THREADS per SM the register budget is set for (a compile option).
#ifndef TILED_MIN_BLOCKS
#define TILED_MIN_BLOCKS 2
#endif
#define TILED_QUAD_ROWS(K) ((K) <= 5 ? 2 : 1)

__device__ __forceinline__ int halo_extent(int tile, int scale, int radius) {
    // Parents of `tile` consecutive output rows (or columns) starting anywhere, plus the halo.
    return (tile - 1) / scale + 2 + 2 * radius;
}

// Waits for this thread's copies of every committed group but the newest N.
template <int N>
__device__ __forceinline__ void async_wait_all_but() {
#if __CUDA_ARCH__ >= 800
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
#elif defined(UPLAB_CUDA_ON_CPU)
    cuda_on_cpu::async_wait_all_but(N);
#endif
}

// Stage channels [0, n_channels) of `src` (planes of height x width, `plane` apart) rows
// [y0, y0 + halo_h) x columns [x0, x0 + halo_w) into `dst` as float, [c][row][col], with zeros
// outside the map (so the compute loops need no bounds checks). Lanes run along columns (coalesced
// reads); thread rows walk the flattened (channel, row) index without a division per row.
template <typename T>
__device__ __forceinline__ void stage_halo(const T* __restrict__ src, float* __restrict__ dst,
                                           int n_channels, long long plane, int height, int width,
                                           int y0, int x0, int halo_h, int halo_w) {
    const int n_rows = n_channels * halo_h;
    int c = threadIdx.y / halo_h, hy = threadIdx.y - c * halo_h;
    for (int row = threadIdx.y; row < n_rows; row += blockDim.y) {
        const int y = y0 + hy;
        const bool row_inside = inside(y, height);
        const T* s = src + c * plane + (long long)y * width;
        float* d = dst + row * halo_w;
        for (int hx = threadIdx.x; hx < halo_w; hx += blockDim.x) {
            const int x = x0 + hx;
            d[hx] = row_inside && inside(x, width) ? to_acc(s[x]) : 0.0f;
        }
        hy += blockDim.y;
        while (hy >= halo_h) {
            hy -= halo_h;
            ++c;
        }
    }
}

// cp.async halo staging of the tiled kernels (reassemble_tiled, window_dot_tiled), compiled with
// -DTILED_ASYNC_STAGING=1 (variants.ASYNC_STAGING_OPTION; the launcher's default staging,
// TILED_STAGING = "async": carafe fp32 forward 0.737 against 1.787 ms with plain loads on an
// H100, fe702ff, 2026-11-26; docs/benchmarks.md, "Staging"). Without it (0) none of what follows
// is compiled, and the kernels stage with stage_halo above. The launch then needs
// tiled_async_shared_mem() bytes of dynamic shared memory (src/uplab/ops/cuda/geometry.py)
// instead of tiled_config's. Both kernels use it the same way:
//  - Double buffer: the block stages channel chunk i + 1 while it computes chunk i, in two
//    buffers of stage_channels * halo_h * row_stride elements of the storage type T. Two barriers
//    per chunk: one after the wait (chunk i complete, from every thread), one after the compute
//    (nobody still reads the buffer that the next iteration refills).
//  - cp.async (sm_80+): global -> shared without passing through registers, so a thread issues
//    all its copies of a chunk back to back and none waits for the previous one. Copies are as wide
//    as the alignment allows, 16, 8 or 4 bytes (async_copy_elems): the staged row starts at the
//    halo's first column rounded down to a multiple of the copy, so with width a multiple of it
//    (and an aligned base) every copy lies wholly inside the map or wholly outside it. 16-bit types
//    with an odd width (or a 2-byte-aligned base) copy element by element, synchronously.
//  - Halo zero fill: a copy outside the map is issued with src-size 0, which writes cp-size zero
//    bytes (PTX ISA, cp.async: the bytes past src-size are zero-filled) and reads nothing.
//  - The tile stays in the storage type in shared memory and is converted to float by to_acc at
//    each window load. The conversion is exact and the kernels run their default window loop on it
//    (same products, same order), so the outputs should equal the default build's bit for bit.
//  - Below sm_80 the same code runs with plain loads and stores (no cp.async), so the variant
//    compiles and stays correct everywhere.
#ifndef TILED_ASYNC_STAGING
#define TILED_ASYNC_STAGING 0
#endif
// Kernels that always stage with cp.async (carafe_mma.cu) define CP_ASYNC_HELPERS before the
// include; so does the CPU emulation, which builds every file into one program.
#ifndef CP_ASYNC_HELPERS
#define CP_ASYNC_HELPERS 0
#endif
#if TILED_ASYNC_STAGING || CP_ASYNC_HELPERS
// Elements per staged row: any start shift below one 16-byte copy, rounded up to whole 16-byte
// copies (so every row, and the second buffer, starts 16-byte aligned).
template <typename T>
__device__ __forceinline__ int async_row_stride(int halo_w) {
    constexpr int kPerCopy = 16 / (int)sizeof(T);
    return (halo_w + kPerCopy - 1 + kPerCopy - 1) / kPerCopy * kPerCopy;
}

// Elements per copy, the widest of 16, 8, 4 bytes that divides the row width and the base address
// (then every row and every plane starts aligned too); 0 where none does (16-bit, odd width).
template <typename T>
__device__ __forceinline__ int async_copy_elems(const T* base, int width) {
    const unsigned long long address = reinterpret_cast<unsigned long long>(base);
    for (int bytes = 16; bytes >= 4; bytes /= 2) {
        const int elems = bytes / (int)sizeof(T);
        if (elems >= 1 && width % elems == 0 && address % bytes == 0) return elems;
    }
    return 0;
}

// kBytes from global to shared, or kBytes of zeros where !valid (then src is not read).
template <int kBytes>
__device__ __forceinline__ void copy_or_zero(void* dst, const void* src, bool valid) {
#if __CUDA_ARCH__ >= 800
    const unsigned int shared = static_cast<unsigned int>(__cvta_generic_to_shared(dst));
    if constexpr (kBytes == 16) {
        asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(shared), "l"(src),
                     "r"(valid ? 16 : 0)
                     : "memory");
    } else {
        asm volatile("cp.async.ca.shared.global [%0], [%1], %2, %3;\n" ::"r"(shared), "l"(src),
                     "n"(kBytes), "r"(valid ? kBytes : 0)
                     : "memory");
    }
#elif defined(UPLAB_CUDA_ON_CPU)
    cuda_on_cpu::async_copy(dst, src, kBytes, valid);
#else
    if constexpr (kBytes == 16) {
        *static_cast<uint4*>(dst) = valid ? *static_cast<const uint4*>(src) : make_uint4(0, 0, 0, 0);
    } else if constexpr (kBytes == 8) {
        *static_cast<uint2*>(dst) = valid ? *static_cast<const uint2*>(src) : make_uint2(0, 0);
    } else {
        *static_cast<unsigned int*>(dst) = valid ? *static_cast<const unsigned int*>(src) : 0u;
    }
#endif
}

__device__ __forceinline__ void async_commit() {
#if __CUDA_ARCH__ >= 800
    asm volatile("cp.async.commit_group;\n" ::: "memory");
#elif defined(UPLAB_CUDA_ON_CPU)
    cuda_on_cpu::async_commit();
#endif
}

// Waits for this thread's copies of every committed group but the newest.
__device__ __forceinline__ void async_wait_all_but_newest() {
#if __CUDA_ARCH__ >= 800
    asm volatile("cp.async.wait_group 1;\n" ::: "memory");
#elif defined(UPLAB_CUDA_ON_CPU)
    cuda_on_cpu::async_wait_all_but(1);
#endif
}

// Stage channels [0, n_channels) of `src`, rows [y0, y0 + halo_h) x columns [xa, xa + n_copies *
// elems) into `dst` in the storage type, [c][row][row_stride], zeros outside the map; elems =
// kBytes / sizeof(T) elements per copy, or one element copied synchronously for kBytes = 0. The
// block walks the flattened (channel, row, copy) index, consecutive threads on consecutive copies;
// each thread advances by the block size with carries instead of divisions.
template <typename T, int kBytes>
__device__ __forceinline__ void stage_halo_async(const T* __restrict__ src, T* __restrict__ dst,
                                                 int n_channels, long long plane, int height,
                                                 int width, int y0, int xa, int halo_h,
                                                 int n_copies, int row_stride) {
    constexpr int kElems = kBytes > 0 ? kBytes / (int)sizeof(T) : 1;
    const int tid = threadIdx.y * blockDim.x + threadIdx.x, n_threads = blockDim.x * blockDim.y;
    const int step_copy = n_threads % n_copies, step_row = n_threads / n_copies;
    int copy = tid % n_copies, hy = tid / n_copies, c = hy / halo_h;
    hy -= c * halo_h;
    while (c < n_channels) {
        const int y = y0 + hy, x = xa + copy * kElems;
        const bool valid = inside(y, height) && inside(x, width);
        const T* s = valid ? src + c * plane + (long long)y * width + x : src;
        T* d = dst + (c * halo_h + hy) * row_stride + copy * kElems;
        if constexpr (kBytes > 0) {
            copy_or_zero<kBytes>(d, s, valid);
        } else {
            *d = valid ? *s : from_acc<T>(0.0f);
        }
        copy += step_copy;
        hy += step_row;
        if (copy >= n_copies) {
            copy -= n_copies;
            ++hy;
        }
        while (hy >= halo_h) {
            hy -= halo_h;
            ++c;
        }
    }
}

// stage_halo_async with the copy width chosen at run time (uniform over the grid).
template <typename T>
__device__ __forceinline__ void stage_halo_async_any(int copy_elems, const T* src, T* dst,
                                                     int n_channels, long long plane, int height,
                                                     int width, int y0, int xa, int halo_h,
                                                     int n_copies, int row_stride) {
    switch (copy_elems * (int)sizeof(T)) {
        case 16:
            stage_halo_async<T, 16>(src, dst, n_channels, plane, height, width, y0, xa, halo_h,
                                    n_copies, row_stride);
            break;
        case 8:
            stage_halo_async<T, 8>(src, dst, n_channels, plane, height, width, y0, xa, halo_h,
                                   n_copies, row_stride);
            break;
        case 4:
            stage_halo_async<T, 4>(src, dst, n_channels, plane, height, width, y0, xa, halo_h,
                                   n_copies, row_stride);
            break;
        default:
            stage_halo_async<T, 0>(src, dst, n_channels, plane, height, width, y0, xa, halo_h,
                                   n_copies, row_stride);
    }
}
#endif
