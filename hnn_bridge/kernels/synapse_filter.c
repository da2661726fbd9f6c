/* The synapse filter of eq. 1d alone on the CPU in float32 (hnn_bridge/kernels/synapse_filter.py
 * loads it): p[t] = a1*p[t-1] + a2*p[t-2] + b*x[t] from zero state, and its transpose for the
 * backward. The products and sums of hnn_bridge.functional.synapse_filter (`_scaled`, `_sum`)
 * in the same order, and of the gradient autograd computes through that loop; built with
 * -ffp-contract=off and no fast math, so every result equals the ATen path bit for bit.
 *
 * Layout: a [T, stride] sequence; a call runs `count` neurons (columns) from the pointers
 * given, in blocks of BLK columns kept in cache over all T steps. */
#include <stddef.h>
#include <string.h>
#define BLK 256
/* Term kinds, 2 bits per coefficient (slots a1, a2, b): 0 absent, 1 unscaled, 2 c * value. */
#define KIND(slot) ((kinds >> (2 * (slot))) & 3)

/* dst = term (first) or dst = dst + term; term = src (kind 1) or c * src (kind 2). The branches
 * are outside the loops, so that each loop is straight-line code the compiler vectorises. */
static inline void term(float* restrict dst, const float* restrict src, int kind, float c, int first, int m)
{
    if (first) {
        if (kind == 1) for (int j = 0; j < m; ++j) dst[j] = src[j];
        else for (int j = 0; j < m; ++j) dst[j] = c * src[j];
    } else {
        if (kind == 1) for (int j = 0; j < m; ++j) dst[j] = dst[j] + src[j];
        else for (int j = 0; j < m; ++j) dst[j] = dst[j] + c * src[j];
    }
}

/* p[t] = ((a1*p[t-1] + a2*p[t-2]) + b*x[t]), the terms of a zero initial state (t < 1, t < 2)
 * and of a zero coefficient left out, a coefficient 1 not multiplied (as `_scaled`, `_sum`).
 * x: row t at x + t * x_step (x_step 0: one row for every t); p: row t at p + t * stride.
 * The kind of b must not be 0. */
void iir_synapse_forward(
    const float* x, long long x_step, float* p, long long stride, long long count, int steps, int kinds,
    float a1, float a2, float b)
{
    const int k1 = KIND(0), k2 = KIND(1), kb = KIND(2);
    for (long long i0 = 0; i0 < count; i0 += BLK) {
        const int m = (int)(count - i0 < BLK ? count - i0 : BLK);
        for (int t = 0; t < steps; ++t) {
            float* dst = p + (long long)t * stride + i0;
            int first = 1;
            if (t >= 1 && k1) {
                term(dst, p + (long long)(t - 1) * stride + i0, k1, a1, first, m);
                first = 0;
            }
            if (t >= 2 && k2) {
                term(dst, p + (long long)(t - 2) * stride + i0, k2, a2, first, m);
                first = 0;
            }
            term(dst, x + (long long)t * x_step + i0, kb, b, first, m);
        }
    }
}

/* The gradient of iir_synapse_forward for the output gradient g [T, stride] (row stride
 * `stride`, as gx): c[t] = (g[t] + a2*c[t+2]) + a1*c[t+1] (terms past T or of a zero
 * coefficient left out, a coefficient 1 not multiplied), gx[t] = b*c[t]. This is the order in
 * which autograd's engine accumulates the gradient of p[t] through the ATen loop: first the
 * slice of torch.stack's gradient, then the product from p[t+2] (its a2 multiply runs before
 * its a1 multiply: created later, it has the higher sequence number), then from p[t+1]. */
void iir_synapse_backward(
    const float* g, float* gx, long long stride, long long count, int steps, int kinds,
    float a1, float a2, float b)
{
    const int k1 = KIND(0), k2 = KIND(1), kb = KIND(2);
    float bufs[3][BLK];
    for (long long i0 = 0; i0 < count; i0 += BLK) {
        const int m = (int)(count - i0 < BLK ? count - i0 : BLK);
        for (int t = steps - 1; t >= 0; --t) {
            float* c = bufs[t % 3];
            const float* c1 = bufs[(t + 1) % 3];
            const float* c2 = bufs[(t + 2) % 3];
            term(c, g + (long long)t * stride + i0, 1, 1.0f, 1, m);
            if (t + 2 < steps && k2) term(c, c2, k2, a2, 0, m);
            if (t + 1 < steps && k1) term(c, c1, k1, a1, 0, m);
            term(gx + (long long)t * stride + i0, c, kb, b, 1, m);
        }
    }
}
