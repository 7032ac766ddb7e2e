// flowtie_fast: per-pixel arithmetic of every CUDA kernel.
//
// Everything here is a `__host__ __device__` function of one output pixel so
// that the same code runs in the `__global__` wrappers of flowtie_kernels.cu
// and, compiled by g++ with the CUDA qualifiers defined away, in the host
// harness of tests/host/host_kernels.cpp (checked against NumPy on every CI
// run, GPU or not).
//
// Layout: C-contiguous row-major images of shape (ny, nx), pixel p = i*nx + j,
// axis 0 = i ("y"), axis 1 = j ("x"). Half spectra of real FFTs are
// (ny, nx/2+1) complex, stored as interleaved (re, im) pairs of T.
//
// Discretisation (one scheme each, consistent with the Poisson symbols built in
// flowtie_fast/poisson.py):
//   finite differences ("fd"): gradient = forward differences, divergence =
//     backward differences (the negative adjoint of that gradient), so that
//     div(grad(.)) is the compact 5-point Laplacian whose Fourier symbol
//     (periodic) or DCT-II symbol (mirror) inverts it exactly.
//   spectral: gradient = i q, divergence = i q . , Laplacian = -|q|^2, with the
//     Nyquist component of first derivatives set to zero by the caller.
#pragma once

#if defined(__CUDACC__) || defined(__CUDACC_RTC__)
#define FT_HD __host__ __device__ __forceinline__
#else
#define FT_HD inline
#endif

namespace ft {

// ---------------------------------------------------------------- focal derivative

// d I / d z (or any weighted combination) from three planes.
template <typename T>
FT_HD T focal_derivative3(T minus, T zero, T plus, T w_minus, T w_zero, T w_plus) {
    return w_minus * minus + w_zero * zero + w_plus * plus;
}

// Weighted sum over n planes of a stack (n, ny, nx): the least-squares
// (Savitzky-Golay) derivative when the weights are its row.
template <typename T>
FT_HD T focal_derivative_n(const T* stack, long plane, int n, const T* w, long p) {
    T acc = T(0);
    for (int k = 0; k < n; ++k) acc += w[k] * stack[k * plane + p];
    return acc;
}

// ---------------------------------------------------------------- index helpers

// Index of the next sample along an axis of length n, or -1 where a mirror
// (homogeneous Neumann) boundary says the forward difference is zero.
FT_HD int next_index(int i, int n, int mirror) {
    if (i + 1 < n) return i + 1;
    return mirror ? -1 : 0;
}

// Index of the previous sample, or -1 where the mirror boundary has no face.
FT_HD int prev_index(int i, int n, int mirror) {
    if (i > 0) return i - 1;
    return mirror ? -1 : n - 1;
}

// ---------------------------------------------------------------- finite differences

// Gradient of u at (i, j). Forward differences (the "fd" scheme's operator) or,
// with `centred`, central differences on the pixel (used for the reported
// phase gradient; the mirror boundary reflects u evenly).
template <typename T>
FT_HD void fd_gradient(const T* u, int ny, int nx, int i, int j, T inv_h0, T inv_h1,
                       int mirror, int centred, T* gy, T* gx) {
    const long p = (long)i * nx + j;
    if (centred) {
        int up = i + 1 < ny ? i + 1 : (mirror ? i : 0);
        int dn = i > 0 ? i - 1 : (mirror ? 0 : ny - 1);
        int rt = j + 1 < nx ? j + 1 : (mirror ? j : 0);
        int lf = j > 0 ? j - 1 : (mirror ? 0 : nx - 1);
        gy[p] = (u[(long)up * nx + j] - u[(long)dn * nx + j]) * (T(0.5) * inv_h0);
        gx[p] = (u[(long)i * nx + rt] - u[(long)i * nx + lf]) * (T(0.5) * inv_h1);
        return;
    }
    int up = next_index(i, ny, mirror);
    int rt = next_index(j, nx, mirror);
    gy[p] = up < 0 ? T(0) : (u[(long)up * nx + j] - u[p]) * inv_h0;
    gx[p] = rt < 0 ? T(0) : (u[(long)i * nx + rt] - u[p]) * inv_h1;
}

// Divergence of (gy, gx) at (i, j) by backward differences: the negative
// adjoint of the forward-difference gradient for the same boundary.
template <typename T>
FT_HD T fd_divergence(const T* gy, const T* gx, int ny, int nx, int i, int j, T inv_h0,
                      T inv_h1, int mirror) {
    const long p = (long)i * nx + j;
    int dn = prev_index(i, ny, mirror);
    int lf = prev_index(j, nx, mirror);
    // On a mirror boundary the last face carries no flux whatever the input says.
    T fy = (mirror && i == ny - 1) ? T(0) : gy[p];
    T fx = (mirror && j == nx - 1) ? T(0) : gx[p];
    T fy_prev = dn < 0 ? T(0) : gy[(long)dn * nx + j];
    T fx_prev = lf < 0 ? T(0) : gx[(long)i * nx + lf];
    return (fy - fy_prev) * inv_h0 + (fx - fx_prev) * inv_h1;
}

// Weight of the face between two pixels of intensity a and b: the mean
// intensity, or its inverse bounded by `floor` (Teague's division by I).
template <typename T>
FT_HD T face_weight(T a, T b, T floor, int divide) {
    T m = T(0.5) * (a + b);
    if (!divide) return m;
    return T(1) / (m > floor ? m : floor);
}

// Flux w * du/dy on the face between rows i and next(i); zero on a mirror edge.
template <typename T>
FT_HD T face_flux_y(const T* u, const T* w, int ny, int nx, int i, int j, T inv_h0, T floor,
                    int mirror, int divide) {
    int q = next_index(i, ny, mirror);
    if (q < 0) return T(0);
    const long a = (long)i * nx + j, b = (long)q * nx + j;
    return (u[b] - u[a]) * inv_h0 * face_weight(w[a], w[b], floor, divide);
}

// Flux w * du/dx on the face between columns j and next(j).
template <typename T>
FT_HD T face_flux_x(const T* u, const T* w, int ny, int nx, int i, int j, T inv_h1, T floor,
                    int mirror, int divide) {
    int q = next_index(j, nx, mirror);
    if (q < 0) return T(0);
    const long a = (long)i * nx + j, b = (long)i * nx + q;
    return (u[b] - u[a]) * inv_h1 * face_weight(w[a], w[b], floor, divide);
}

// Fused div(W grad u) at (i, j) with W the face weight above: with `divide`
// this is Teague's middle step div(grad psi / max(I, floor)); without it, the
// finite-difference transport operator div(I grad phi) of the TIE.
template <typename T>
FT_HD T weighted_divergence(const T* u, const T* w, int ny, int nx, int i, int j, T inv_h0,
                            T inv_h1, T floor, int mirror, int divide) {
    int dn = prev_index(i, ny, mirror);
    int lf = prev_index(j, nx, mirror);
    T fy = face_flux_y(u, w, ny, nx, i, j, inv_h0, floor, mirror, divide);
    T fx = face_flux_x(u, w, ny, nx, i, j, inv_h1, floor, mirror, divide);
    T fy_prev = dn < 0 ? T(0) : face_flux_y(u, w, ny, nx, dn, j, inv_h0, floor, mirror, divide);
    T fx_prev = lf < 0 ? T(0) : face_flux_x(u, w, ny, nx, i, lf, inv_h1, floor, mirror, divide);
    return (fy - fy_prev) * inv_h0 + (fx - fx_prev) * inv_h1;
}

// ---------------------------------------------------------------- pointwise

// (gy, gx) *= I, or /= max(I, floor) with `divide`, at pixel p, in place.
template <typename T>
FT_HD void vector_scale(T* gy, T* gx, const T* w, long p, T floor, int divide) {
    T s = w[p];
    if (divide) s = T(1) / (s > floor ? s : floor);
    gy[p] *= s;
    gx[p] *= s;
}

// ---------------------------------------------------------------- Fourier multipliers

// Symbol of the (Tikhonov-regularised) inverse Laplacian for -Laplacian
// symbol s >= 0: -1/s, or -s / (s^2 + alpha); zero at s = 0 (mean of the phase).
template <typename T>
FT_HD T inverse_laplacian_factor(T s, T alpha) {
    if (!(s > T(0))) return T(0);
    return -s / (s * s + alpha);
}

// In place: data *= scale * inverse_laplacian_factor(sy[i] + sx[j], alpha) for
// the `comps` values of element (i, j) of a (ny, nxs) spectrum (2 = complex
// half spectrum, 1 = real DCT spectrum).
template <typename T>
FT_HD void inverse_laplacian(T* data, int nxs, int comps, int i, int j, const T* sy,
                             const T* sx, T alpha, T scale) {
    T f = scale * inverse_laplacian_factor(sy[i] + sx[j], alpha);
    const long e = ((long)i * nxs + j) * comps;
    for (int c = 0; c < comps; ++c) data[e + c] *= f;
}

// Half-spectrum gradient: (Gy, Gx) = scale * i (ky[i], kx[j]) F at (i, j), and
// with `poisson` also times the inverse Laplacian symbol (the gradient of the
// Poisson solution, fused).
template <typename T>
FT_HD void spectral_gradient(const T* F, T* Gy, T* Gx, int nxh, int i, int j, const T* ky,
                             const T* kx, const T* sy, const T* sx, T alpha, T scale,
                             int poisson) {
    const long e = ((long)i * nxh + j) * 2;
    T re = F[e], im = F[e + 1];
    T f = scale;
    if (poisson) f *= inverse_laplacian_factor(sy[i] + sx[j], alpha);
    T a = ky[i] * f, b = kx[j] * f;
    Gy[e] = -a * im;
    Gy[e + 1] = a * re;
    Gx[e] = -b * im;
    Gx[e + 1] = b * re;
}

// Half-spectrum divergence i (ky Gy + kx Gx), times scale, and with `poisson`
// also times the inverse Laplacian symbol: out may alias Gy or Gx.
template <typename T>
FT_HD void spectral_divergence(const T* Gy, const T* Gx, T* out, int nxh, int i, int j,
                               const T* ky, const T* kx, const T* sy, const T* sx, T alpha,
                               T scale, int poisson) {
    const long e = ((long)i * nxh + j) * 2;
    T re = ky[i] * Gy[e] + kx[j] * Gx[e];
    T im = ky[i] * Gy[e + 1] + kx[j] * Gx[e + 1];
    T f = scale;
    if (poisson) f *= inverse_laplacian_factor(sy[i] + sx[j], alpha);
    out[e] = -im * f;
    out[e + 1] = re * f;
}

// ---------------------------------------------------------------- 4D-STEM reduction

// Most weighted sums (virtual detectors, centre-of-mass moments) one pass computes.
#define FT_MAX_WEIGHTS 8
// Detector pixels per tile of weights (the CUDA kernel's shared memory, 8 rows
// x 512 x 4 bytes = 16 kB; a multiple of every run length, 1 to 16 pixels).
#ifndef FT_REDUCE_CHUNK
#define FT_REDUCE_CHUNK 512
#endif
// Lanes that share one pattern: each takes every FT_REDUCE_LANES-th run of it,
// so that they read consecutive runs (FT_REDUCE_LANES x 16 contiguous bytes);
// after the sweep a butterfly over them leaves every lane with the pattern's
// sums, and lane q writes sum q (FT_MAX_WEIGHTS of them, one a lane).
#define FT_REDUCE_LANES 8

static_assert(FT_REDUCE_CHUNK % 16 == 0, "a weight tile holds whole 16-byte runs of any type");
static_assert(FT_REDUCE_LANES >= FT_MAX_WEIGHTS, "lane q writes sum q");

// Row range [lo, hi) clipped to the pattern's pixels [0, count) (an empty
// range where hi <= lo): the kernels never read outside a pattern.
FT_HD void clip_range(long lo, long hi, long count, int* l, int* h) {
    const long a = lo < 0 ? 0 : (lo > count ? count : lo);
    const long b = hi < a ? a : (hi > count ? count : hi);
    *l = (int)a;
    *h = (int)b;
}

// The union [first, last) of the row ranges [lo[q], hi[q]) (empty rows skipped).
// Pixel indices of one pattern are int: a detector has fewer than 2^31 pixels.
FT_HD void weight_span(int nq, const int* lo, const int* hi, int count, int* first, int* last) {
    *first = count;
    *last = 0;
    for (int q = 0; q < FT_MAX_WEIGHTS; ++q) {
        if (q >= nq) break;
        if (lo[q] < hi[q]) {
            *first = lo[q] < *first ? lo[q] : *first;
            *last = hi[q] > *last ? hi[q] : *last;
        }
    }
}

// Position in a weight tile of row q's weight for pixel k of the tile
// (0 <= k < FT_REDUCE_CHUNK), when patterns are read in runs of V pixels (one
// 16-byte load: V = 16 / sizeof(pixel); 1 where rows are not 16-byte aligned).
// The tile is [row][part][run][4]: the weights of a run are split in parts of
// (at most) four floats, one 16-byte shared load each, and the same part of
// consecutive runs is contiguous, so that the lanes of one pattern (consecutive
// runs) read consecutive 16-byte words: no bank conflict.
template <int V>
FT_HD int tile_index(int q, int k) {
    constexpr int w = V < 4 ? V : 4;  // floats of a part
    constexpr int parts = V / w;
    const int run = k / V, j = k % V;
    return ((q * parts + j / w) * (FT_REDUCE_CHUNK / V) + run) * w + j % w;
}

// N consecutive floats of a weight tile (4N-byte aligned): one shared-memory
// load of 4N bytes on the device, N loads on the host.
template <int N>
FT_HD void tile_load(const float* p, float* w) {
    for (int e = 0; e < N; ++e) w[e] = p[e];
}
#if defined(__CUDA_ARCH__)
template <>
FT_HD void tile_load<4>(const float* p, float* w) {
    const float4 v = *reinterpret_cast<const float4*>(p);
    w[0] = v.x;
    w[1] = v.y;
    w[2] = v.z;
    w[3] = v.w;
}
template <>
FT_HD void tile_load<2>(const float* p, float* w) {
    const float2 v = *reinterpret_cast<const float2*>(p);
    w[0] = v.x;
    w[1] = v.y;
}
#endif

// One run x[0..V) of a pattern, pixels k0 .. k0 + V - 1 (k0 - t0 of the tile
// that starts at pixel t0, a multiple of V), into the sums acc[q] of every row
// whose range [lo[q], hi[q]) meets it: acc[q] += W[q][k] * x[k - k0]. Every
// non-zero weight of row q lies in its range (a small bright-field disk spans a
// few percent of the detector); a run inside the range reads its weights part
// by part (ft::tile_index), and a run that straddles a range edge tests each
// pixel, so that pixels outside a row's range are never read into its sum (a
// NaN there stays out, as in the NumPy reference).
template <int V>
FT_HD void weighted_run(const float* x, int k0, const float* tile, int t0, int nq, const int* lo,
                        const int* hi, float* acc) {
    constexpr int w = V < 4 ? V : 4;
    constexpr int parts = V / w;
#pragma unroll
    for (int q = 0; q < FT_MAX_WEIGHTS; ++q) {
        if (q >= nq) break;
        if (k0 >= lo[q] && k0 + V <= hi[q]) {
#pragma unroll
            for (int part = 0; part < parts; ++part) {
                float wt[w];
                tile_load<w>(tile + tile_index<V>(q, k0 - t0 + part * w), wt);
#pragma unroll
                for (int e = 0; e < w; ++e) acc[q] += wt[e] * x[part * w + e];
            }
        } else if (k0 < hi[q] && k0 + V > lo[q]) {
#pragma unroll
            for (int j = 0; j < V; ++j) {
                const int k = k0 + j;
                if (k >= lo[q] && k < hi[q]) acc[q] += tile[tile_index<V>(q, k - t0)] * x[j];
            }
        }
    }
}

}  // namespace ft
