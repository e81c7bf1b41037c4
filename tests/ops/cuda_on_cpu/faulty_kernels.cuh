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
