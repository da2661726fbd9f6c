/* The fused IIR LIF neuron on the CPU in float32 (hnn_bridge/kernels/native.py loads it).
 * The recurrences of fused.py (eq. 1a-1f forward, BPTT backward), operation by operation
 * in the same order; built by build.py with -ffp-contract=off and no fast math, so that
 * every result equals the ATen path bit for bit. */
#include <math.h>
#include <stddef.h>
#include <string.h>
#define BLK 256
/* Term kinds, 2 bits per coefficient (as term_kinds() in native.py): 0 absent,
 * 1 unscaled, 2 coefficient * value; slots a1, a2, b, theta, lam, -V_th. */
#define KIND(slot) ((kinds >> (2 * (slot))) & 3)
/* Every branch is on a kind or a null pointer, outside the loops over a block of
 * neurons, so that each `for j` loop is straight-line code the compiler vectorises. */
#define EACH for (int j = 0; j < m; ++j)
/* dst = term (first term) or dst = dst + term, term = value or c * value by kind */
#define PUT(dst, kind, c, value, first) do { \
    if (first) { if ((kind) == 1) EACH (dst)[j] = (value)[j]; else EACH (dst)[j] = (c) * (value)[j]; } \
    else { if ((kind) == 1) EACH (dst)[j] = (dst)[j] + (value)[j]; else EACH (dst)[j] = (dst)[j] + (c) * (value)[j]; } \
} while (0)

static void load(float* dst, const float* src, long long i0, int m)
{
    if (src) memcpy(dst, src + i0, sizeof(float) * (size_t)m);
    else memset(dst, 0, sizeof(float) * (size_t)m);
}

static void store(float* dst, const float* src, long long i0, int m)
{
    if (dst) memcpy(dst + i0, src, sizeof(float) * (size_t)m);
}

/* The per-channel affine map of a batch norm folded into the neuron's input (see
 * iir_native_bn_forward): x = y * alpha[c] + beta[c] for the channel c = ((first + i) / plane)
 * % channels of neuron i; `fma`: one rounding (fmaf), as ATen's transform computes it where
 * it is built with FMA contraction, else a multiply and an add. */
struct affine {
    const float* alpha;
    const float* beta;
    long long first, plane, channels;
    int fma;
};

/* fmaf where the target has it (one instruction); else the exact product of two floats in
 * double plus the addend, rounded to float (a rare double rounding: iir_native_bn_fma_exact
 * tells the caller, which then does not use it) */
static float fma1(float a, float b, float c)
{
#if defined(__FMA__) || defined(__aarch64__)
    return fmaf(a, b, c);
#else
    return (float)((double)a * (double)b + (double)c);
#endif
}

int iir_native_bn_fma_exact(void)
{
#if defined(__FMA__) || defined(__aarch64__)
    return 1;
#else
    return 0;
#endif
}

static void forward_impl(
    const float* x, long long x_step, const struct affine* aff,
    const float* p1_in, const float* p2_in, const float* r_in, const float* v_in, const float* o_in,
    float* spikes, float* volts,
    float* p1_out, float* p2_out, float* r_out, float* v_out, float* o_out,
    long long stride, long long count, int steps, int kinds,
    float a1, float a2, float b, float theta, float lam, float neg_vth, float vth)
{
    const int k_a1 = KIND(0), k_a2 = KIND(1), k_b = KIND(2), k_th = KIND(3), k_lam = KIND(4), k_nv = KIND(5);
    float bufs[3][BLK], R[BLK], V[BLK], O[BLK], XA[BLK], XB[BLK], X[BLK];
    for (long long i0 = 0; i0 < count; i0 += BLK) {
        const int m = (int)(count - i0 < BLK ? count - i0 : BLK);
        float *P = bufs[0], *P1 = bufs[1], *P2 = bufs[2];
        if (aff) {
            for (int j = 0; j < m; ++j) {
                const long long c = ((aff->first + i0 + j) / aff->plane) % aff->channels;
                XA[j] = aff->alpha[c];
                XB[j] = aff->beta[c];
            }
        }
        load(P1, p1_in, i0, m);
        load(P2, p2_in, i0, m);
        load(R, r_in, i0, m);
        load(V, v_in, i0, m);
        load(O, o_in, i0, m);
        for (int t = 0; t < steps; ++t) {
            const float* xt = x + (long long)t * x_step + i0;
            if (aff) {
                if (aff->fma) EACH X[j] = fma1(xt[j], XA[j], XB[j]);
                else EACH X[j] = xt[j] * XA[j] + XB[j];
                xt = X;
            }
            /* p[t] = a1*p[t-1] + a2*p[t-2] + b*x[t], left to right, absent terms skipped */
            int has = 0;
            if (k_a1) { PUT(P, k_a1, a1, P1, 1); has = 1; }
            if (k_a2) { PUT(P, k_a2, a2, P2, !has); has = 1; }
            if (k_b) { PUT(P, k_b, b, xt, !has); has = 1; }
            if (!has) EACH P[j] = 0.0f;
            /* R[t] = theta*R[t-1] + O[t-1] */
            if (k_th == 1) EACH R[j] = R[j] + O[j];
            else if (k_th) EACH R[j] = theta * R[j] + O[j];
            else EACH R[j] = O[j];
            /* V[t] = lam*V[t-1] + p[t] - V_th*R[t] */
            if (k_lam == 1) EACH V[j] = V[j] + P[j];
            else if (k_lam) EACH V[j] = lam * V[j] + P[j];
            else EACH V[j] = P[j];
            if (k_nv == 1) EACH V[j] = V[j] + R[j];
            else if (k_nv) EACH V[j] = V[j] + neg_vth * R[j];
            /* O[t] = U(V[t] - V_th), eq. 1f with U(0) = 1 */
            EACH O[j] = V[j] >= vth ? 1.0f : 0.0f;
            if (spikes) memcpy(spikes + (long long)t * stride + i0, O, sizeof(float) * (size_t)m);
            if (volts) memcpy(volts + (long long)t * stride + i0, V, sizeof(float) * (size_t)m);
            float* oldest = P2; /* p[t-2] is read no more: it becomes the next p */
            P2 = P1;
            P1 = P;
            P = oldest;
        }
        store(p1_out, P1, i0, m);
        store(p2_out, P2, i0, m);
        store(r_out, R, i0, m);
        store(v_out, V, i0, m);
        store(o_out, O, i0, m);
    }
}

/* Forward over T steps for `count` neurons of [T, stride] sequences (x_step: stride, or
 * 0 for an input constant over time). Null inputs are zeros; null outputs are skipped. */
void iir_native_forward(
    const float* x, long long x_step,
    const float* p1_in, const float* p2_in, const float* r_in, const float* v_in, const float* o_in,
    float* spikes, float* volts,
    float* p1_out, float* p2_out, float* r_out, float* v_out, float* o_out,
    long long stride, long long count, int steps, int kinds,
    float a1, float a2, float b, float theta, float lam, float neg_vth, float vth)
{
    forward_impl(x, x_step, NULL, p1_in, p2_in, r_in, v_in, o_in, spikes, volts, p1_out, p2_out, r_out,
                 v_out, o_out, stride, count, steps, kinds, a1, a2, b, theta, lam, neg_vth, vth);
}

/* iir_native_forward from zero state on the batch norm's output computed on the fly: neuron i
 * of step t reads y[t, i] * alpha[c] + beta[c] (struct affine) instead of a normalised
 * tensor; `first` is the index of this chunk's first neuron within a step. */
void iir_native_bn_forward(
    const float* y, const float* alpha, const float* beta, long long first, long long plane,
    long long channels, int fma,
    float* spikes, float* volts, long long stride, long long count, int steps, int kinds,
    float a1, float a2, float b, float theta, float lam, float neg_vth, float vth)
{
    const struct affine aff = {alpha, beta, first, plane, channels, fma};
    forward_impl(y, stride, &aff, NULL, NULL, NULL, NULL, NULL, spikes, volts, NULL, NULL, NULL, NULL, NULL,
                 stride, count, steps, kinds, a1, a2, b, theta, lam, neg_vth, vth);
}

/* x = y * alpha[c] + beta[c] over `rows` rows of [rows, channels, plane] (the transform
 * alone, to check it against ATen's at first use and in tests). */
void iir_native_bn_apply(const float* y, const float* alpha, const float* beta, float* x,
                         long long rows, long long channels, long long plane, int fma)
{
    for (long long r = 0; r < rows; ++r)
        for (long long c = 0; c < channels; ++c) {
            const float a = alpha[c], s = beta[c];
            const float* yp = y + (r * channels + c) * plane;
            float* xp = x + (r * channels + c) * plane;
            if (fma) for (long long j = 0; j < plane; ++j) xp[j] = fma1(yp[j], a, s);
            else for (long long j = 0; j < plane; ++j) xp[j] = yp[j] * a + s;
        }
}

/* The per-channel terms of the transform, as ATen's batch norm collects them: alpha =
 * invstd * weight, beta = bias - mean * alpha (one rounding when `fma`). invstd is given
 * (training: the batch's), or, with `from_var`, 1 / sqrt(var + eps) in float (evaluation:
 * the running variance). Null weight / bias: 1 / 0. */
void iir_native_bn_terms(const float* mean, const float* invstd_or_var, const float* weight,
                         const float* bias, long long channels, float eps, int from_var, int fma,
                         float* alpha, float* beta)
{
    for (long long c = 0; c < channels; ++c) {
        const float invstd = from_var ? 1.0f / sqrtf(invstd_or_var[c] + eps) : invstd_or_var[c];
        const float w = weight ? weight[c] : 1.0f, s = bias ? bias[c] : 0.0f;
        alpha[c] = invstd * w;
        beta[c] = fma ? fma1(-mean[c], alpha[c], s) : s - mean[c] * alpha[c];
    }
}

/* Batch statistics of `count` channels from `c0` of y [rows, channels, plane] as ATen's CPU
 * batch norm computes them for a contiguous input (batch_norm_cpu_collect_stats_contiguous_impl
 * and batch_norm_cpu_update_stats_template): per channel, the sum over rows then positions in
 * double, one addition after the other, mean = (float)(sum / n); then the sum of the float
 * squares (y - mean)^2 in double in the same order, var_sum = (float)that; invstd = 1 / sqrt(
 * var_sum / n + eps) with var_sum / n in float and the rest in double (0 where var and eps
 * are 0). The same additions in the same order, so the same bits; to hide the latency of the
 * sequential sums, 8 channels' sums run side by side (independent chains). */
#define GROUP 8
void iir_native_bn_stats(const float* y, long long rows, long long channels, long long plane,
                         long long c0, long long count, double eps, float* mean, float* var_sum,
                         float* invstd)
{
    const long long n = rows * plane;
    for (long long g0 = c0; g0 < c0 + count; g0 += GROUP) {
        const int w = (int)(c0 + count - g0 < GROUP ? c0 + count - g0 : GROUP);
        double s[GROUP] = {0};
        float mu[GROUP];
        for (long long r = 0; r < rows; ++r) {
            const float* base = y + (r * channels + g0) * plane;
            for (long long i = 0; i < plane; ++i)
                for (int q = 0; q < w; ++q) s[q] += base[q * plane + i];
        }
        for (int q = 0; q < w; ++q) {
            mu[q] = (float)(s[q] / (double)n);
            s[q] = 0.0;
        }
        for (long long r = 0; r < rows; ++r) {
            const float* base = y + (r * channels + g0) * plane;
            for (long long i = 0; i < plane; ++i)
                for (int q = 0; q < w; ++q) {
                    const float d = base[q * plane + i] - mu[q];
                    s[q] += d * d;
                }
        }
        for (int q = 0; q < w; ++q) {
            const float vs = (float)s[q];
            const double var = (double)(vs / (float)n);
            mean[g0 + q] = mu[q];
            var_sum[g0 + q] = vs;
            invstd[g0 + q] = (var != 0.0 || eps != 0.0) ? (float)(1.0 / sqrt(var + eps)) : 0.0f;
        }
    }
}

/* The steps of fused.surrogate_into before exp (sub, square, scale, clamp to `below`),
 * one pass: out = max((v - vth)^2 * scale, below), NaN kept as clamp_ keeps it. */
void iir_native_surrogate_arg(const float* v, float* out, long long n, float vth, float scale, float below)
{
    for (long long j = 0; j < n; ++j) {
        const float d = v[j] - vth;
        const float a = d * d * scale;
        out[j] = a < below ? below : a;
    }
}

/* BPTT of fused.bptt: `g` holds exp of the surrogate's argument (eq. 6, see
 * iir_native_surrogate_arg) on entry and b * g_p[t] (the input gradient) on exit; dO/dV
 * is (e <= exp_below ? 0 : e) * gain, the threshold_ and mul_ of fused.surrogate_into.
 * Null incoming gradients are zeros. Writes the adjoints of the initial state
 * p[-1], p[-2], R[-1], V[-1], O[-1]. */
void iir_native_backward(
    float* g, const float* g_spikes, const float* g_volts,
    const float* g_p1, const float* g_p2, const float* g_r,
    float* cp0_out, float* cp1_out, float* cr_out, float* cv_out, float* co_out,
    long long stride, long long count, int steps, int kinds, int detach_reset,
    float a1, float a2, float b, float theta, float lam, float vth, float exp_below, float gain)
{
    const int k_a1 = KIND(0), k_a2 = KIND(1), k_b = KIND(2);
    const int unit_vth = vth == 1.0f;
    float SG[BLK], GV[BLK], GR[BLK], GP[BLK], CV[BLK], CR[BLK], CO[BLK], CP0[BLK], CP1[BLK];
    for (long long i0 = 0; i0 < count; i0 += BLK) {
        const int m = (int)(count - i0 < BLK ? count - i0 : BLK);
        memset(CV, 0, sizeof(float) * (size_t)m);
        memset(CO, 0, sizeof(float) * (size_t)m);
        load(CR, g_r, i0, m);
        load(CP0, g_p1, i0, m);
        load(CP1, g_p2, i0, m);
        for (int t = steps - 1; t >= 0; --t) {
            float* gt = g + (long long)t * stride + i0;
            const float* gst = g_spikes ? g_spikes + (long long)t * stride + i0 : NULL;
            const float* gvt = g_volts ? g_volts + (long long)t * stride + i0 : NULL;
            EACH SG[j] = (gt[j] <= exp_below ? 0.0f : gt[j]) * gain;
            /* g_v = dO/dV * (g_spikes[t] + c_o) + c_v (+ g_volts[t]) */
            if (gst) EACH GV[j] = SG[j] * (gst[j] + CO[j]);
            else EACH GV[j] = SG[j] * CO[j];
            EACH GV[j] = GV[j] + CV[j];
            if (gvt) EACH GV[j] = GV[j] + gvt[j];
            /* g_R[t] = c_r - V_th*g_v;  c_v = lam*g_v;  g_p = c_p0 + g_v */
            if (unit_vth) EACH GR[j] = CR[j] - GV[j];
            else EACH GR[j] = CR[j] - GV[j] * vth;
            EACH CV[j] = GV[j] * lam;
            EACH GP[j] = GV[j] + CP0[j];
            EACH CR[j] = GR[j] * theta;
            if (detach_reset) EACH CO[j] = 0.0f;
            else EACH CO[j] = GR[j];
            /* the adjoints of p[t-1] and p[t-2] for the next (earlier) step */
            if (k_a1 == 1) EACH CP0[j] = CP1[j] + GP[j];
            else if (k_a1) EACH CP0[j] = CP1[j] + GP[j] * a1;
            else EACH CP0[j] = CP1[j];
            if (k_a2) EACH CP1[j] = GP[j] * a2;
            else EACH CP1[j] = 0.0f;
            if (k_b == 1) EACH gt[j] = GP[j];
            else EACH gt[j] = GP[j] * b;
        }
        store(cp0_out, CP0, i0, m);
        store(cp1_out, CP1, i0, m);
        store(cr_out, CR, i0, m);
        store(cv_out, CV, i0, m);
        store(co_out, CO, i0, m);
    }
}

/* 2x2 max pooling, stride 2, of `planes` contiguous H x W planes (torch's max_pool2d: the
 * first maximum in row-major order wins, NaN propagates); idx keeps the winner 0..3. */
void iir_native_maxpool2_forward(const float* restrict x, float* restrict out, unsigned char* restrict idx,
                                 long long planes, long long h, long long w)
{
    const long long ho = h / 2, wo = w / 2;
    for (long long p = 0; p < planes; ++p) {
        for (long long i = 0; i < ho; ++i) {
            const float* r0 = x + p * h * w + 2 * i * w;
            const float* r1 = r0 + w;
            float* o = out + (p * ho + i) * wo;
            unsigned char* k = idx + (p * ho + i) * wo;
            for (long long j = 0; j < wo; ++j) {
                const float c[4] = {r0[2 * j], r0[2 * j + 1], r1[2 * j], r1[2 * j + 1]};
                float m = c[0];
                unsigned char best = 0;
                for (unsigned char q = 1; q < 4; ++q)
                    if (c[q] > m || c[q] != c[q]) { m = c[q]; best = q; }
                o[j] = m;
                k[j] = best;
            }
        }
    }
}

/* Its backward: the gradient goes to the winner (as 0 + g, like torch's accumulation into
 * zeros), the other three get 0; rows and columns beyond 2*ho, 2*wo get 0. */
void iir_native_maxpool2_backward(const float* restrict g, const unsigned char* restrict idx, float* restrict gx,
                                  long long planes, long long h, long long w)
{
    const long long ho = h / 2, wo = w / 2;
    for (long long p = 0; p < planes; ++p) {
        float* plane = gx + p * h * w;
        for (long long e = 0; e < h * w; ++e) plane[e] = 0.0f;
        for (long long i = 0; i < ho; ++i) {
            float* r0 = plane + 2 * i * w;
            float* r1 = r0 + w;
            const float* gi = g + (p * ho + i) * wo;
            const unsigned char* k = idx + (p * ho + i) * wo;
            for (long long j = 0; j < wo; ++j) {
                float* dst = k[j] < 2 ? r0 + 2 * j + k[j] : r1 + 2 * j + (k[j] - 2);
                *dst = 0.0f + gi[j];
            }
        }
    }
}
