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
// `count` detector pixels.
//
// A block of eight warps takes 32 patterns (four a warp) at a time and sweeps
// the detector in tiles of FT_REDUCE_CHUNK pixels: the block copies the tile's
// weights into shared memory once, then every warp reads its four patterns'
// pixels, lane l taking pixels l, l + 32, ... (coalesced reads, and the lanes
// read consecutive weights: no shared-memory bank conflict), and adds them into
// register sums with ft::weighted_pixel. Five shuffles add the lanes up.
// Measured on an H200 (benchmarks/RESULTS.md): weights read from L2 for every
// pattern, or 16-byte pixel runs per lane (weights read 4-8 floats apart, a 4-8
// way bank conflict), ran at a tenth of the memory bandwidth or less; this
// layout had not yet run on a device when written (session 3: the lease was
// spent). tests/host/host_kernels.cpp runs the same lanes, tiles and shuffle
// order on the CPU.
#define FT_REDUCE_BLOCK 256
#define FT_REDUCE_PER_WARP 4

template <typename TIn>
__device__ void reduce_patterns(const TIn* data, long npat, long count, const float* W, int nq,
                                const long* lo_g, const long* hi_g, float* out) {
    constexpr int GROUP = (FT_REDUCE_BLOCK / 32) * FT_REDUCE_PER_WARP;
    __shared__ float tile[FT_MAX_WEIGHTS * FT_REDUCE_CHUNK];
    const int lane = threadIdx.x & 31;
    const int warp = threadIdx.x >> 5;
    const int n = (int)count;
    int lo[FT_MAX_WEIGHTS], hi[FT_MAX_WEIGHTS];
#pragma unroll
    for (int q = 0; q < FT_MAX_WEIGHTS; ++q) {
        lo[q] = q < nq ? (int)lo_g[q] : 0;
        hi[q] = q < nq ? (int)hi_g[q] : 0;
    }
    int first, last;
    ft::weight_span(nq, lo, hi, n, &first, &last);
    for (long g = (long)blockIdx.x * GROUP; g < npat; g += (long)gridDim.x * GROUP) {
        const long p0 = g + (long)warp * FT_REDUCE_PER_WARP;
        float acc[FT_REDUCE_PER_WARP][FT_MAX_WEIGHTS];
#pragma unroll
        for (int m = 0; m < FT_REDUCE_PER_WARP; ++m) {
#pragma unroll
            for (int q = 0; q < FT_MAX_WEIGHTS; ++q) acc[m][q] = 0.0f;
        }
        for (int c0 = first; c0 < last; c0 += FT_REDUCE_CHUNK) {
            const int c_end = c0 + FT_REDUCE_CHUNK < last ? c0 + FT_REDUCE_CHUNK : last;
            __syncthreads();  // the previous tile is no longer read
            for (int i = threadIdx.x; i < nq * FT_REDUCE_CHUNK; i += blockDim.x) {
                const int k = c0 + i % FT_REDUCE_CHUNK;
                tile[i] = k < n ? __ldg(W + (long)(i / FT_REDUCE_CHUNK) * count + k) : 0.0f;
            }
            __syncthreads();
#pragma unroll 2
            for (int k = c0 + lane; k < c_end; k += 32) {
                float x[FT_REDUCE_PER_WARP];
#pragma unroll
                for (int m = 0; m < FT_REDUCE_PER_WARP; ++m) {  // four loads in flight
                    x[m] = p0 + m < npat ? (float)__ldcs(data + (p0 + m) * count + k) : 0.0f;
                }
                ft::weighted_pixel<FT_REDUCE_PER_WARP>(x, k, tile, FT_REDUCE_CHUNK, c0, nq, lo,
                                                       hi, acc);
            }
        }
#pragma unroll
        for (int m = 0; m < FT_REDUCE_PER_WARP; ++m) {
#pragma unroll
            for (int q = 0; q < FT_MAX_WEIGHTS; ++q) {
                for (int s = 16; s > 0; s >>= 1) {
                    acc[m][q] += __shfl_down_sync(0xffffffffu, acc[m][q], s);
                }
            }
            if (lane == 0 && p0 + m < npat) {
#pragma unroll
                for (int q = 0; q < FT_MAX_WEIGHTS; ++q) {  // constant indices: registers
                    if (q < nq) out[(p0 + m) * nq + q] = acc[m][q];
                }
            }
        }
    }
}

#define FT_DEFINE_REDUCE(TIN, SUFFIX)                                                       \
    extern "C" __global__ void reduce_patterns_##SUFFIX(                                    \
        const TIN* data, long npat, long count, const float* W, int nq, const long* lo,     \
        const long* hi, float* out) {                                                       \
        reduce_patterns<TIN>(data, npat, count, W, nq, lo, hi, out);                        \
    }

FT_DEFINE_REDUCE(unsigned char, u8)
FT_DEFINE_REDUCE(unsigned short, u16)
FT_DEFINE_REDUCE(unsigned int, u32)
FT_DEFINE_REDUCE(int, i32)
FT_DEFINE_REDUCE(float, f32)
FT_DEFINE_REDUCE(double, f64)
