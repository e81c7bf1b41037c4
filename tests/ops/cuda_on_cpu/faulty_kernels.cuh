// Kernels with one deliberate bug each, to show that the emulator's checks can fail
// (tests/ops/test_kernels_on_cpu.py::test_emulator_catches_*). Each takes (in, out, n): n floats
// in and out, one block of n threads, n floats of dynamic shared memory.
#pragma once

// Correct: stage, barrier, read a neighbour's value.
__global__ void neighbour_after_barrier(const float* in, float* out, int n) {
    DYNAMIC_SHARED_MEMORY(smem_raw);
    float* staged = reinterpret_cast<float*>(smem_raw);
    const int t = threadIdx.x;
    staged[t] = in[t];
    __syncthreads();
    out[t] = staged[(t + 1) % n];
}

// The barrier is missing: the neighbour's value may not be staged yet.
__global__ void neighbour_without_barrier(const float* in, float* out, int n) {
    DYNAMIC_SHARED_MEMORY(smem_raw);
    float* staged = reinterpret_cast<float*>(smem_raw);
    const int t = threadIdx.x;
    staged[t] = in[t];
    out[t] = staged[(t + 1) % n];
}

// Reads one element past the dynamic shared memory.
__global__ void read_past_shared_memory(const float* in, float* out, int n) {
    DYNAMIC_SHARED_MEMORY(smem_raw);
    float* staged = reinterpret_cast<float*>(smem_raw);
    const int t = threadIdx.x;
    staged[t] = in[t];
    __syncthreads();
    out[t] = staged[t + 1];
}

// Reads one element past the input.
__global__ void read_past_input(const float* in, float* out, int n) {
    const int t = threadIdx.x;
    out[t] = in[t + 1];
}

// Reads its cp.async copy before waiting for it.
__global__ void read_before_async_wait(const float* in, float* out, int n) {
    DYNAMIC_SHARED_MEMORY(smem_raw);
    float* staged = reinterpret_cast<float*>(smem_raw);
    const int t = threadIdx.x;
    cuda_on_cpu::async_copy(staged + t, in + t, 4, true);
    cuda_on_cpu::async_commit();
    out[t] = staged[t];
    cuda_on_cpu::async_wait_all_but(0);
}

// A 16-byte cp.async from an address that is only 4-byte aligned.
__global__ void misaligned_async_copy(const float* in, float* out, int n) {
    DYNAMIC_SHARED_MEMORY(smem_raw);
    float* staged = reinterpret_cast<float*>(smem_raw);
    const int t = threadIdx.x;
    if (t == 0) cuda_on_cpu::async_copy(staged, in + 1, 16, true);
    cuda_on_cpu::async_commit();
    cuda_on_cpu::async_wait_all_but(0);
    __syncthreads();
    out[t] = staged[0];
}

// Not a bug: shared loads for the bank trace (CUDA_ON_CPU_BANKS), with 32 x 32 floats of shared
// memory and one warp. Consecutive words (1 wavefront), one word for every lane (a broadcast, 1)
// and a column of the tile (32 lanes on one bank: 32): 3 warp loads, 34 wavefronts, worst 32.
__global__ void bank_patterns(const float* in, float* out, int n) {
    DYNAMIC_SHARED_MEMORY(smem_raw);
    float* tile = reinterpret_cast<float*>(smem_raw);
    const int t = threadIdx.x;
    for (int row = 0; row < 32; ++row) tile[row * 32 + t] = in[t];
    __syncthreads();
    out[t] = shared_load(tile + t) + shared_load(tile + 5) + shared_load(tile + 32 * t);
}

// Not a bug: cp.async copies for the sector trace (CUDA_ON_CPU_SECTORS), one warp, `in` of at
// least 128 floats (256-byte aligned by the driver). Three commit groups: consecutive words (one
// warp copy, 4 sectors); a sector per lane, lanes 16.. zero-filled (one copy, 16 sectors); and a
// loop whose second iteration only lanes 0..7 take (two copies of one sector each). 4 warp
// copies, 22 sectors; the block reads sectors 0..15 of `in`, 16 distinct.
__global__ void sector_patterns(const float* in, float* out, int n) {
    DYNAMIC_SHARED_MEMORY(smem_raw);
    float* staged = reinterpret_cast<float*>(smem_raw);
    const int t = threadIdx.x;
    cuda_on_cpu::async_copy(staged + t, in + t, 4, true);
    cuda_on_cpu::async_commit();
    cuda_on_cpu::async_copy(staged + 32 + t, in + 8 * t, 4, t < 16);
    cuda_on_cpu::async_commit();
    for (int k = 0; k < (t < 8 ? 2 : 1); ++k) {
        cuda_on_cpu::async_copy(staged + 64 + 32 * k + t, in + 64 * k + t % 8, 4, true);
    }
    cuda_on_cpu::async_commit();
    cuda_on_cpu::async_wait_all_but(0);
    __syncthreads();
    out[t] = staged[t] + staged[32 + t];
}
