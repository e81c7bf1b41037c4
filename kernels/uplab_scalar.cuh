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
