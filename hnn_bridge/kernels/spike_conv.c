/* A 3x3, stride-1, padding-1 convolution of a binary (0/1) input, done by visiting only
 * the input's ones (float32). Compiled at first use by hnn_bridge/kernels/spike_conv.py.
 *
 * Layouts: x [n, cin, h, w] (NCHW), the weight transposed once to wt [cin, 3, 3, cout],
 * so that the 3x3 kernel column of one input channel, wt[ci, ky, kx, :], is a contiguous
 * row over the output channels; out [n, cout, h, w] (NCHW).
 *
 * Forward, two methods (the Python side picks one):
 *   - gather (method 0): per image, the list of active input channels of every pixel;
 *     for every output pixel, the rows wt[ci, ky, kx, :] of the active inputs in its 3x3
 *     neighbourhood are added into accumulators held in registers (a block of up to 64
 *     output channels); an output row is collected channels-last in a small tile, then
 *     written into out[n] (NCHW) by 8 x 8 transposes;
 *   - scatter (method 1): per image, every active input (ci, iy, ix) adds its 9 rows into
 *     a zero-bordered channels-last buffer [(h+2) x (w+2), cout] (in cache), which is then
 *     written into out[n] (NCHW) by 8 x 8 transposes.
 * Weight gradient: gwt[ci, ky, kx, :] = sum over images and active inputs (ci, iy, ix) of
 * grad_out[n, :, iy - ky + 1, ix - kx + 1] (zero outside the image), from grad_out copied
 * per image into a zero-bordered channels-last buffer; per (ci, ky, kx) the sum over an
 * image's active inputs runs in registers, then is added into the partial sum of the
 * image's block of `block` images (partials summed in block order by the caller, so the
 * result does not depend on how the images are split over threads).
 *
 * Summation order (float32, no fused multiply-add): gather adds the bias (or 0) first,
 * then the active inputs in the order (ky, kx, ci); scatter in the order (ci, iy, ix).
 * Inputs must be exactly 0 or 1: every entry point returns -1 when they are, -2 when
 * memory runs out, else the offset (from x) of the first other value (NaN included). */

#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef __AVX__
#include <immintrin.h>
#endif

typedef int64_t i64;
typedef int32_t i32;
/* 8 floats, loaded and stored without alignment assumption (GCC/Clang vector extension). */
typedef float v8 __attribute__((vector_size(32), aligned(4)));

#define V8(p) (*(const v8 *)(p))

/* Per-pixel lists of one image's active channels: chan[start[p] .. start[p + 1]) are the
 * channels c (ascending) whose value at pixel p is 1, stored as c * stride (the offset of
 * channel c's rows in wt). Returns -1, or the offset of the
 * first value that is neither 0 nor 1. */
static i64 pixel_lists(const float *x, i64 cin, i64 hw, i64 stride, i32 *start, i32 *cursor, i32 *chan) {
    memset(start, 0, (size_t)(hw + 1) * sizeof(i32));
    i32 *count = start + 1;
    for (i64 c = 0; c < cin; c++) {
        const float *xc = x + c * hw;
        int bad = 0;
        for (i64 p = 0; p < hw; p++) {
            float v = xc[p];
            count[p] += (v != 0.0f);
            bad |= (v != 0.0f) & (v != 1.0f);
        }
        if (bad)
            for (i64 p = 0; p < hw; p++)
                if (xc[p] != 0.0f && xc[p] != 1.0f) return c * hw + p;
    }
    for (i64 p = 0; p < hw; p++) start[p + 1] += start[p];
    memcpy(cursor, start, (size_t)hw * sizeof(i32));
    for (i64 c = 0; c < cin; c++) {
        const float *xc = x + c * hw;
        for (i64 p = 0; p < hw; p++)
            if (xc[p] != 0.0f) chan[cursor[p]++] = (i32)(c * stride);
    }
    return -1;
}

/* Active positions of one input plane, as offsets into a (h+2) x (w+2) padded grid.
 * Returns their number, or -1 - (offset of the first non-binary value). */
static i64 plane_list(const float *xc, i64 h, i64 w, i32 *pos) {
    i64 m = 0;
    for (i64 y = 0; y < h; y++)
        for (i64 x = 0; x < w; x++) {
            float v = xc[y * w + x];
            if (v != 0.0f) {
                if (v != 1.0f) return -1 - (y * w + x);
                pos[m++] = (i32)((y + 1) * (w + 2) + x + 1);
            }
        }
    return m;
}

/* ---------------------------------------------------------------- forward: gather */

/* Transpose of an 8 x 8 block: d[c * ds + r] = s[r * ss + c]. */
static inline void transpose8(const float *s, i64 ss, float *d, i64 ds) {
#ifdef __AVX__
    __m256 r0 = _mm256_loadu_ps(s), r1 = _mm256_loadu_ps(s + ss), r2 = _mm256_loadu_ps(s + 2 * ss),
           r3 = _mm256_loadu_ps(s + 3 * ss), r4 = _mm256_loadu_ps(s + 4 * ss), r5 = _mm256_loadu_ps(s + 5 * ss),
           r6 = _mm256_loadu_ps(s + 6 * ss), r7 = _mm256_loadu_ps(s + 7 * ss);
    __m256 t0 = _mm256_unpacklo_ps(r0, r1), t1 = _mm256_unpackhi_ps(r0, r1), t2 = _mm256_unpacklo_ps(r2, r3),
           t3 = _mm256_unpackhi_ps(r2, r3), t4 = _mm256_unpacklo_ps(r4, r5), t5 = _mm256_unpackhi_ps(r4, r5),
           t6 = _mm256_unpacklo_ps(r6, r7), t7 = _mm256_unpackhi_ps(r6, r7);
    __m256 u0 = _mm256_shuffle_ps(t0, t2, _MM_SHUFFLE(1, 0, 1, 0)), u1 = _mm256_shuffle_ps(t0, t2, _MM_SHUFFLE(3, 2, 3, 2)),
           u2 = _mm256_shuffle_ps(t1, t3, _MM_SHUFFLE(1, 0, 1, 0)), u3 = _mm256_shuffle_ps(t1, t3, _MM_SHUFFLE(3, 2, 3, 2)),
           u4 = _mm256_shuffle_ps(t4, t6, _MM_SHUFFLE(1, 0, 1, 0)), u5 = _mm256_shuffle_ps(t4, t6, _MM_SHUFFLE(3, 2, 3, 2)),
           u6 = _mm256_shuffle_ps(t5, t7, _MM_SHUFFLE(1, 0, 1, 0)), u7 = _mm256_shuffle_ps(t5, t7, _MM_SHUFFLE(3, 2, 3, 2));
    _mm256_storeu_ps(d, _mm256_permute2f128_ps(u0, u4, 0x20));
    _mm256_storeu_ps(d + ds, _mm256_permute2f128_ps(u1, u5, 0x20));
    _mm256_storeu_ps(d + 2 * ds, _mm256_permute2f128_ps(u2, u6, 0x20));
    _mm256_storeu_ps(d + 3 * ds, _mm256_permute2f128_ps(u3, u7, 0x20));
    _mm256_storeu_ps(d + 4 * ds, _mm256_permute2f128_ps(u0, u4, 0x31));
    _mm256_storeu_ps(d + 5 * ds, _mm256_permute2f128_ps(u1, u5, 0x31));
    _mm256_storeu_ps(d + 6 * ds, _mm256_permute2f128_ps(u2, u6, 0x31));
    _mm256_storeu_ps(d + 7 * ds, _mm256_permute2f128_ps(u3, u7, 0x31));
#else
    for (int r = 0; r < 8; r++)
        for (int c = 0; c < 8; c++) d[c * ds + r] = s[r * ss + c];
#endif
}

/* d[c * ds + r] = s[r * ss + c] for r < rows, c < cols, by 8 x 8 blocks where they fit. */
static void transpose(const float *s, i64 ss, float *d, i64 ds, i64 rows, i64 cols) {
    const i64 rows8 = rows - rows % 8, cols8 = cols - cols % 8;
    for (i64 r = 0; r < rows8; r += 8) {
        for (i64 c = 0; c < cols8; c += 8) transpose8(s + r * ss + c, ss, d + c * ds + r, ds);
        for (i64 c = cols8; c < cols; c++)
            for (i64 k = r; k < r + 8; k++) d[c * ds + k] = s[k * ss + c];
    }
    for (i64 r = rows8; r < rows; r++)
        for (i64 c = 0; c < cols; c++) d[c * ds + r] = s[r * ss + c];
}

/* One image, output channels co0 .. co0 + 8 NV - 1, accumulators in NV vector registers;
 * each output row is collected channels-last in tile ([w, 8 NV] floats) and transposed
 * into out by 8 x 8 blocks (writing it element by element, stride h w, was measured
 * slower: 1.2-2.1x at the trained nets' rates). */
#define GATHER(NV)                                                                              \
    static void gather_##NV(const i32 *start, const i32 *chan, const float *wt, const float *bias, \
                            float *out, i64 h, i64 w, i64 cout, i64 co0, float *tile) {         \
        const i64 hw = h * w;                                                                   \
        for (i64 oy = 0; oy < h; oy++) {                                                        \
            for (i64 ox = 0; ox < w; ox++) {                                                    \
                v8 acc[NV];                                                                     \
                _Pragma("GCC unroll 8") for (int j = 0; j < NV; j++) {                          \
                    if (bias)                                                                   \
                        acc[j] = V8(bias + co0 + 8 * j);                                        \
                    else                                                                        \
                        acc[j] = (v8){0, 0, 0, 0, 0, 0, 0, 0};                                  \
                }                                                                               \
                for (int ky = 0; ky < 3; ky++) {                                                \
                    const i64 iy = oy + ky - 1;                                                 \
                    if (iy < 0 || iy >= h) continue;                                            \
                    for (int kx = 0; kx < 3; kx++) {                                            \
                        const i64 ix = ox + kx - 1;                                             \
                        if (ix < 0 || ix >= w) continue;                                        \
                        const i64 p = iy * w + ix;                                              \
                        const float *wk = wt + (ky * 3 + kx) * cout + co0;                      \
                        for (i32 s = start[p]; s < start[p + 1]; s++) {                         \
                            const float *row = wk + chan[s];                                    \
                            _Pragma("GCC unroll 8") for (int j = 0; j < NV; j++) acc[j] +=      \
                                V8(row + 8 * j);                                                \
                        }                                                                       \
                    }                                                                           \
                }                                                                               \
                _Pragma("GCC unroll 8") for (int j = 0; j < NV; j++) *(v8 *)(tile + ox * 8 * NV + 8 * j) = \
                    acc[j];                                                                     \
            }                                                                                   \
            transpose(tile, 8 * NV, out + co0 * hw + oy * w, hw, w, 8 * NV);                     \
        }                                                                                       \
    }
GATHER(8)
GATHER(4)
GATHER(2)
GATHER(1)

/* The last cout % 8 output channels, scalar. */
static void gather_tail(const i32 *start, const i32 *chan, const float *wt, const float *bias, float *out,
                        i64 h, i64 w, i64 cout, i64 co0) {
    const i64 hw = h * w, nc = cout - co0;
    for (i64 oy = 0; oy < h; oy++)
        for (i64 ox = 0; ox < w; ox++) {
            float acc[8];
            for (i64 j = 0; j < nc; j++) acc[j] = bias ? bias[co0 + j] : 0.0f;
            for (int ky = 0; ky < 3; ky++) {
                const i64 iy = oy + ky - 1;
                if (iy < 0 || iy >= h) continue;
                for (int kx = 0; kx < 3; kx++) {
                    const i64 ix = ox + kx - 1;
                    if (ix < 0 || ix >= w) continue;
                    const i64 p = iy * w + ix;
                    const float *wk = wt + (ky * 3 + kx) * cout + co0;
                    for (i32 s = start[p]; s < start[p + 1]; s++) {
                        const float *row = wk + chan[s];
                        for (i64 j = 0; j < nc; j++) acc[j] += row[j];
                    }
                }
            }
            for (i64 j = 0; j < nc; j++) out[(co0 + j) * hw + oy * w + ox] = acc[j];
        }
}

static i64 forward_gather(const float *x, const float *wt, const float *bias, float *out, i64 n, i64 cin,
                          i64 h, i64 w, i64 cout) {
    const i64 hw = h * w;
    i32 *start = malloc((size_t)(hw + 1) * sizeof(i32));
    i32 *cursor = malloc((size_t)hw * sizeof(i32));
    i32 *chan = malloc((size_t)(cin * hw + 1) * sizeof(i32));
    float *tile = malloc((size_t)(w * 64) * sizeof(float));
    i64 status = -1;
    if (!start || !cursor || !chan || !tile) {
        status = -2;
        goto done;
    }
    for (i64 b = 0; b < n; b++) {
        const i64 bad = pixel_lists(x + b * cin * hw, cin, hw, 9 * cout, start, cursor, chan);
        if (bad >= 0) {
            status = b * cin * hw + bad;
            goto done;
        }
        float *ob = out + b * cout * hw;
        i64 co = 0;
        for (; co + 64 <= cout; co += 64) gather_8(start, chan, wt, bias, ob, h, w, cout, co, tile);
        if (co + 32 <= cout) {
            gather_4(start, chan, wt, bias, ob, h, w, cout, co, tile);
            co += 32;
        }
        if (co + 16 <= cout) {
            gather_2(start, chan, wt, bias, ob, h, w, cout, co, tile);
            co += 16;
        }
        if (co + 8 <= cout) {
            gather_1(start, chan, wt, bias, ob, h, w, cout, co, tile);
            co += 8;
        }
        if (co < cout) gather_tail(start, chan, wt, bias, ob, h, w, cout, co);
    }
done:
    free(start);
    free(cursor);
    free(chan);
    free(tile);
    return status;
}

/* --------------------------------------------------------------- forward: scatter */

static i64 forward_scatter(const float *x, const float *wt, const float *bias, float *out, i64 n, i64 cin,
                           i64 h, i64 w, i64 cout) {
    const i64 hw = h * w, pw = w + 2, cells = (h + 2) * pw;
    float *buf = malloc((size_t)(cells * cout) * sizeof(float));
    i32 *pos = malloc((size_t)(hw + 1) * sizeof(i32));
    i64 status = -1;
    if (!buf || !pos) {
        status = -2;
        goto done;
    }
    /* offset (in cells) from an active input's cell to the output cell that its kernel
     * tap (ky, kx) feeds: oy = iy - ky + 1, ox = ix - kx + 1 */
    i64 off[9];
    for (int k = 0; k < 9; k++) off[k] = -((k / 3) - 1) * pw - ((k % 3) - 1);
    const i64 vec = cout - cout % 8;
    for (i64 b = 0; b < n; b++) {
        for (i64 c = 0; c < cells; c++)
            for (i64 j = 0; j < cout; j++) buf[c * cout + j] = bias ? bias[j] : 0.0f;
        const float *xb = x + b * cin * hw;
        for (i64 ci = 0; ci < cin; ci++) {
            const i64 m = plane_list(xb + ci * hw, h, w, pos);
            if (m < 0) {
                status = b * cin * hw + ci * hw + (-1 - m);
                goto done;
            }
            const float *wc = wt + ci * 9 * cout;
            for (i64 s = 0; s < m; s++) {
                float *cell = buf + pos[s] * cout;
                for (int k = 0; k < 9; k++) {
                    float *o = cell + off[k] * cout;
                    const float *row = wc + k * cout;
                    i64 j = 0;
                    for (; j < vec; j += 8) {
                        *(v8 *)(o + j) = V8(o + j) + V8(row + j);
                    }
                    for (; j < cout; j++) o[j] += row[j];
                }
            }
        }
        float *ob = out + b * cout * hw;
        for (i64 y = 0; y < h; y++) transpose(buf + ((y + 1) * pw + 1) * cout, cout, ob + y * w, hw, w, cout);
    }
done:
    free(buf);
    free(pos);
    return status;
}

i64 spike_conv_forward(const float *x, const float *wt, const float *bias, float *out, i64 n, i64 cin, i64 h,
                       i64 w, i64 cout, int method) {
    if (method == 1) return forward_scatter(x, wt, bias, out, n, cin, h, w, cout);
    return forward_gather(x, wt, bias, out, n, cin, h, w, cout);
}

/* ------------------------------------------------------------------ weight gradient */

/* gw[k][co0 .. co0 + 8 NV) += sum over the m active cells pos[] of g[pos + off[k]][...] */
#define WGRAD(NV)                                                                                \
    static void wgrad_##NV(const i32 *pos, i64 m, const float *g, const i64 *off, float *gw, i64 cout, \
                           i64 co0) {                                                            \
        for (int k = 0; k < 9; k++) {                                                            \
            v8 acc[NV];                                                                          \
            _Pragma("GCC unroll 8") for (int j = 0; j < NV; j++) acc[j] = (v8){0, 0, 0, 0, 0, 0, 0, 0}; \
            const float *gk = g + co0 + off[k] * cout;                                           \
            for (i64 s = 0; s < m; s++) {                                                        \
                const float *row = gk + (i64)pos[s] * cout;                                      \
                _Pragma("GCC unroll 8") for (int j = 0; j < NV; j++) acc[j] += V8(row + 8 * j);  \
            }                                                                                    \
            float *dst = gw + k * cout + co0;                                                    \
            _Pragma("GCC unroll 8") for (int j = 0; j < NV; j++) {                               \
                *(v8 *)(dst + 8 * j) = V8(dst + 8 * j) + acc[j];                                 \
            }                                                                                    \
        }                                                                                        \
    }
WGRAD(8)
WGRAD(4)
WGRAD(2)
WGRAD(1)

static void wgrad_tail(const i32 *pos, i64 m, const float *g, const i64 *off, float *gw, i64 cout, i64 co0) {
    const i64 nc = cout - co0;
    for (int k = 0; k < 9; k++) {
        float acc[8] = {0};
        const float *gk = g + co0 + off[k] * cout;
        for (i64 s = 0; s < m; s++) {
            const float *row = gk + (i64)pos[s] * cout;
            for (i64 j = 0; j < nc; j++) acc[j] += row[j];
        }
        for (i64 j = 0; j < nc; j++) gw[k * cout + co0 + j] += acc[j];
    }
}

/* x [n, cin, h, w], g [n, cout, h, w] (grad_out); gw_blocks [ceil(n / block), cin, 9, cout]
 * is overwritten with the per-block partial sums. */
i64 spike_conv_weight_grad(const float *x, const float *g, float *gw_blocks, i64 n, i64 cin, i64 h, i64 w,
                           i64 cout, i64 block) {
    const i64 hw = h * w, pw = w + 2, cells = (h + 2) * pw, wsize = cin * 9 * cout;
    const i64 blocks = (n + block - 1) / block, cvec = cout - cout % 8;
    float *buf = calloc((size_t)(cells * cout), sizeof(float));
    i32 *pos = malloc((size_t)(hw + 1) * sizeof(i32));
    i64 status = -1;
    if (!buf || !pos) {
        status = -2;
        goto done;
    }
    memset(gw_blocks, 0, (size_t)(blocks * wsize) * sizeof(float));
    i64 off[9];
    for (int k = 0; k < 9; k++) off[k] = -((k / 3) - 1) * pw - ((k % 3) - 1);
    for (i64 b = 0; b < n; b++) {
        /* grad_out of image b, channels last, inside a zero border */
        const float *gb = g + b * cout * hw;
        for (i64 y = 0; y < h; y++) {
            float *cells = buf + ((y + 1) * pw + 1) * cout;
            transpose(gb + y * w, hw, cells, cout, cvec, w);
            for (i64 x2 = 0; x2 < w; x2++)
                for (i64 j = cvec; j < cout; j++) cells[x2 * cout + j] = gb[j * hw + y * w + x2];
        }
        float *gw = gw_blocks + (b / block) * wsize;
        const float *xb = x + b * cin * hw;
        for (i64 ci = 0; ci < cin; ci++) {
            const i64 m = plane_list(xb + ci * hw, h, w, pos);
            if (m < 0) {
                status = b * cin * hw + ci * hw + (-1 - m);
                goto done;
            }
            if (m == 0) continue;
            float *gc = gw + ci * 9 * cout;
            i64 co = 0;
            for (; co + 64 <= cout; co += 64) wgrad_8(pos, m, buf, off, gc, cout, co);
            if (co + 32 <= cout) {
                wgrad_4(pos, m, buf, off, gc, cout, co);
                co += 32;
            }
            if (co + 16 <= cout) {
                wgrad_2(pos, m, buf, off, gc, cout, co);
                co += 16;
            }
            if (co + 8 <= cout) {
                wgrad_1(pos, m, buf, off, gc, cout, co);
                co += 8;
            }
            if (co < cout) wgrad_tail(pos, m, buf, off, gc, cout, co);
        }
    }
done:
    free(buf);
    free(pos);
    return status;
}
