// Storage types and float32/float64 accumulation shared by kernels/*.cu.
//
// The kernels are templates on the storage type only (float, double, half_t, bfloat16_t); every
// size is a kernel argument, so a new image, channel count, kernel size or scale never recompiles.
// Half and bfloat16 are plain 16-bit structs converted by hand (PTX cvt for half, bit arithmetic
// for bfloat16), so NVRTC needs no CUDA headers at all: the sources compile the same with nvcc and
// with any CuPy wheel. Both accumulate in float32; float64 accumulates in float64.
#pragma once

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
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(v.bits));
    return f;
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
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(out.bits) : "f"(v));
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
