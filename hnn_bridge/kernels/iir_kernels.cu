/* IIR LIF neuron (Fang et al. 2020): multistep forward and BPTT backward, the kernels of
 * the CuPy backend (hnn_bridge/adapters/cupy_kernels.py), which also compile as plain C.
 * One neuron per CUDA thread (or per iteration of the C loop), looping over T.
 * Layout: element (t, i) of a [T, n] sequence is at t * n + i.
 * Term kinds (2 bits per coefficient, see term_kinds() in native.py):
 *   0 = the term is absent (coefficient 0), 1 = the term is used unscaled
 *   (coefficient 1), 2 = coefficient * value. This mirrors _scaled()/_sum() of the
 *   torch core so that every path rounds identically. */
#if defined(__CUDACC_RTC__) || defined(__CUDACC__)
#define IIR_DEVICE __device__ __forceinline__
#define IIR_ENTRY extern "C" __global__ void
#define IIR_FOR_EACH_NEURON(i, n) \
    const long long i = (long long)blockIdx.x * (long long)blockDim.x + (long long)threadIdx.x; \
    if (i < (n))
#define IIR_MUL(a, b) __fmul_rn((a), (b))
#define IIR_ADD(a, b) __fadd_rn((a), (b))
#define IIR_SUB(a, b) __fsub_rn((a), (b))
#define IIR_EXP(a) expf(a)
#else
#include <math.h>
#define IIR_DEVICE static inline
#define IIR_ENTRY void
#define IIR_FOR_EACH_NEURON(i, n) for (long long i = 0; i < (n); ++i)
#define IIR_MUL(a, b) ((float)((float)(a) * (float)(b)))
#define IIR_ADD(a, b) ((float)((float)(a) + (float)(b)))
#define IIR_SUB(a, b) ((float)((float)(a) - (float)(b)))
#define IIR_EXP(a) expf(a)
#endif

#define IIR_KIND(kinds, slot) (((kinds) >> (2 * (slot))) & 3)
#define IIR_SLOT_A1 0
#define IIR_SLOT_A2 1
#define IIR_SLOT_B 2
#define IIR_SLOT_THETA 3
#define IIR_SLOT_LAM 4
#define IIR_SLOT_NEG_VTH 5

IIR_DEVICE float iir_term(int kind, float c, float value)
{
    return kind == 1 ? value : IIR_MUL(c, value);
}

/* Forward over T steps from the initial state (null pointer = zeros).
 * Writes spikes[T, n], volts[T, n] and the final p[T-1], p[T-2], R[T-1]. */
IIR_ENTRY iir_forward_f32(
    const float* x, const float* p1_in, const float* p2_in, const float* r_in,
    const float* v_in, const float* o_in,
    float* spikes, float* volts, float* p1_out, float* p2_out, float* r_out,
    long long n, int steps, int kinds,
    float a1, float a2, float b, float theta, float lam, float neg_vth, float vth)
{
    IIR_FOR_EACH_NEURON(i, n) {
        const int k_a1 = IIR_KIND(kinds, IIR_SLOT_A1);
        const int k_a2 = IIR_KIND(kinds, IIR_SLOT_A2);
        const int k_b = IIR_KIND(kinds, IIR_SLOT_B);
        const int k_theta = IIR_KIND(kinds, IIR_SLOT_THETA);
        const int k_lam = IIR_KIND(kinds, IIR_SLOT_LAM);
        const int k_nvth = IIR_KIND(kinds, IIR_SLOT_NEG_VTH);
        float p1 = p1_in ? p1_in[i] : 0.0f;
        float p2 = p2_in ? p2_in[i] : 0.0f;
        float r = r_in ? r_in[i] : 0.0f;
        float v = v_in ? v_in[i] : 0.0f;
        float o = o_in ? o_in[i] : 0.0f;
        long long idx = i;
        for (int t = 0; t < steps; ++t, idx += n) {
            /* p[t] = a1*p[t-1] + a2*p[t-2] + b*x[t]  (left to right, absent terms skipped) */
            float p = 0.0f;
            int has = 0;
            if (k_a1) { p = iir_term(k_a1, a1, p1); has = 1; }
            if (k_a2) { const float q = iir_term(k_a2, a2, p2); p = has ? IIR_ADD(p, q) : q; has = 1; }
            if (k_b) { const float q = iir_term(k_b, b, x[idx]); p = has ? IIR_ADD(p, q) : q; }
            /* R[t] = theta*R[t-1] + O[t-1] */
            const float r_new = k_theta ? IIR_ADD(iir_term(k_theta, theta, r), o) : o;
            /* V[t] = lam*V[t-1] + p[t] - V_th*R[t] */
            float v_new = k_lam ? IIR_ADD(iir_term(k_lam, lam, v), p) : p;
            if (k_nvth) v_new = IIR_ADD(v_new, iir_term(k_nvth, neg_vth, r_new));
            p2 = p1;
            p1 = p;
            r = r_new;
            v = v_new;
            o = (v_new >= vth) ? 1.0f : 0.0f; /* eq. 1f: U(0) = 1 */
            spikes[idx] = o;
            volts[idx] = v_new;
        }
        if (p1_out) p1_out[i] = p1;
        if (p2_out) p2_out[i] = p2;
        if (r_out) r_out[i] = r;
    }
}

/* BPTT from the saved V[T, n]. Incoming gradients may be null (= zeros). Writes the
 * input gradient grad_x[T, n] and, where the pointer is not null, the gradients of the
 * initial state p[-1], p[-2], R[-1], V[-1], O[-1]. */
IIR_ENTRY iir_backward_f32(
    const float* volts, const float* g_spikes, const float* g_volts,
    const float* g_p1, const float* g_p2, const float* g_r,
    float* grad_x, float* gp1_out, float* gp2_out, float* gr_out, float* gv_out, float* go_out,
    long long n, int steps, int kinds, int detach_reset,
    float a1, float a2, float b, float theta, float lam, float vth,
    float sg_scale, float sg_gain, float exp_floor)
{
    IIR_FOR_EACH_NEURON(i, n) {
        const int k_a1 = IIR_KIND(kinds, IIR_SLOT_A1);
        const int k_a2 = IIR_KIND(kinds, IIR_SLOT_A2);
        const int k_b = IIR_KIND(kinds, IIR_SLOT_B);
        float c_v = 0.0f;
        float c_o = 0.0f;
        float c_r = g_r ? g_r[i] : 0.0f;
        float cp0 = g_p1 ? g_p1[i] : 0.0f; /* adjoint of p[t] */
        float cp1 = g_p2 ? g_p2[i] : 0.0f; /* adjoint of p[t-1] */
        for (int t = steps - 1; t >= 0; --t) {
            const long long idx = (long long)t * n + i;
            const float g_o = g_spikes ? IIR_ADD(g_spikes[idx], c_o) : c_o;
            /* eq. 6: exp(d*d*(-1/(2 sigma^2))) * (1/(sqrt(2 pi) sigma)), d = V - V_th;
             * exponents below exp_floor give exactly 0 (denormals.EXP_FLOOR) */
            const float d = IIR_SUB(volts[idx], vth);
            const float arg = IIR_MUL(IIR_MUL(d, d), sg_scale);
            const float sg = arg < exp_floor ? 0.0f : IIR_MUL(IIR_EXP(arg), sg_gain);
            float g_v = IIR_ADD(IIR_MUL(g_o, sg), c_v);
            if (g_volts) g_v = IIR_ADD(g_v, g_volts[idx]);
            const float g_r_t = IIR_SUB(c_r, IIR_MUL(vth, g_v));
            const float g_p = IIR_ADD(cp0, g_v);
            grad_x[idx] = k_b == 1 ? g_p : IIR_MUL(b, g_p);
            c_v = IIR_MUL(lam, g_v);
            c_r = IIR_MUL(theta, g_r_t);
            c_o = detach_reset ? 0.0f : g_r_t;
            cp0 = k_a1 ? IIR_ADD(cp1, iir_term(k_a1, a1, g_p)) : cp1;
            cp1 = k_a2 ? IIR_MUL(a2, g_p) : 0.0f;
        }
        if (gp1_out) gp1_out[i] = cp0;
        if (gp2_out) gp2_out[i] = cp1;
        if (gr_out) gr_out[i] = c_r;
        if (gv_out) gv_out[i] = c_v;
        if (go_out) go_out[i] = c_o;
    }
}
