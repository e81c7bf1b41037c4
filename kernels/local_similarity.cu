// SAPA's local similarity (Lu et al., NeurIPS 2022, Eq. 4 before the softmax), with channel groups:
//
//   out[b, g*K*K + ky*K + kx, Y, X] = sum_{c in group g} query[b, c, Y, X]
//                                                        * key[b, c, Y/s - r + ky, X/s - r + kx]
//
// with r = (K-1)/2; a neighbour outside the map contributes 0 (the logit stays 0, as in the
// released SAPA kernels).
//
// window_dot<T>  local_similarity forward (groups = 1); also carafe's grad_masks, with
//                query = grad_out and key = features (groups = carafe's groups).
// local_similarity's grad_query and grad_key are reassemble<T> and reassemble_transpose<T> in
// carafe.cu (masks = grad_sim, features = key, grad_out = query).
//
// A gather: every output element is owned by one thread that sums over channels in a fixed
// order, so there are no atomics and two runs give bit-identical results.
//
// Sizes (all kernel arguments): query [B, C, sH, sW], key [B, C, H, W], out [B, G*K*K, sH, sW].
#include "uplab_scalar.cuh"

// Channels whose query values a thread holds in registers at once (4 pixels each).
#define WINDOW_DOT_CHANNELS 8

// One thread owns a 2x2 quad of output pixels and k_per_block window offsets. For each chunk of
// WINDOW_DOT_CHANNELS channels the quad's query values are loaded once into registers and reused
// for every offset; with an even scale the quad shares one parent, so each key load feeds four
// FMAs. The running sums live in shared memory (the number of offsets is a run-time size, so they
// cannot be registers); each thread touches only its own entries, so no barrier is needed.
// Splitting the offsets over grid.y (k_per_block) gives small images enough blocks without a
// cross-block reduction.
template <typename T, bool kQuadSharesParent>
__device__ __forceinline__ void window_dot_quad(
    const T* __restrict__ query, const T* __restrict__ key, typename AccOf<T>::type* sums,
    int sums_stride, int n_channels, int height, int width, int kernel_size, int scale, int k_begin, int n_k,
    int Y, int X) {
    typedef typename AccOf<T>::type acc_t;
    const int out_h = height * scale, out_w = width * scale;
    const long long in_plane = (long long)height * width;
    const long long out_plane = (long long)out_h * out_w;
    const int r = (kernel_size - 1) / 2;
    const bool has_right = X + 1 < out_w, has_below = Y + 1 < out_h;
    const int sy0 = Y / scale, sx0 = X / scale;
    const int sy1 = kQuadSharesParent ? sy0 : (Y + 1) / scale;
    const int sx1 = kQuadSharesParent ? sx0 : (X + 1) / scale;
    const long long q_off = (long long)Y * out_w + X;

    for (int c0 = 0; c0 < n_channels; c0 += WINDOW_DOT_CHANNELS) {
        const int nc = min(WINDOW_DOT_CHANNELS, n_channels - c0);
        acc_t q[WINDOW_DOT_CHANNELS][4];
#pragma unroll
        for (int cc = 0; cc < WINDOW_DOT_CHANNELS; ++cc) {
            const T* qc = query + (c0 + cc) * out_plane + q_off;
            const bool ok = cc < nc;
            q[cc][0] = ok ? to_acc(qc[0]) : acc_t(0);
            q[cc][1] = ok && has_right ? to_acc(qc[1]) : acc_t(0);
            q[cc][2] = ok && has_below ? to_acc(qc[out_w]) : acc_t(0);
            q[cc][3] = ok && has_right && has_below ? to_acc(qc[out_w + 1]) : acc_t(0);
        }
        const T* kc = key + c0 * in_plane;
        for (int i = 0; i < n_k; ++i) {
            const int k = k_begin + i;
            const int ky = k / kernel_size, kx = k - ky * kernel_size;
            const int y0 = sy0 - r + ky, y1 = sy1 - r + ky;
            const int x0 = sx0 - r + kx, x1 = sx1 - r + kx;
            const bool v00 = inside(y0, height) && inside(x0, width);
            acc_t p0 = acc_t(0), p1 = acc_t(0), p2 = acc_t(0), p3 = acc_t(0);
            if (kQuadSharesParent) {
                if (!v00) continue;
                const long long off = (long long)y0 * width + x0;
#pragma unroll
                for (int cc = 0; cc < WINDOW_DOT_CHANNELS; ++cc) {
                    if (cc < nc) {
                        const acc_t v = to_acc(kc[cc * in_plane + off]);
                        p0 += q[cc][0] * v;
                        p1 += q[cc][1] * v;
                        p2 += q[cc][2] * v;
                        p3 += q[cc][3] * v;
                    }
                }
            } else {
                const bool v01 = inside(y0, height) && inside(x1, width);
                const bool v10 = inside(y1, height) && inside(x0, width);
                const bool v11 = inside(y1, height) && inside(x1, width);
                const long long o00 = (long long)y0 * width + x0, o01 = (long long)y0 * width + x1;
                const long long o10 = (long long)y1 * width + x0, o11 = (long long)y1 * width + x1;
#pragma unroll
                for (int cc = 0; cc < WINDOW_DOT_CHANNELS; ++cc) {
                    if (cc < nc) {
                        const T* kcc = kc + cc * in_plane;
                        if (v00) p0 += q[cc][0] * to_acc(kcc[o00]);
                        if (v01) p1 += q[cc][1] * to_acc(kcc[o01]);
                        if (v10) p2 += q[cc][2] * to_acc(kcc[o10]);
                        if (v11) p3 += q[cc][3] * to_acc(kcc[o11]);
                    }
                }
            }
            acc_t* s = sums + 4 * i * sums_stride;
            s[0] += p0;
            s[sums_stride] += p1;
            s[2 * sums_stride] += p2;
            s[3 * sums_stride] += p3;
        }
    }
}

// Grid: x = output tiles of (2*blockDim.x) x (2*blockDim.y) pixels, y = chunks of k_per_block
// window offsets, z = batch * groups. Dynamic shared memory: k_per_block * 4 * blockDim.x *
// blockDim.y accumulator-typed running sums, laid out [offset][quad pixel][thread] so that a warp's
// lanes hit consecutive banks.
template <typename T>
__global__ void window_dot(const T* __restrict__ query, const T* __restrict__ key,
                           T* __restrict__ out, int channels, int height, int width,
                           int kernel_size, int scale, int groups, int k_per_block) {
    typedef typename AccOf<T>::type acc_t;
    DYNAMIC_SHARED_MEMORY(smem_raw);

    const int kk = kernel_size * kernel_size;
    const int out_h = height * scale, out_w = width * scale;
    const long long out_plane = (long long)out_h * out_w;
    const int tile_w = 2 * blockDim.x, tile_h = 2 * blockDim.y;
    const int tiles_x = (out_w + tile_w - 1) / tile_w;
    const int Y = (blockIdx.x / tiles_x) * tile_h + 2 * threadIdx.y;
    const int X = (blockIdx.x % tiles_x) * tile_w + 2 * threadIdx.x;
    const int b = blockIdx.z / groups, g = blockIdx.z % groups;
    const int group_channels = channels / groups;
    const int k_begin = blockIdx.y * k_per_block;
    const int n_k = min(k_per_block, kk - k_begin);
    if (Y >= out_h || X >= out_w || n_k <= 0) return;

    const int tid = threadIdx.y * blockDim.x + threadIdx.x;
    const int n_threads = blockDim.x * blockDim.y;
    acc_t* sums = reinterpret_cast<acc_t*>(smem_raw) + tid;
    for (int i = 0; i < 4 * n_k; ++i) sums[i * n_threads] = acc_t(0);

    const long long first_channel = (long long)b * channels + (long long)g * group_channels;
    const T* q = query + first_channel * out_plane;
    const T* kb = key + first_channel * height * width;
    if (scale % 2 == 0) {
        window_dot_quad<T, true>(q, kb, sums, n_threads, group_channels, height, width, kernel_size, scale,
                                 k_begin, n_k, Y, X);
    } else {
        window_dot_quad<T, false>(q, kb, sums, n_threads, group_channels, height, width, kernel_size, scale,
                                  k_begin, n_k, Y, X);
    }

    const bool has_right = X + 1 < out_w, has_below = Y + 1 < out_h;
    T* o = out + (((long long)b * groups + g) * kk + k_begin) * out_plane + (long long)Y * out_w + X;
    for (int i = 0; i < n_k; ++i) {
        T* oi = o + i * out_plane;
        const acc_t* s = sums + 4 * i * n_threads;
        const acc_t s0 = s[0], s1 = s[n_threads], s2 = s[2 * n_threads], s3 = s[3 * n_threads];
        if (scale % 2 == 0) {
            // Even scale: even output width and height, so the whole quad is inside.
            store_pair(oi, s0, s1);
            store_pair(oi + out_w, s2, s3);
        } else {
            oi[0] = from_acc<T>(s0);
            if (has_right) oi[1] = from_acc<T>(s1);
            if (has_below) oi[out_w] = from_acc<T>(s2);
            if (has_right && has_below) oi[out_w + 1] = from_acc<T>(s3);
        }
    }
}

// The per-channel steps of window_dot_tiled, shared by its default and cp.async staging. Only the
// channel loop around them (copy q_next to q, two calls) is written twice: with q and that loop
// inside one helper, as reassemble_staged does in carafe.cu, the default build's PTX numbered its
// registers differently and ptxas allocated differently (up to 2 registers more per kernel).

// The QR x 2 query values of one channel, qn pointing at the thread's first pixel.
template <int QR, typename T>
__device__ __forceinline__ void load_query(const T* qn, int out_w, float (&q)[2 * QR]) {
#pragma unroll
    for (int r = 0; r < QR; ++r) {
        q[2 * r] = to_acc(qn[r * out_w]);
        q[2 * r + 1] = to_acc(qn[r * out_w + 1]);
    }
}

// One staged channel into a thread's running sums: each of the KS*KS window values (staged type
// S, converted by to_acc) is one shared-memory load feeding 2*QR FMAs with the channel's query
// values q. w is the thread's window, row_stride elements per staged row.
template <int KS, int QR, typename S>
__device__ __forceinline__ void window_fma(const S* w, int row_stride, const float (&q)[2 * QR],
                                           float (&acc)[KS * KS][2 * QR]) {
#pragma unroll
    for (int ky = 0; ky < KS; ++ky) {
#pragma unroll
        for (int kx = 0; kx < KS; ++kx) {
            const float v = to_acc(shared_load(w + ky * row_stride + kx));
#pragma unroll
            for (int j = 0; j < 2 * QR; ++j) acc[ky * KS + kx][j] += q[j] * v;
        }
    }
}

// local_similarity forward (and carafe's grad_masks) for an even scale and K = KS in {3, 5, 7}
// (the dispatcher's choice for float32, float16 and bfloat16 when the grid fills the GPU;
// window_dot<T> serves the rest). The transpose of reassemble_tiled's reuse pattern:
//  - each thread owns QR x 2 output pixels with one parent (QR = TILED_QUAD_ROWS(KS)) and keeps
//    all QR*2*KS*KS running sums in registers (unrolled over the compile-time KS), so the output
//    is written once, at the end, as two-element stores that a warp coalesces into full rows;
//  - the block's key tile plus halo is staged in shared memory (float, zeros outside the map) for
//    stage_channels channels at a time, each key value read from global memory once per block;
//  - per channel, the thread's QR*2 query values are read from global memory (coalesced along x,
//    the next channel's prefetched while this one is summed) and each of the KS*KS window values
//    is one shared-memory load feeding 2*QR FMAs.
// The channel sum stays inside one block (a fixed order, no atomics). Grid: x = output tiles of
// (2*blockDim.x) x (QR*blockDim.y) pixels, z = batch * groups; dynamic shared memory:
// stage_channels * halo_h * halo_w floats.
// With -DTILED_ASYNC_STAGING=1 the key halo is double-buffered with cp.async instead (the #if
// blocks; staging helpers and their rationale in uplab_scalar.cuh), in tiled_async_shared_mem()
// bytes. The channels are summed in the same order by the same load_query and window_fma, so the
// outputs should equal the default build's bit for bit.
template <typename T, int KS>
__launch_bounds__(TILED_MAX_THREADS, TILED_MIN_BLOCKS) __global__ void window_dot_tiled(
    const T* __restrict__ query, const T* __restrict__ key, T* __restrict__ out, int channels,
    int height, int width, int scale, int groups, int stage_channels) {
    constexpr int R = (KS - 1) / 2, QR = TILED_QUAD_ROWS(KS), NP = 2 * QR;
    DYNAMIC_SHARED_MEMORY(smem_raw);
#if TILED_ASYNC_STAGING
    T* sbuf = reinterpret_cast<T*>(smem_raw);
#else
    float* skey = reinterpret_cast<float*>(smem_raw);
#endif

    const int out_h = height * scale, out_w = width * scale;
    const long long in_plane = (long long)height * width;
    const long long out_plane = (long long)out_h * out_w;
    const int tile_w = 2 * blockDim.x, tile_h = QR * blockDim.y;
    const int halo_w = halo_extent(tile_w, scale, R), halo_h = halo_extent(tile_h, scale, R);
#if !TILED_ASYNC_STAGING
    const int halo_px = halo_w * halo_h;
#endif
    const int tiles_x = (out_w + tile_w - 1) / tile_w;
    const int X0 = (blockIdx.x % tiles_x) * tile_w, Y0 = (blockIdx.x / tiles_x) * tile_h;
    const int b = blockIdx.z / groups, g = blockIdx.z % groups;
    const int group_channels = channels / groups;

    const int Y = Y0 + QR * threadIdx.y, X = X0 + 2 * threadIdx.x;
    // An even scale makes out_h and out_w even, so a thread's pixels are all inside or all out.
    const bool active = Y < out_h && X < out_w;
    const long long pixel = (long long)Y * out_w + X;
    const long long first_channel = (long long)b * channels + (long long)g * group_channels;
    const T* kb = key + first_channel * in_plane;
    const T* qp = query + first_channel * out_plane + pixel;
    const int py0 = Y0 / scale;
#if !TILED_ASYNC_STAGING
    const float* window = skey + (Y / scale - py0) * halo_w + (X / scale - X0 / scale);
#endif

    float acc[KS * KS][NP];
#pragma unroll
    for (int k = 0; k < KS * KS; ++k) {
#pragma unroll
        for (int j = 0; j < NP; ++j) acc[k][j] = 0.0f;
    }
    float q_next[NP];
#pragma unroll
    for (int q = 0; q < QR; ++q) {
        q_next[2 * q] = active && group_channels > 0 ? to_acc(qp[q * out_w]) : 0.0f;
        q_next[2 * q + 1] = active && group_channels > 0 ? to_acc(qp[q * out_w + 1]) : 0.0f;
    }
#if TILED_ASYNC_STAGING
    // Chunk i is summed from buffer i % 2 while chunk i + 1 is copied into the other one. This
    // pipeline repeats reassemble_tiled's (and reassemble_mma's) on purpose: folding them into one
    // helper (a lambda, or a struct of the staging arguments with a per-iteration helper) changes
    // ptxas's register allocation of the carafe build at its 128-register bound (sm_90): spills
    // of reassemble_tiled<half_t, 5> 0 -> 20 bytes and <bfloat16_t / half_t, 7> 8 -> 32 bytes.
    // Whether those spills cost time is for a GPU measurement to decide.
    const int row_stride = async_row_stride<T>(halo_w), chunk_plane = halo_h * row_stride;
    const int buffer = stage_channels * chunk_plane;
    const int copy_elems = async_copy_elems(key, width);
    const int step = copy_elems > 0 ? copy_elems : 1;
    const int x0 = X0 / scale - R, xa = x0 & -step;  // rounded down (step is a power of two)
    const int n_copies = (x0 - xa + halo_w + step - 1) / step;
    const T* window = sbuf + (Y / scale - py0) * row_stride + (X / scale - X0 / scale) + (x0 - xa);
    const int n_chunks = (group_channels + stage_channels - 1) / stage_channels;
    stage_halo_async_any(copy_elems, kb, sbuf, min(stage_channels, group_channels), in_plane,
                         height, width, py0 - R, xa, halo_h, n_copies, row_stride);
    async_commit();
    for (int i = 0; i < n_chunks; ++i) {
        const int c0 = i * stage_channels, nc = min(stage_channels, group_channels - c0);
        if (i + 1 < n_chunks) {
            const int c1 = c0 + stage_channels;
            stage_halo_async_any(copy_elems, kb + c1 * in_plane, sbuf + ((i + 1) & 1) * buffer,
                                 min(stage_channels, group_channels - c1), in_plane, height, width,
                                 py0 - R, xa, halo_h, n_copies, row_stride);
        }
        async_commit();  // empty after the last chunk, so that "all but the newest" is chunk i
        async_wait_all_but_newest();
        __syncthreads();
        if (active) {
            const T* w = window + (i & 1) * buffer;
            for (int c = 0; c < nc; ++c, w += chunk_plane) {
                float q[NP];
#pragma unroll
                for (int j = 0; j < NP; ++j) q[j] = q_next[j];
                if (c0 + c + 1 < group_channels) {
                    load_query<QR>(qp + (long long)(c0 + c + 1) * out_plane, out_w, q_next);
                }
                window_fma<KS, QR>(w, row_stride, q, acc);
            }
        }
        __syncthreads();
    }
#else
    for (int c0 = 0; c0 < group_channels; c0 += stage_channels) {
        const int nc = min(stage_channels, group_channels - c0);
        stage_halo(kb + c0 * in_plane, skey, nc, in_plane, height, width, py0 - R,
                   X0 / scale - R, halo_h, halo_w);
        __syncthreads();
        if (active) {
            const float* w = window;
            for (int c = 0; c < nc; ++c, w += halo_px) {
                float q[NP];
#pragma unroll
                for (int j = 0; j < NP; ++j) q[j] = q_next[j];
                if (c0 + c + 1 < group_channels) {
                    load_query<QR>(qp + (long long)(c0 + c + 1) * out_plane, out_w, q_next);
                }
                window_fma<KS, QR>(w, halo_w, q, acc);
            }
        }
        __syncthreads();
    }
#endif
    if (!active) return;
    T* o = out + ((long long)b * groups + g) * (KS * KS) * out_plane + pixel;
#pragma unroll
    for (int k = 0; k < KS * KS; ++k) {
        store_pair(o + k * out_plane, acc[k][0], acc[k][1]);
        if (QR == 2) store_pair(o + k * out_plane + out_w, acc[k][2], acc[k][3]);
    }
}
