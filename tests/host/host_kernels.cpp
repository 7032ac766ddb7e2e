// Host harness: the per-pixel functions of kernels/flowtie_ops.cuh compiled by
// g++ (the CUDA qualifiers defined away by the header) and looped over the
// image exactly as the __global__ wrappers of kernels/flowtie_kernels.cu do.
// tests/test_kernels.py builds this into a shared library and holds every
// entry point equal to the NumPy reference.
#include <algorithm>
#include <vector>

#include "flowtie_ops.cuh"

#define HOST_LOOP(count) for (long p = 0; p < (count); ++p)

#define HOST_DEFINE(T, SUFFIX)                                                             \
    extern "C" void focal_derivative3_##SUFFIX(const T* m, const T* z, const T* pl, T* out,  \
                                               long n, T wm, T wz, T wp) {                  \
        HOST_LOOP(n) out[p] = ft::focal_derivative3(m[p], z[p], pl[p], wm, wz, wp);         \
    }                                                                                        \
    extern "C" void focal_derivative_n_##SUFFIX(const T* stack, const T* w, T* out, long n,  \
                                                int planes) {                                \
        HOST_LOOP(n) out[p] = ft::focal_derivative_n(stack, n, planes, w, p);                \
    }                                                                                        \
    extern "C" void fd_gradient_##SUFFIX(const T* u, T* gy, T* gx, int ny, int nx, T ih0,    \
                                         T ih1, int mirror, int centred) {                  \
        HOST_LOOP((long)ny * nx)                                                             \
        ft::fd_gradient(u, ny, nx, (int)(p / nx), (int)(p % nx), ih0, ih1, mirror, centred,  \
                        gy, gx);                                                             \
    }                                                                                        \
    extern "C" void fd_divergence_##SUFFIX(const T* gy, const T* gx, T* out, int ny, int nx, \
                                           T ih0, T ih1, int mirror) {                      \
        HOST_LOOP((long)ny * nx)                                                             \
        out[p] = ft::fd_divergence(gy, gx, ny, nx, (int)(p / nx), (int)(p % nx), ih0, ih1,   \
                                   mirror);                                                  \
    }                                                                                        \
    extern "C" void weighted_divergence_##SUFFIX(const T* u, const T* w, T* out, int ny,     \
                                                 int nx, T ih0, T ih1, T floor, int mirror,  \
                                                 int divide) {                               \
        HOST_LOOP((long)ny * nx)                                                             \
        out[p] = ft::weighted_divergence(u, w, ny, nx, (int)(p / nx), (int)(p % nx), ih0,    \
                                         ih1, floor, mirror, divide);                        \
    }                                                                                        \
    extern "C" void vector_scale_##SUFFIX(T* gy, T* gx, const T* w, long n, T floor,         \
                                          int divide) {                                      \
        HOST_LOOP(n) ft::vector_scale(gy, gx, w, p, floor, divide);                          \
    }                                                                                        \
    extern "C" void inverse_laplacian_##SUFFIX(T* data, int ny, int nxs, int comps,          \
                                               const T* sy, const T* sx, T alpha, T scale) { \
        HOST_LOOP((long)ny * nxs)                                                            \
        ft::inverse_laplacian(data, nxs, comps, (int)(p / nxs), (int)(p % nxs), sy, sx,      \
                              alpha, scale);                                                 \
    }                                                                                        \
    extern "C" void spectral_gradient_##SUFFIX(const T* F, T* Gy, T* Gx, int ny, int nxh,    \
                                               const T* ky, const T* kx, const T* sy,        \
                                               const T* sx, T alpha, T scale, int poisson) { \
        HOST_LOOP((long)ny * nxh)                                                            \
        ft::spectral_gradient(F, Gy, Gx, nxh, (int)(p / nxh), (int)(p % nxh), ky, kx, sy, sx,\
                              alpha, scale, poisson);                                        \
    }                                                                                        \
    extern "C" void spectral_divergence_##SUFFIX(const T* Gy, const T* Gx, T* out, int ny,   \
                                                 int nxh, const T* ky, const T* kx,          \
                                                 const T* sy, const T* sx, T alpha, T scale, \
                                                 int poisson) {                              \
        HOST_LOOP((long)ny * nxh)                                                            \
        ft::spectral_divergence(Gy, Gx, out, nxh, (int)(p / nxh), (int)(p % nxh), ky, kx,    \
                                sy, sx, alpha, scale, poisson);                              \
    }

HOST_DEFINE(float, f32)
HOST_DEFINE(double, f64)

// 4D-STEM reduction as one warp of the CUDA kernel does it, a pattern at a time
// (the kernel's four patterns a warp are independent sums): weight tiles of
// FT_REDUCE_CHUNK pixels, lane l taking pixels l, l + 32, ..., then the
// shuffle-down tree (offsets 16, 8, 4, 2, 1).
#define HOST_DEFINE_REDUCE(TIN, SUFFIX)                                                     \
    extern "C" void reduce_patterns_##SUFFIX(const TIN* data, long npat, long count,       \
                                             const float* W, int nq, const long* lo_g,     \
                                             const long* hi_g, float* out) {               \
        const int n = (int)count;                                                           \
        int lo[FT_MAX_WEIGHTS] = {0}, hi[FT_MAX_WEIGHTS] = {0};                             \
        for (int q = 0; q < nq; ++q) {                                                      \
            lo[q] = (int)lo_g[q];                                                           \
            hi[q] = (int)hi_g[q];                                                           \
        }                                                                                   \
        int first, last;                                                                    \
        ft::weight_span(nq, lo, hi, n, &first, &last);                                      \
        std::vector<float> tile(FT_MAX_WEIGHTS * FT_REDUCE_CHUNK);                          \
        for (long p = 0; p < npat; ++p) {                                                   \
            float acc[32][1][FT_MAX_WEIGHTS] = {};                                          \
            for (int c0 = first; c0 < last; c0 += FT_REDUCE_CHUNK) {                        \
                const int c_end = std::min(c0 + FT_REDUCE_CHUNK, last);                     \
                for (int i = 0; i < nq * FT_REDUCE_CHUNK; ++i) {                            \
                    const int k = c0 + i % FT_REDUCE_CHUNK;                                 \
                    tile[i] = k < n ? W[(long)(i / FT_REDUCE_CHUNK) * count + k] : 0.0f;    \
                }                                                                           \
                for (int lane = 0; lane < 32; ++lane)                                       \
                    for (int k = c0 + lane; k < c_end; k += 32) {                           \
                        const float x = (float)data[p * count + k];                         \
                        ft::weighted_pixel<1>(&x, k, tile.data(), FT_REDUCE_CHUNK, c0, nq,  \
                                              lo, hi, acc[lane]);                           \
                    }                                                                       \
            }                                                                               \
            for (int s = 16; s > 0; s >>= 1)                                                \
                for (int lane = 0; lane < s; ++lane)                                        \
                    for (int q = 0; q < nq; ++q) acc[lane][0][q] += acc[lane + s][0][q];    \
            for (int q = 0; q < nq; ++q) out[p * nq + q] = acc[0][0][q];                    \
        }                                                                                   \
    }

HOST_DEFINE_REDUCE(unsigned char, u8)
HOST_DEFINE_REDUCE(unsigned short, u16)
HOST_DEFINE_REDUCE(unsigned int, u32)
HOST_DEFINE_REDUCE(int, i32)
HOST_DEFINE_REDUCE(float, f32)
HOST_DEFINE_REDUCE(double, f64)
