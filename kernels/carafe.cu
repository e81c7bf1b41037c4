// CARAFE reassembly (Wang et al., ICCV 2019, Eq. 3) and its transpose, NCHW, with channel groups:
//
//   out[b, c, Y, X] = sum_{ky,kx} masks[b, g*K*K + ky*K + kx, Y, X]
//                                 * features[b, c, Y/s - r + ky, X/s - r + kx]
//
// with r = (K-1)/2, g = c / (C/G) and zeros outside the map.
//
// reassemble<T>            carafe forward; also local_similarity's grad_query (masks = grad_sim).
// reassemble_transpose<T>  carafe grad_features; also local_similarity's grad_key.
// carafe's grad_masks is window_dot<T> in local_similarity.cu (query = grad_out, key = features).
//
// Both are gathers: every output element is written by exactly one thread, which sums its terms in
// a fixed order, so there are no atomics and two runs give bit-identical results.
//
// Layout of sizes (all kernel arguments): features/grad_features [B, C, H, W], masks
// [B, G*K*K, sH, sW], out/grad_out [B, C, sH, sW]. Plane offsets are 64-bit.
#include "uplab_scalar.cuh"

// Channels a thread carries in registers at once. Each mask value is loaded once and reused for
// all of them; each feature value is reused for the (up to) four outputs of the thread's quad.
#define REASSEMBLE_CHANNELS 8
#define TRANSPOSE_CHANNELS 16

// One thread computes a 2x2 quad of output pixels for REASSEMBLE_CHANNELS channels at a time.
// With an even scale the four pixels of a quad have the same low-resolution parent, hence the same
// K x K feature window: one feature load feeds four FMAs, which is what lifts this kernel from
// load-issue-bound (one load per FMA) to memory-bound. Odd scales take the general path (each
// pixel of the quad loads its own window).
template <typename T, bool kQuadSharesParent>
__device__ __forceinline__ void reassemble_quad(
    const T* __restrict__ feat, const typename AccOf<T>::type* __restrict__ smask,
    T* __restrict__ out, int n_channels, int height, int width, int kernel_size, int scale,
    int tile_w, int tile_px, int local, int Y, int X) {
    typedef typename AccOf<T>::type acc_t;
    const int out_h = height * scale, out_w = width * scale;
    const long long in_plane = (long long)height * width;
    const long long out_plane = (long long)out_h * out_w;
    const int r = (kernel_size - 1) / 2;
    const bool has_right = X + 1 < out_w, has_below = Y + 1 < out_h;
    const int sy0 = Y / scale, sx0 = X / scale;
    const int sy1 = kQuadSharesParent ? sy0 : (Y + 1) / scale;
    const int sx1 = kQuadSharesParent ? sx0 : (X + 1) / scale;

    for (int c0 = 0; c0 < n_channels; c0 += REASSEMBLE_CHANNELS) {
        const int nc = min(REASSEMBLE_CHANNELS, n_channels - c0);
        acc_t acc[REASSEMBLE_CHANNELS][4];
#pragma unroll
        for (int cc = 0; cc < REASSEMBLE_CHANNELS; ++cc) {
            acc[cc][0] = acc[cc][1] = acc[cc][2] = acc[cc][3] = acc_t(0);
        }
        const T* f = feat + c0 * in_plane;
        int k = 0;
        for (int ky = 0; ky < kernel_size; ++ky) {
            const int y0 = sy0 - r + ky, y1 = sy1 - r + ky;
            const bool in_y0 = inside(y0, height), in_y1 = inside(y1, height);
            for (int kx = 0; kx < kernel_size; ++kx, ++k) {
                const int x0 = sx0 - r + kx, x1 = sx1 - r + kx;
                const bool in_x0 = inside(x0, width), in_x1 = inside(x1, width);
                const acc_t* m = smask + (long long)k * tile_px + local;
                const acc_t m00 = m[0], m01 = m[1], m10 = m[tile_w], m11 = m[tile_w + 1];
                if (kQuadSharesParent) {
                    if (!(in_y0 && in_x0)) continue;
                    const long long off = (long long)y0 * width + x0;
#pragma unroll
                    for (int cc = 0; cc < REASSEMBLE_CHANNELS; ++cc) {
                        if (cc < nc) {
                            const acc_t v = to_acc(f[cc * in_plane + off]);
                            acc[cc][0] += m00 * v;
                            acc[cc][1] += m01 * v;
                            acc[cc][2] += m10 * v;
                            acc[cc][3] += m11 * v;
                        }
                    }
                } else {
                    const bool v00 = in_y0 && in_x0, v01 = in_y0 && in_x1;
                    const bool v10 = in_y1 && in_x0, v11 = in_y1 && in_x1;
                    const long long o00 = (long long)y0 * width + x0, o01 = (long long)y0 * width + x1;
                    const long long o10 = (long long)y1 * width + x0, o11 = (long long)y1 * width + x1;
#pragma unroll
                    for (int cc = 0; cc < REASSEMBLE_CHANNELS; ++cc) {
                        if (cc < nc) {
                            const T* fc = f + cc * in_plane;
                            if (v00) acc[cc][0] += m00 * to_acc(fc[o00]);
                            if (v01) acc[cc][1] += m01 * to_acc(fc[o01]);
                            if (v10) acc[cc][2] += m10 * to_acc(fc[o10]);
                            if (v11) acc[cc][3] += m11 * to_acc(fc[o11]);
                        }
                    }
                }
            }
        }
        T* o = out + c0 * out_plane + (long long)Y * out_w + X;
        for (int cc = 0; cc < nc; ++cc) {
            T* oc = o + cc * out_plane;
            if (kQuadSharesParent) {
                // Even scale: even output width and height, so the whole quad is inside.
                store_pair(oc, acc[cc][0], acc[cc][1]);
                store_pair(oc + out_w, acc[cc][2], acc[cc][3]);
            } else {
                oc[0] = from_acc<T>(acc[cc][0]);
                if (has_right) oc[1] = from_acc<T>(acc[cc][1]);
                if (has_below) oc[out_w] = from_acc<T>(acc[cc][2]);
                if (has_right && has_below) oc[out_w + 1] = from_acc<T>(acc[cc][3]);
            }
        }
    }
}

// Grid: x = output tiles of (2*blockDim.x) x (2*blockDim.y) pixels, y = channel chunks of
// channels_per_block, z = batch * groups. Dynamic shared memory: K*K*tile_px accumulator-typed
// mask values, staged once per block with coalesced row reads and then reused for every channel
// of the block's chunk (the masks are read from global memory once per chunk, not once per
// channel). Feature loads for neighbouring quads overlap and hit L1.
template <typename T>
__global__ void reassemble(const T* __restrict__ features, const T* __restrict__ masks,
                           T* __restrict__ out, int channels, int height, int width,
                           int kernel_size, int scale, int groups, int channels_per_block) {
    typedef typename AccOf<T>::type acc_t;
    DYNAMIC_SHARED_MEMORY(smem_raw);
    acc_t* smask = reinterpret_cast<acc_t*>(smem_raw);

    const int kk = kernel_size * kernel_size;
    const int out_h = height * scale, out_w = width * scale;
    const long long out_plane = (long long)out_h * out_w;
    const int tile_w = 2 * blockDim.x, tile_h = 2 * blockDim.y, tile_px = tile_w * tile_h;
    const int tiles_x = (out_w + tile_w - 1) / tile_w;
    const int X0 = (blockIdx.x % tiles_x) * tile_w, Y0 = (blockIdx.x / tiles_x) * tile_h;
    const int b = blockIdx.z / groups, g = blockIdx.z % groups;
    const int group_channels = channels / groups;
    const int c_begin = blockIdx.y * channels_per_block;
    const int n_channels = min(channels_per_block, group_channels - c_begin);

    const T* mask_bg = masks + ((long long)b * groups + g) * kk * out_plane;
    const int tid = threadIdx.y * blockDim.x + threadIdx.x;
    const int n_threads = blockDim.x * blockDim.y;
    for (int k = 0; k < kk; ++k) {
        for (int p = tid; p < tile_px; p += n_threads) {
            const int Y = Y0 + p / tile_w, X = X0 + p % tile_w;
            smask[(long long)k * tile_px + p] =
                (Y < out_h && X < out_w) ? to_acc(mask_bg[k * out_plane + (long long)Y * out_w + X])
                                         : acc_t(0);
        }
    }
    __syncthreads();

    const int ly = 2 * threadIdx.y, lx = 2 * threadIdx.x;
    const int Y = Y0 + ly, X = X0 + lx;
    if (Y >= out_h || X >= out_w || n_channels <= 0) return;
    const long long first_channel = (long long)b * channels + (long long)g * group_channels + c_begin;
    const T* feat = features + first_channel * height * width;
    T* o = out + first_channel * out_plane;
    if (scale % 2 == 0) {
        reassemble_quad<T, true>(feat, smask, o, n_channels, height, width, kernel_size, scale,
                                 tile_w, tile_px, ly * tile_w + lx, Y, X);
    } else {
        reassemble_quad<T, false>(feat, smask, o, n_channels, height, width, kernel_size, scale,
                                  tile_w, tile_px, ly * tile_w + lx, Y, X);
    }
}

// Outputs of nc staged channels for one thread's QR x 2 pixels: per channel, each of the KS*KS
// window values (staged type S, converted by to_acc) is one shared-memory load feeding 2*QR FMAs
// with the masks held in registers. w is the thread's window in the first staged channel, laid out
// with row_stride elements per row and channel_stride per channel; oc its first output.
template <int KS, int QR, typename S, typename T>
__device__ __forceinline__ void reassemble_staged(const S* w, int row_stride, int channel_stride,
                                                  const float (&m)[KS * KS][2 * QR], T* oc,
                                                  long long out_plane, int out_w, int nc) {
    constexpr int NP = 2 * QR;
    for (int c = 0; c < nc; ++c, w += channel_stride, oc += out_plane) {
        float acc[NP];
#pragma unroll
        for (int j = 0; j < NP; ++j) acc[j] = 0.0f;
#pragma unroll
        for (int ky = 0; ky < KS; ++ky) {
#pragma unroll
            for (int kx = 0; kx < KS; ++kx) {
                const float v = to_acc(shared_load(w + ky * row_stride + kx));
#pragma unroll
                for (int j = 0; j < NP; ++j) acc[j] += m[ky * KS + kx][j] * v;
            }
        }
        store_pair(oc, acc[0], acc[1]);
        if (QR == 2) store_pair(oc + out_w, acc[2], acc[3]);
    }
}

// The forward for an even scale and K = KS in {3, 5, 7} (the dispatcher's choice for float32,
// float16 and bfloat16; reassemble<T> serves the rest). Masks are per pixel and shared by all
// channels, features are per channel and shared by the s x s children of a point, so:
//  - each thread owns QR x 2 output pixels with one parent (QR = TILED_QUAD_ROWS(KS)) and loads
//    their QR*2*KS*KS mask values into registers once, then reuses them for every channel;
//  - the block's low-resolution tile plus its halo is staged in shared memory (as float, zeros
//    outside the map) for stage_channels channels at a time, so each feature value is read from
//    global memory once per block and the window loop has no bounds checks;
//  - per channel, each of the KS*KS window values is one shared-memory load (lanes run along x:
//    consecutive or broadcast addresses, no bank conflicts) feeding 2*QR FMAs, and the outputs
//    leave as two-element stores that a warp coalesces into full rows.
// The window is unrolled over the compile-time KS. Grid: x = output tiles of (2*blockDim.x) x
// (QR*blockDim.y) pixels, y = channel chunks of channels_per_block, z = batch * groups; dynamic
// shared memory: stage_channels * halo_h * halo_w floats (halo_extent in uplab_scalar.cuh).
// With -DTILED_ASYNC_STAGING=1 the halo is double-buffered with cp.async instead (the #if blocks;
// staging helpers and their rationale in uplab_scalar.cuh), in tiled_async_shared_mem() bytes;
// the window loop is the same reassemble_staged, so the outputs should equal the default build's.
template <typename T, int KS>
__launch_bounds__(TILED_MAX_THREADS, TILED_MIN_BLOCKS) __global__ void reassemble_tiled(
    const T* __restrict__ features, const T* __restrict__ masks, T* __restrict__ out,
    int channels, int height, int width, int scale, int groups, int channels_per_block,
    int stage_channels) {
    constexpr int R = (KS - 1) / 2, QR = TILED_QUAD_ROWS(KS), NP = 2 * QR;
    DYNAMIC_SHARED_MEMORY(smem_raw);
#if TILED_ASYNC_STAGING
    T* sbuf = reinterpret_cast<T*>(smem_raw);
#else
    float* sfeat = reinterpret_cast<float*>(smem_raw);
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
    const int c_begin = blockIdx.y * channels_per_block;
    const int n_channels = min(channels_per_block, group_channels - c_begin);
    if (n_channels <= 0) return;  // uniform over the block, before any barrier

    const int Y = Y0 + QR * threadIdx.y, X = X0 + 2 * threadIdx.x;
    // An even scale makes out_h and out_w even, so a thread's pixels are all inside or all out.
    const bool active = Y < out_h && X < out_w;
    const long long pixel = (long long)Y * out_w + X;

    float m[KS * KS][NP];
    const T* mask_p = masks + ((long long)b * groups + g) * (KS * KS) * out_plane + pixel;
#pragma unroll
    for (int k = 0; k < KS * KS; ++k) {
#pragma unroll
        for (int q = 0; q < QR; ++q) {
            const T* mk = mask_p + k * out_plane + q * out_w;
            m[k][2 * q] = active ? to_acc(mk[0]) : 0.0f;
            m[k][2 * q + 1] = active ? to_acc(mk[1]) : 0.0f;
        }
    }

    const long long first_channel = (long long)b * channels + (long long)g * group_channels + c_begin;
    const T* feat = features + first_channel * in_plane;
    T* o = out + first_channel * out_plane + pixel;
    const int py0 = Y0 / scale;
#if TILED_ASYNC_STAGING
    // Chunk i is computed from buffer i % 2 while chunk i + 1 is copied into the other one.
    const int row_stride = async_row_stride<T>(halo_w), chunk_plane = halo_h * row_stride;
    const int buffer = stage_channels * chunk_plane;
    const int copy_elems = async_copy_elems(features, width);
    const int step = copy_elems > 0 ? copy_elems : 1;
    const int x0 = X0 / scale - R, xa = x0 & -step;  // rounded down (step is a power of two)
    const int n_copies = (x0 - xa + halo_w + step - 1) / step;
    const T* window = sbuf + (Y / scale - py0) * row_stride + (X / scale - X0 / scale) + (x0 - xa);
    const int n_chunks = (n_channels + stage_channels - 1) / stage_channels;
    stage_halo_async_any(copy_elems, feat, sbuf, min(stage_channels, n_channels), in_plane,
                         height, width, py0 - R, xa, halo_h, n_copies, row_stride);
    async_commit();
    for (int i = 0; i < n_chunks; ++i) {
        const int c0 = i * stage_channels, nc = min(stage_channels, n_channels - c0);
        if (i + 1 < n_chunks) {
            const int c1 = c0 + stage_channels;
            stage_halo_async_any(copy_elems, feat + c1 * in_plane, sbuf + ((i + 1) & 1) * buffer,
                                 min(stage_channels, n_channels - c1), in_plane, height, width,
                                 py0 - R, xa, halo_h, n_copies, row_stride);
        }
        async_commit();  // empty after the last chunk, so that "all but the newest" is chunk i
        async_wait_all_but_newest();
        __syncthreads();
        if (active) {
            reassemble_staged<KS, QR>(window + (i & 1) * buffer, row_stride, chunk_plane, m,
                                      o + c0 * out_plane, out_plane, out_w, nc);
        }
        __syncthreads();
    }
#else
    const float* window = sfeat + (Y / scale - py0) * halo_w + (X / scale - X0 / scale);
    for (int c0 = 0; c0 < n_channels; c0 += stage_channels) {
        const int nc = min(stage_channels, n_channels - c0);
        stage_halo(feat + c0 * in_plane, sfeat, nc, in_plane, height, width, py0 - R,
                   X0 / scale - R, halo_h, halo_w);
        __syncthreads();
        if (active) {
            reassemble_staged<KS, QR>(window, halo_w, halo_px, m, o + c0 * out_plane, out_plane,
                                      out_w, nc);
        }
        __syncthreads();
    }
#endif
}

// grad_features[b, c, y, x] = sum_{ky,kx} sum_{i,j < s} masks[b, g*K*K + k, py*s + i, px*s + j]
//                                                      * grad_out[b, c, py*s + i, px*s + j]
// with (py, px) = (y + r - ky, x + r - kx): the parents whose window holds (y, x) at offset k, and
// their s x s children. One thread per low-resolution point and TRANSPOSE_CHANNELS channels in
// registers: each mask value is loaded once per chunk and reused for all of them. Lanes run along
// x, so for a fixed (k, i, j) a warp reads grad_out at stride s; the s column loads of one child
// row fall in the same cache lines and hit L1. The thread owns its output, so the gather needs no
// atomics. Grid: x = tiles of blockDim.x x blockDim.y points, y = channel chunks, z = batch*groups.
template <typename T>
__global__ void reassemble_transpose(const T* __restrict__ grad_out, const T* __restrict__ masks,
                                     T* __restrict__ grad_features, int channels, int height,
                                     int width, int kernel_size, int scale, int groups,
                                     int channels_per_block) {
    typedef typename AccOf<T>::type acc_t;
    const int kk = kernel_size * kernel_size, r = (kernel_size - 1) / 2;
    const int out_h = height * scale, out_w = width * scale;
    const long long in_plane = (long long)height * width;
    const long long out_plane = (long long)out_h * out_w;
    const int tiles_x = (width + blockDim.x - 1) / blockDim.x;
    const int x = (blockIdx.x % tiles_x) * blockDim.x + threadIdx.x;
    const int y = (blockIdx.x / tiles_x) * blockDim.y + threadIdx.y;
    const int b = blockIdx.z / groups, g = blockIdx.z % groups;
    const int group_channels = channels / groups;
    const int c_begin = blockIdx.y * channels_per_block;
    const int n_channels = min(channels_per_block, group_channels - c_begin);
    if (x >= width || y >= height || n_channels <= 0) return;

    const T* mask_bg = masks + ((long long)b * groups + g) * kk * out_plane;
    const long long first_channel = (long long)b * channels + (long long)g * group_channels + c_begin;
    const T* go = grad_out + first_channel * out_plane;
    T* gf = grad_features + first_channel * in_plane + (long long)y * width + x;

    for (int c0 = 0; c0 < n_channels; c0 += TRANSPOSE_CHANNELS) {
        const int nc = min(TRANSPOSE_CHANNELS, n_channels - c0);
        acc_t acc[TRANSPOSE_CHANNELS];
#pragma unroll
        for (int cc = 0; cc < TRANSPOSE_CHANNELS; ++cc) acc[cc] = acc_t(0);
        const T* goc = go + c0 * out_plane;
        for (int ky = 0; ky < kernel_size; ++ky) {
            const int py = y + r - ky;
            if (!inside(py, height)) continue;
            for (int kx = 0; kx < kernel_size; ++kx) {
                const int px = x + r - kx;
                if (!inside(px, width)) continue;
                const long long child = (long long)py * scale * out_w + (long long)px * scale;
                const T* m = mask_bg + (long long)(ky * kernel_size + kx) * out_plane + child;
                const T* gp = goc + child;
                for (int i = 0; i < scale; ++i) {
                    for (int j = 0; j < scale; ++j) {
                        const long long off = (long long)i * out_w + j;
                        const acc_t mv = to_acc(m[off]);
#pragma unroll
                        for (int cc = 0; cc < TRANSPOSE_CHANNELS; ++cc) {
                            if (cc < nc) acc[cc] += mv * to_acc(gp[cc * out_plane + off]);
                        }
                    }
                }
            }
        }
        for (int cc = 0; cc < nc; ++cc) gf[(c0 + cc) * in_plane] = from_acc<T>(acc[cc]);
    }
}
