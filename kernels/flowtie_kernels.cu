// flowtie_fast: thin __global__ wrappers around the per-pixel functions of
// flowtie_ops.cuh, one per dtype (suffix _f32 / _f64). Loaded once per process
// by flowtie_fast/_cuda.py through cupy.RawModule; launch geometry is a 1-D
// grid-stride loop over pixels (or spectrum elements).
#include "flowtie_ops.cuh"

#define FT_LOOP(count) \
    for (long p = (long)blockIdx.x * blockDim.x + threadIdx.x; p < (count); \
         p += (long)blockDim.x * gridDim.x)

#define FT_DEFINE_KERNELS(T, SUFFIX)                                                          \
    extern "C" __global__ void focal_derivative3_##SUFFIX(                                   \
        const T* minus, const T* zero, const T* plus, T* out, long n, T wm, T wz, T wp) {    \
        FT_LOOP(n) { out[p] = ft::focal_derivative3(minus[p], zero[p], plus[p], wm, wz, wp); } \
    }                                                                                         \
    extern "C" __global__ void focal_derivative_n_##SUFFIX(                                  \
        const T* stack, const T* w, T* out, long n, int planes) {                            \
        FT_LOOP(n) { out[p] = ft::focal_derivative_n(stack, n, planes, w, p); }               \
    }                                                                                         \
    extern "C" __global__ void fd_gradient_##SUFFIX(const T* u, T* gy, T* gx, int ny, int nx, \
                                                    T inv_h0, T inv_h1, int mirror,          \
                                                    int centred) {                           \
        FT_LOOP((long)ny * nx) {                                                              \
            ft::fd_gradient(u, ny, nx, (int)(p / nx), (int)(p % nx), inv_h0, inv_h1, mirror,  \
                            centred, gy, gx);                                                 \
        }                                                                                     \
    }                                                                                         \
    extern "C" __global__ void fd_divergence_##SUFFIX(const T* gy, const T* gx, T* out,       \
                                                      int ny, int nx, T inv_h0, T inv_h1,    \
                                                      int mirror) {                          \
        FT_LOOP((long)ny * nx) {                                                              \
            out[p] = ft::fd_divergence(gy, gx, ny, nx, (int)(p / nx), (int)(p % nx), inv_h0,  \
                                       inv_h1, mirror);                                       \
        }                                                                                     \
    }                                                                                         \
    extern "C" __global__ void weighted_divergence_##SUFFIX(                                  \
        const T* u, const T* w, T* out, int ny, int nx, T inv_h0, T inv_h1, T floor,         \
        int mirror, int divide) {                                                             \
        FT_LOOP((long)ny * nx) {                                                              \
            out[p] = ft::weighted_divergence(u, w, ny, nx, (int)(p / nx), (int)(p % nx),      \
                                             inv_h0, inv_h1, floor, mirror, divide);         \
        }                                                                                     \
    }                                                                                         \
    extern "C" __global__ void vector_scale_##SUFFIX(T* gy, T* gx, const T* w, long n,       \
                                                     T floor, int divide) {                  \
        FT_LOOP(n) { ft::vector_scale(gy, gx, w, p, floor, divide); }                         \
    }                                                                                         \
    extern "C" __global__ void inverse_laplacian_##SUFFIX(T* data, int ny, int nxs,          \
                                                          int comps, const T* sy,            \
                                                          const T* sx, T alpha, T scale) {   \
        FT_LOOP((long)ny * nxs) {                                                             \
            ft::inverse_laplacian(data, nxs, comps, (int)(p / nxs), (int)(p % nxs), sy, sx,   \
                                  alpha, scale);                                              \
        }                                                                                     \
    }                                                                                         \
    extern "C" __global__ void spectral_gradient_##SUFFIX(                                    \
        const T* F, T* Gy, T* Gx, int ny, int nxh, const T* ky, const T* kx, const T* sy,    \
        const T* sx, T alpha, T scale, int poisson) {                                         \
        FT_LOOP((long)ny * nxh) {                                                             \
            ft::spectral_gradient(F, Gy, Gx, nxh, (int)(p / nxh), (int)(p % nxh), ky, kx, sy, \
                                  sx, alpha, scale, poisson);                                 \
        }                                                                                     \
    }                                                                                         \
    extern "C" __global__ void spectral_divergence_##SUFFIX(                                  \
        const T* Gy, const T* Gx, T* out, int ny, int nxh, const T* ky, const T* kx,         \
        const T* sy, const T* sx, T alpha, T scale, int poisson) {                           \
        FT_LOOP((long)ny * nxh) {                                                             \
            ft::spectral_divergence(Gy, Gx, out, nxh, (int)(p / nxh), (int)(p % nxh), ky, kx, \
                                    sy, sx, alpha, scale, poisson);                           \
        }                                                                                     \
    }

FT_DEFINE_KERNELS(float, f32)
FT_DEFINE_KERNELS(double, f64)

// 4D-STEM reduction: out[p][q] = sum_k W[q][k] * data[p][k] for each pattern p of
// `count` detector pixels, row q of W read over [lo[q], hi[q]).
//
// Eight lanes take one pattern (a warp four, a block of 256 threads 32), and
// the block sweeps the detector in tiles of FT_REDUCE_CHUNK pixels: it copies
// the tile's weights into shared memory once (ft::tile_index's layout), then
// each lane reads every eighth 16-byte run of its pattern, FT_REDUCE_UNROLL
// runs in flight before it adds them (ft::weighted_run); a butterfly over the
// eight lanes ends the sweep and lane q writes sum q. Rows that are not 16-byte
// aligned are read a pixel at a time (V = 1), same order otherwise.
// Bounding the registers to 64 so that four blocks fit an SM is what makes
// it fast; the runs in flight and the tile length matter less. Figures, per
// variant and machine: docs/performance.md ("python -m scripts.reduce_kernel").
// tests/host/host_kernels.cpp runs the same lanes, runs, tiles and butterfly
// on the CPU.
// Tuning knobs (scripts/reduce_kernel.py builds variants with -D).
#ifndef FT_REDUCE_UNROLL
#define FT_REDUCE_UNROLL 4
#endif
#ifndef FT_REDUCE_MIN_BLOCKS
#define FT_REDUCE_MIN_BLOCKS 4
#endif
#define FT_REDUCE_BLOCK 256

// One run of V pixels from global memory, read once (streaming loads): `load`
// keeps the raw 16 bytes in four registers, `unpack` turns them into floats
// when the run is added (fewer registers live than V floats a run).
__device__ __forceinline__ unsigned word(const uint4& r, int j) {  // 32-bit word j of 4
    return j == 0 ? r.x : j == 1 ? r.y : j == 2 ? r.z : r.w;
}
__device__ __forceinline__ float word_pixel(const uint4& r, int j, unsigned char) {
    return (float)((word(r, j >> 2) >> (8 * (j & 3))) & 0xffu);
}
__device__ __forceinline__ float word_pixel(const uint4& r, int j, unsigned short) {
    return (float)((word(r, j >> 1) >> (16 * (j & 1))) & 0xffffu);
}
__device__ __forceinline__ float word_pixel(const uint4& r, int j, unsigned) {
    return (float)word(r, j);
}
__device__ __forceinline__ float word_pixel(const uint4& r, int j, int) {
    return (float)(int)word(r, j);
}
__device__ __forceinline__ float word_pixel(const uint4& r, int j, float) {
    return __uint_as_float(word(r, j));
}
__device__ __forceinline__ float word_pixel(const uint4& r, int j, double) {
    return (float)__hiloint2double((int)word(r, 2 * j + 1), (int)word(r, 2 * j));
}

template <typename TIn, int V>
struct Run {
    typedef uint4 Raw;
    static __device__ __forceinline__ Raw load(const TIn* p) {
        return __ldcs(reinterpret_cast<const uint4*>(p));
    }
    static __device__ __forceinline__ void unpack(const Raw& r, float* x) {
#pragma unroll
        for (int j = 0; j < V; ++j) x[j] = word_pixel(r, j, TIn());
    }
};
template <typename TIn>
struct Run<TIn, 1> {
    typedef TIn Raw;
    static __device__ __forceinline__ Raw load(const TIn* p) { return __ldcs(p); }
    static __device__ __forceinline__ void unpack(const Raw& r, float* x) { x[0] = (float)r; }
};

template <typename TIn, int V>
__device__ void reduce_patterns(const TIn* __restrict__ data, long npat, long count,
                                const float* __restrict__ W, int nq, const long* lo_g,
                                const long* hi_g, float* __restrict__ out) {
    constexpr int PER_BLOCK = FT_REDUCE_BLOCK / FT_REDUCE_LANES;
    constexpr int RUNS = FT_REDUCE_CHUNK / V;  // runs of a tile
    constexpr int STEP = FT_REDUCE_LANES * FT_REDUCE_UNROLL;
    __shared__ __align__(16) float tile[FT_MAX_WEIGHTS * FT_REDUCE_CHUNK];
    const int lane = threadIdx.x % FT_REDUCE_LANES;
    const int slot = threadIdx.x / FT_REDUCE_LANES;
    const int n = (int)count;
    int lo[FT_MAX_WEIGHTS], hi[FT_MAX_WEIGHTS];
#pragma unroll
    for (int q = 0; q < FT_MAX_WEIGHTS; ++q) {
        lo[q] = hi[q] = 0;
        if (q < nq) ft::clip_range(lo_g[q], hi_g[q], count, &lo[q], &hi[q]);
    }
    int first, last;
    ft::weight_span(nq, lo, hi, n, &first, &last);
    first -= first % V;  // runs start at multiples of V: 16-byte aligned
    for (long g = (long)blockIdx.x * PER_BLOCK; g < npat; g += (long)gridDim.x * PER_BLOCK) {
        const long p = g + slot;
        const TIn* row = data + (p < npat ? p : 0) * count;
        float acc[FT_MAX_WEIGHTS];
#pragma unroll
        for (int q = 0; q < FT_MAX_WEIGHTS; ++q) acc[q] = 0.0f;
        for (int t0 = first; t0 < last; t0 += FT_REDUCE_CHUNK) {
            const int t_end = t0 + FT_REDUCE_CHUNK < last ? t0 + FT_REDUCE_CHUNK : last;
            __syncthreads();  // the previous tile is no longer read
#pragma unroll 4
            for (int i = threadIdx.x; i < FT_MAX_WEIGHTS * FT_REDUCE_CHUNK;
                 i += FT_REDUCE_BLOCK) {  // launched with FT_REDUCE_BLOCK threads (tested)
                const int q = i / FT_REDUCE_CHUNK, k = i % FT_REDUCE_CHUNK;
                if (q < nq) {
                    tile[ft::tile_index<V>(q, k)] =
                        t0 + k < n ? __ldg(W + (long)q * count + t0 + k) : 0.0f;
                }
            }
            __syncthreads();
            if (p >= npat) continue;
            for (int r0 = lane; r0 < RUNS; r0 += STEP) {
                typename Run<TIn, V>::Raw raw[FT_REDUCE_UNROLL];
#pragma unroll
                for (int u = 0; u < FT_REDUCE_UNROLL; ++u) {  // the loads first: in flight
                    const int k0 = t0 + (r0 + u * FT_REDUCE_LANES) * V;
                    if (k0 < t_end) raw[u] = Run<TIn, V>::load(row + k0);
                }
#pragma unroll
                for (int u = 0; u < FT_REDUCE_UNROLL; ++u) {
                    const int k0 = t0 + (r0 + u * FT_REDUCE_LANES) * V;
                    if (k0 < t_end) {
                        float x[V];
                        Run<TIn, V>::unpack(raw[u], x);
                        ft::weighted_run<V>(x, k0, tile, t0, nq, lo, hi, acc);
                    }
                }
            }
        }
#pragma unroll
        for (int q = 0; q < FT_MAX_WEIGHTS; ++q) {
#pragma unroll
            for (int off = FT_REDUCE_LANES / 2; off > 0; off >>= 1) {
                acc[q] += __shfl_xor_sync(0xffffffffu, acc[q], off);
            }
        }
        float mine = 0.0f;  // sum `lane`, picked with constant indices (registers)
#pragma unroll
        for (int q = 0; q < FT_MAX_WEIGHTS; ++q) mine = q == lane ? acc[q] : mine;
        if (p < npat && lane < nq) out[p * nq + lane] = mine;
    }
}

// reduce_patterns_<type> reads 16-byte runs (rows and base 16-byte aligned),
// reduce_patterns_<type>_1 one pixel at a time.
#define FT_REDUCE_BOUNDS __launch_bounds__(FT_REDUCE_BLOCK, FT_REDUCE_MIN_BLOCKS)
#define FT_DEFINE_REDUCE(TIN, SUFFIX)                                                       \
    extern "C" __global__ void FT_REDUCE_BOUNDS reduce_patterns_##SUFFIX(                   \
        const TIN* data, long npat, long count, const float* W, int nq, const long* lo,     \
        const long* hi, float* out) {                                                       \
        reduce_patterns<TIN, 16 / sizeof(TIN)>(data, npat, count, W, nq, lo, hi, out);      \
    }                                                                                       \
    extern "C" __global__ void FT_REDUCE_BOUNDS reduce_patterns_##SUFFIX##_1(               \
        const TIN* data, long npat, long count, const float* W, int nq, const long* lo,     \
        const long* hi, float* out) {                                                       \
        reduce_patterns<TIN, 1>(data, npat, count, W, nq, lo, hi, out);                     \
    }

FT_DEFINE_REDUCE(unsigned char, u8)
FT_DEFINE_REDUCE(unsigned short, u16)
FT_DEFINE_REDUCE(unsigned int, u32)
FT_DEFINE_REDUCE(int, i32)
FT_DEFINE_REDUCE(float, f32)
FT_DEFINE_REDUCE(double, f64)
