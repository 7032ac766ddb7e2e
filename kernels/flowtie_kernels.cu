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
// `count` detector pixels. One warp per pattern (grid-stride over warps): each
// lane reads runs of 16 bytes (width = 16 / sizeof(TIn) pixels, one vector load,
// unrolled so that several are in flight) or, where the patterns are not
// 16-byte aligned (width = 1), single pixels, and keeps its partial sums in
// registers; five shuffles add the lanes up, with no shared memory and no block
// barrier. The arithmetic is ft::weighted_sums's, run by the host harness. Block
// size 256 (eight patterns a block).
#define FT_REDUCE_BLOCK 256

template <typename TIn>
__device__ void reduce_patterns(const TIn* data, long npat, long count, const float* W, int nq,
                                const long* lo, const long* hi, int width, float* out) {
    constexpr int V = 16 / sizeof(TIn);
    const int lane = threadIdx.x & 31;
    const long warps = (long)gridDim.x * (blockDim.x >> 5);
    long first, last;
    ft::weight_span(nq, lo, hi, count, &first, &last);
    for (long p = (long)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5); p < npat;
         p += warps) {
        const TIn* pattern = data + p * count;
        float acc[FT_MAX_WEIGHTS];
#pragma unroll
        for (int q = 0; q < FT_MAX_WEIGHTS; ++q) acc[q] = 0.0f;
        if (width == V) {
            const long start = first - first % V;
#pragma unroll 4
            for (long k = start + (long)lane * V; k < last; k += 32L * V) {
                union {
                    uint4 u;
                    TIn v[V];
                } run;
                run.u = __ldcs(reinterpret_cast<const uint4*>(pattern + k));  // read once
#pragma unroll
                for (int j = 0; j < V; ++j) {
                    ft::weighted_pixel((float)run.v[j], k + j, count, W, nq, lo, hi, acc);
                }
            }
        } else {
            ft::weighted_sums(pattern, count, lane, 32, 1, W, nq, lo, hi, acc);
        }
#pragma unroll
        for (int q = 0; q < FT_MAX_WEIGHTS; ++q) {
            for (int s = 16; s > 0; s >>= 1) acc[q] += __shfl_down_sync(0xffffffffu, acc[q], s);
        }
        if (lane == 0) {
            for (int q = 0; q < nq; ++q) out[p * nq + q] = acc[q];
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
