// Host harness: the per-pixel functions of kernels/flowtie_ops.cuh compiled by
// g++ (the CUDA qualifiers defined away by the header) and looped over the
// image exactly as the __global__ wrappers of kernels/flowtie_kernels.cu do.
// tests/test_kernels.py builds this into a shared library and holds every
// entry point equal to the NumPy reference.
#include <algorithm>
#include <cstring>
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

// 4D-STEM reduction as the CUDA kernel does it, a pattern at a time (the
// kernel's patterns are independent sums): weight tiles of FT_REDUCE_CHUNK
// pixels in ft::tile_index's layout, lane l of FT_REDUCE_LANES taking runs l,
// l + FT_REDUCE_LANES, ... of V pixels in order, then the butterfly (offsets
// FT_REDUCE_LANES / 2, ..., 1) after which lane q holds sum q.
template <typename TIN, int V>
void host_reduce(const TIN* data, long npat, long count, const float* W, int nq,
                 const long* lo_g, const long* hi_g, float* out) {
    const int n = (int)count;
    int lo[FT_MAX_WEIGHTS] = {0}, hi[FT_MAX_WEIGHTS] = {0};
    for (int q = 0; q < nq; ++q) ft::clip_range(lo_g[q], hi_g[q], count, &lo[q], &hi[q]);
    int first, last;
    ft::weight_span(nq, lo, hi, n, &first, &last);
    first -= first % V;
    std::vector<float> tile(FT_MAX_WEIGHTS * FT_REDUCE_CHUNK);
    for (long p = 0; p < npat; ++p) {
        float acc[FT_REDUCE_LANES][FT_MAX_WEIGHTS] = {};
        for (int t0 = first; t0 < last; t0 += FT_REDUCE_CHUNK) {
            const int t_end = std::min(t0 + FT_REDUCE_CHUNK, last);
            for (int q = 0; q < nq; ++q)
                for (int k = 0; k < FT_REDUCE_CHUNK; ++k)
                    tile[ft::tile_index<V>(q, k)] = t0 + k < n ? W[(long)q * count + t0 + k] : 0.0f;
            for (int lane = 0; lane < FT_REDUCE_LANES; ++lane)
                for (int r = lane; r < FT_REDUCE_CHUNK / V; r += FT_REDUCE_LANES) {
                    const int k0 = t0 + r * V;
                    if (k0 >= t_end) continue;
                    float x[V];
                    for (int j = 0; j < V; ++j) x[j] = (float)data[p * count + k0 + j];
                    ft::weighted_run<V>(x, k0, tile.data(), t0, nq, lo, hi, acc[lane]);
                }
        }
        for (int off = FT_REDUCE_LANES / 2; off > 0; off >>= 1) {
            float next[FT_REDUCE_LANES][FT_MAX_WEIGHTS];
            for (int lane = 0; lane < FT_REDUCE_LANES; ++lane)
                for (int q = 0; q < FT_MAX_WEIGHTS; ++q)
                    next[lane][q] = acc[lane][q] + acc[lane ^ off][q];
            std::memcpy(acc, next, sizeof(acc));
        }
        for (int q = 0; q < nq; ++q) out[p * nq + q] = acc[q][q];
    }
}

// reduce_patterns_<type>: runs of 16 bytes; reduce_patterns_<type>_1: a pixel at a time.
#define HOST_DEFINE_REDUCE(TIN, SUFFIX)                                                     \
    extern "C" void reduce_patterns_##SUFFIX(const TIN* data, long npat, long count,       \
                                             const float* W, int nq, const long* lo,       \
                                             const long* hi, float* out) {                 \
        host_reduce<TIN, 16 / sizeof(TIN)>(data, npat, count, W, nq, lo, hi, out);          \
    }                                                                                       \
    extern "C" void reduce_patterns_##SUFFIX##_1(const TIN* data, long npat, long count,   \
                                                 const float* W, int nq, const long* lo,   \
                                                 const long* hi, float* out) {             \
        host_reduce<TIN, 1>(data, npat, count, W, nq, lo, hi, out);                         \
    }

HOST_DEFINE_REDUCE(unsigned char, u8)
HOST_DEFINE_REDUCE(unsigned short, u16)
HOST_DEFINE_REDUCE(unsigned int, u32)
HOST_DEFINE_REDUCE(int, i32)
HOST_DEFINE_REDUCE(float, f32)
HOST_DEFINE_REDUCE(double, f64)
