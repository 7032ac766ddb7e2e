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
// pixels (16-byte loads of width = 16 / sizeof(TIn) pixels where the patterns
// are 16-byte aligned, else single pixels; four loads in flight a lane) and
// adds them into register sums with ft::weighted_pixel. Five shuffles add the
// lanes up. Reading the weights from L2 for every pattern (eight rows of a 128²
// detector are 512 kB, twice L1) had made the kernel L2-bound at a tenth of
// the memory bandwidth. tests/host/host_kernels.cpp runs the same lanes, tiles
// and shuffle order on the CPU.
#define FT_REDUCE_BLOCK 256
#define FT_REDUCE_PER_WARP 4

template <typename TIn, int V>
struct FtRun {  // V consecutive pixels, read with one 16-byte load
    __align__(16) TIn v[V];
    __device__ __forceinline__ void load(const TIn* p) {
        *reinterpret_cast<uint4*>(v) = __ldcs(reinterpret_cast<const uint4*>(p));
    }
};
template <typename TIn>
struct FtRun<TIn, 1> {
    TIn v[1];
    __device__ __forceinline__ void load(const TIn* p) { v[0] = __ldcs(p); }
};

// One tile [c0, c_end) of the warp's patterns p0 .. p0 + FT_REDUCE_PER_WARP - 1.
template <typename TIn, int V>
__device__ __forceinline__ void reduce_tile(const TIn* data, long npat, long count, long p0,
                                            long c0, long c_end, const float* tile, int nq,
                                            const long* lo, const long* hi, int lane,
                                            float (*acc)[FT_MAX_WEIGHTS]) {
    for (long k = c0 + (long)lane * V; k < c_end; k += 32L * V) {
        FtRun<TIn, V> run[FT_REDUCE_PER_WARP];
#pragma unroll
        for (int m = 0; m < FT_REDUCE_PER_WARP; ++m) {
            if (p0 + m < npat) run[m].load(data + (p0 + m) * count + k);
        }
#pragma unroll
        for (int m = 0; m < FT_REDUCE_PER_WARP; ++m) {
            if (p0 + m < npat) {
#pragma unroll
                for (int j = 0; j < V; ++j) {
                    ft::weighted_pixel((float)run[m].v[j], k + j, tile, (long)FT_REDUCE_CHUNK,
                                       c0, nq, lo, hi, acc[m]);
                }
            }
        }
    }
}

template <typename TIn>
__device__ void reduce_patterns(const TIn* data, long npat, long count, const float* W, int nq,
                                const long* lo_g, const long* hi_g, int width, float* out) {
    constexpr int V = 16 / sizeof(TIn);
    constexpr int GROUP = (FT_REDUCE_BLOCK / 32) * FT_REDUCE_PER_WARP;
    __shared__ float tile[FT_MAX_WEIGHTS * FT_REDUCE_CHUNK];
    const int lane = threadIdx.x & 31;
    const int warp = threadIdx.x >> 5;
    long lo[FT_MAX_WEIGHTS], hi[FT_MAX_WEIGHTS];
#pragma unroll
    for (int q = 0; q < FT_MAX_WEIGHTS; ++q) {
        lo[q] = q < nq ? lo_g[q] : 0;
        hi[q] = q < nq ? hi_g[q] : 0;
    }
    long first, last;
    ft::weight_span(nq, lo, hi, count, &first, &last);
    const long start = first - first % width;
    for (long g = (long)blockIdx.x * GROUP; g < npat; g += (long)gridDim.x * GROUP) {
        const long p0 = g + (long)warp * FT_REDUCE_PER_WARP;
        float acc[FT_REDUCE_PER_WARP][FT_MAX_WEIGHTS];
#pragma unroll
        for (int m = 0; m < FT_REDUCE_PER_WARP; ++m) {
#pragma unroll
            for (int q = 0; q < FT_MAX_WEIGHTS; ++q) acc[m][q] = 0.0f;
        }
        for (long c0 = start; c0 < last; c0 += FT_REDUCE_CHUNK) {
            const long c_end = c0 + FT_REDUCE_CHUNK < last ? c0 + FT_REDUCE_CHUNK : last;
            __syncthreads();  // the previous tile is no longer read
            for (int i = threadIdx.x; i < nq * FT_REDUCE_CHUNK; i += blockDim.x) {
                const long k = c0 + i % FT_REDUCE_CHUNK;
                tile[i] = k < count ? __ldg(W + (long)(i / FT_REDUCE_CHUNK) * count + k) : 0.0f;
            }
            __syncthreads();
            if (width == V) {
                reduce_tile<TIn, V>(data, npat, count, p0, c0, c_end, tile, nq, lo, hi, lane, acc);
            } else {
                reduce_tile<TIn, 1>(data, npat, count, p0, c0, c_end, tile, nq, lo, hi, lane, acc);
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
        const long* hi, int width, float* out) {                                            \
        reduce_patterns<TIN>(data, npat, count, W, nq, lo, hi, width, out);                 \
    }

FT_DEFINE_REDUCE(unsigned char, u8)
FT_DEFINE_REDUCE(unsigned short, u16)
FT_DEFINE_REDUCE(unsigned int, u32)
FT_DEFINE_REDUCE(int, i32)
FT_DEFINE_REDUCE(float, f32)
FT_DEFINE_REDUCE(double, f64)
