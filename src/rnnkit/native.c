/* rnnkit's native kernels, used by rnnkit/bptt/ and rnnkit/scan.py:
 *   - sequence kernels (RNN_SEQ_*, LSTM_SEQ_*, GRU_SEQ_*, GRU_RB_SEQ_*): a layer's whole loop,
 *     its recurrent matmul included, one call forward and one backward, for hidden sizes up to
 *     256. A row of the batch needs only its own previous state, so each OpenMP thread runs its
 *     own rows through every step without waiting for the others; 4 rows share each load of
 *     the (packed) weights. For small H a step's matmul is too small for the BLAS to run well,
 *     and the per-step Python and dispatch cost as much as the arithmetic.
 *   - step kernels (LSTM_*, LSTM_LN_*, GRU_*, GRU_RB_*, GATE_NORM_*): for wider layers, the
 *     element-wise part of one step around torch's per-step matmul, one call instead of ~6
 *     torch ops.
 *   - scans (MINGRU_*, MINLSTM_*): the whole minGRU or minLSTM recurrence in one pass.
 * rnnkit/native.py compiles this file with the system C compiler on first use and loads it
 * with ctypes; without a compiler the torch code runs instead (same numbers, tested).
 *
 * LSTM layout (defined in rnnkit/layout.py): gates in the order (o, i, f, g) along the last axis,
 * the g pre-activation doubled (the forward gets g = tanh(a) = 2 sigmoid(2a) - 1 from the same
 * sigmoid); the loop keeps m_t = -2 c_t and u_t = sigmoid(m_t) = (1 - tanh c_t) / 2, so that
 * h_t = o_t (1 - 2 u_t) and 1 - tanh^2 c_t = 4 u_t (1 - u_t).
 * Every tensor is (D, B, X) for one step: D directions at a stride given in elements, then
 * B contiguous rows of X values. Pointers are to the step's (d=0, b=0) element.
 */
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* Rows split over the threads of the OpenMP runtime torch itself uses (the library links the
 * libgomp that torch has already loaded, so its threads, already awake after torch's matmuls,
 * do the work); without OpenMP one thread does all rows. Used where a call does enough work. */
#define PRAGMA(x) _Pragma(#x)
/* A per-step call (one LSTM/GRU step of D B rows) splits its rows when it has at least this many
 * values to compute: a parallel region on threads that are awake costs a few microseconds, so
 * only the larger steps gain. rnnkit_set_step_min_work changes it (tests force the split). */
static int64_t step_min_work = 16384;
void rnnkit_set_step_min_work(int64_t n) { step_min_work = n; }

#ifdef _OPENMP
#include <omp.h>
#define ROWS_BEGIN_AT(B, WORK, MIN)                                                                 \
    PRAGMA(omp parallel if ((WORK) >= (MIN)))                                                       \
    {                                                                                               \
        int64_t nt_ = omp_get_num_threads(), id_ = omp_get_thread_num();                            \
        int64_t b0 = (B) * id_ / nt_, b1 = (B) * (id_ + 1) / nt_;
/* STMT once per thread, in thread order (iteration i of a static schedule is thread i's). */
#define ROWS_IN_ORDER(STMT)                                                                         \
    PRAGMA(omp for ordered schedule(static, 1))                                                     \
    for (int64_t i_ = 0; i_ < nt_; i_++) {                                                          \
        PRAGMA(omp ordered)                                                                         \
        STMT                                                                                        \
    }
#else
#define ROWS_BEGIN_AT(B, WORK, MIN)                                                                 \
    {                                                                                               \
        int64_t nt_ = 1, b0 = 0, b1 = (B);                                                          \
        (void)nt_;
#define ROWS_IN_ORDER(STMT) STMT
#endif
#define ROWS_BEGIN(B, WORK) ROWS_BEGIN_AT(B, WORK, 65536)
/* The rows (d, b) of one step, split over the threads when the step is large enough. */
#define STEP_ROWS_BEGIN(D, B, WORK)                                                                 \
    ROWS_BEGIN_AT((D) * (B), WORK, step_min_work)                                                   \
    for (int64_t r_ = b0; r_ < b1; r_++) {                                                          \
        int64_t d = r_ / (B), b = r_ % (B);
#define STEP_ROWS_END                                                                               \
    }                                                                                               \
    ROWS_END
#define ROWS_END }

/* exp for float32 (Cephes expf's polynomial): x = n ln2 + r, |r| <= ln2/2. Written without
 * calls or branches so the compiler vectorises the loops below; within 2 ulp of expf. */
static inline float exp_f32(float x) {
    x = x < -88.0f ? -88.0f : (x > 89.0f ? 89.0f : x);  /* 89: 2^128 is +inf, as expf overflows */
    float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;  /* round to nearest */
    float r = x - n * 0.693359375f;
    r = r - n * -2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    union { uint32_t i; float f; } s;
    s.i = (uint32_t)((int32_t)n + 127) << 23;  /* 2^n; n = -127 gives 0, n = 128 gives +inf */
    return p * s.f;
}

static inline float sigmoid_f32(float x) { return 1.0f / (1.0f + exp_f32(-x)); }
static inline double sigmoid_f64(double x) { return 1.0 / (1.0 + exp(-x)); }
static inline float tanh_f32(float x) { return 2.0f * sigmoid_f32(2.0f * x) - 1.0f; }
static inline double tanh_f64(double x) { return tanh(x); }

/* Row helpers over n values (each loop vectorises): dst = a * b; dst += a * b, or dst += a when
 * b is NULL; dst += a. */
#define ROW_MUL(dst, a, b, n)                                                                       \
    do {                                                                                            \
        _Pragma("omp simd")                                                                         \
        for (int64_t k_ = 0; k_ < (n); k_++) (dst)[k_] = (a)[k_] * (b)[k_];                         \
    } while (0)
#define ROW_ADD(dst, a, n)                                                                          \
    do {                                                                                            \
        _Pragma("omp simd")                                                                         \
        for (int64_t k_ = 0; k_ < (n); k_++) (dst)[k_] += (a)[k_];                                  \
    } while (0)
#define ROW_ADD_MUL(dst, a, b, n)                                                                   \
    do {                                                                                            \
        if (b) {                                                                                    \
            _Pragma("omp simd")                                                                     \
            for (int64_t k_ = 0; k_ < (n); k_++) (dst)[k_] += (a)[k_] * (b)[k_];                    \
        } else {                                                                                    \
            ROW_ADD(dst, a, n);                                                                     \
        }                                                                                           \
    } while (0)

/* Forward, one step. gates: pre-activations in, activations (o, i, f, g) out. m_prev = -2 c_{t-1};
 * writes m = -2 c_t, u = sigmoid(m), h = h_t, and hm = h_t * mask when hm is not NULL. */
#define LSTM_FORWARD(NAME, T, SIGMOID)                                                              \
    void NAME(int64_t D, int64_t B, int64_t H, T *gates, int64_t gates_d, const T *m_prev, T *m,    \
              int64_t m_d, T *u, int64_t u_d, T *h, int64_t h_d, const T *mask, T *hm, int64_t hm_d) { \
        STEP_ROWS_BEGIN(D, B, D * B * 4 * H)                                                  \
        {                                                                                           \
                T *a = gates + d * gates_d + b * 4 * H;                                             \
                const T *mp = m_prev + d * m_d + b * H;                                             \
                T *mb = m + d * m_d + b * H, *ub = u + d * u_d + b * H, *hb = h + d * h_d + b * H;  \
                _Pragma("omp simd")                                                                 \
                for (int64_t k = 0; k < 4 * H; k++) a[k] = SIGMOID(a[k]);                           \
                _Pragma("omp simd")                                                                 \
                for (int64_t k = 0; k < H; k++) {                                                   \
                    T o = a[k], i = a[H + k], f = a[2 * H + k], g = 2 * a[3 * H + k] - 1;           \
                    a[3 * H + k] = g;                                                               \
                    T mk = f * mp[k] - 2 * i * g; /* -2 c_t = f (-2 c_{t-1}) - 2 i g */             \
                    T uk = SIGMOID(mk);                                                             \
                    mb[k] = mk;                                                                     \
                    ub[k] = uk;                                                                     \
                    hb[k] = o - 2 * o * uk; /* o tanh(c_t) */                                       \
                }                                                                                   \
                if (hm) ROW_MUL(hm + d * hm_d + b * H, hb, mask + (d * B + b) * H, H);              \
        }                                                                                           \
        STEP_ROWS_END                                                                               \
    }

/* Backward, one step. dL/dh_t = rec * mask + grad, where rec = dL/da_{t+1} W_hh (D, B, H)
 * contiguous, mask (D, B, H) or NULL (no mask; also for the last step, where rec holds the
 * final state's gradient), grad = dL/dh_t from the output at t or NULL (direction stride
 * grad_d). dc = dL/dc_t from step t+1 (D, B, H) contiguous, replaced by dL/dc_{t-1}. Writes
 * da = dL/d(pre-activations) (o, i, f, g; g w.r.t. the undoubled pre-activation). */
#define LSTM_BACKWARD(NAME, T)                                                                      \
    void NAME(int64_t D, int64_t B, int64_t H, const T *gates, int64_t gates_d, const T *u,         \
              int64_t u_d, const T *m_prev, int64_t m_d, const T *rec, const T *mask,               \
              const T *grad, int64_t grad_d, T *dc, T *da, int64_t da_d) {                          \
        STEP_ROWS_BEGIN(D, B, D * B * 4 * H)                                                  \
        {                                                                                           \
                const T *a = gates + d * gates_d + b * 4 * H;                                       \
                const T *ub = u + d * u_d + b * H, *mp = m_prev + d * m_d + b * H;                  \
                const T *rb = rec + (d * B + b) * H;                                                \
                const T *mk = mask ? mask + (d * B + b) * H : NULL;                                 \
                const T *gb = grad ? grad + d * grad_d + b * H : NULL;                              \
                T *dcb = dc + (d * B + b) * H, *dab = da + d * da_d + b * 4 * H;                    \
                _Pragma("omp simd")                                                                 \
                for (int64_t k = 0; k < H; k++) {                                                   \
                    T o = a[k], i = a[H + k], f = a[2 * H + k], g = a[3 * H + k], uk = ub[k];       \
                    T dhk = (mk ? rb[k] * mk[k] : rb[k]) + (gb ? gb[k] : 0);                        \
                    T dck = dcb[k] + 4 * dhk * o * uk * (1 - uk); /* + dh o (1 - tanh^2 c_t) */     \
                    dab[k] = dhk * o * (1 - o) * (1 - 2 * uk);                                      \
                    dab[H + k] = dck * i * (1 - i) * g;                                             \
                    dab[2 * H + k] = dck * f * (1 - f) * (-0.5f * mp[k]); /* times c_{t-1} */       \
                    dab[3 * H + k] = dck * i * (1 - g * g);                                         \
                    dcb[k] = dck * f;                                                               \
                }                                                                                   \
        }                                                                                           \
        STEP_ROWS_END                                                                               \
    }

/* minGRU over a whole sequence, time-major (see MinGRUScan in scan.py): k_z, k_h, h (T, B, H)
 * contiguous, h0 (B, H), valid (T, B) bytes or NULL (a padded step carries h unchanged):
 *   z = sigmoid(k_z), g = k_h + 1/2 if k_h >= 0 else sigmoid(k_h), h_t = (1 - z) h_{t-1} + z g. */
#define MINGRU_FORWARD(NAME, T, SIGMOID)                                                            \
    void NAME(int64_t steps, int64_t B, int64_t H, const T *kz, const T *kh, const T *h0,           \
              const uint8_t *valid, T *h) {                                                         \
        ROWS_BEGIN(B, steps * B * H)                                                                \
        for (int64_t t = 0; t < steps; t++)                                                         \
            for (int64_t b = b0; b < b1; b++) {                                                     \
                int64_t o = (t * B + b) * H;                                                        \
                T on = (!valid || valid[t * B + b]) ? 1 : 0;                                        \
                const T *pb = t > 0 ? h + o - B * H : h0 + b * H;                                   \
                _Pragma("omp simd")                                                                 \
                for (int64_t k = 0; k < H; k++) {                                                   \
                    T z = on * SIGMOID(kz[o + k]), x = kh[o + k];                                   \
                    T g = x >= 0 ? x + (T)0.5 : SIGMOID(x);                                         \
                    h[o + k] = pb[k] + z * (g - pb[k]);                                             \
                }                                                                                   \
            }                                                                                       \
        ROWS_END                                                                                    \
    }

/* Its backward, t = T-1 .. 0, with d_t = dL/dh_t in total = grad_h[t] + (1 - z_{t+1}) d_{t+1}:
 *   dk_z = d (g - h_{t-1}) z (1 - z),  dk_h = d z g',  dh0 = (1 - z_0) d_0.
 * carry (B, H) holds dL/dh_{T-1} from the final state on entry and dL/dh0 on return; grad_h
 * advances grad_step elements a step (0: the same row every step, e.g. a row of zeros). */
#define MINGRU_BACKWARD(NAME, T, SIGMOID)                                                           \
    void NAME(int64_t steps, int64_t B, int64_t H, const T *kz, const T *kh, const T *h0,           \
              const uint8_t *valid, const T *h, const T *grad_h, int64_t grad_step, T *dkz, T *dkh,  \
              T *carry) {                                                                           \
        ROWS_BEGIN(B, steps * B * H)                                                                \
        for (int64_t t = steps - 1; t >= 0; t--) {                                                  \
            int64_t at = t * B * H;                                                                 \
            const T *prev = t > 0 ? h + at - B * H : h0;                                            \
            for (int64_t b = b0; b < b1; b++) {                                                     \
                int64_t o = at + b * H;                                                             \
                T on = (!valid || valid[t * B + b]) ? 1 : 0;                                        \
                const T *pb = prev + b * H, *gb = grad_h + t * grad_step + b * H;                   \
                T *cb = carry + b * H;                                                              \
                _Pragma("omp simd")                                                                 \
                for (int64_t k = 0; k < H; k++) {                                                   \
                    T z = on * SIGMOID(kz[o + k]), x = kh[o + k], s = SIGMOID(x);                   \
                    T g = x >= 0 ? x + (T)0.5 : s, dg = x >= 0 ? (T)1 : s * (1 - s);                \
                    T d = gb[k] + cb[k];                                                            \
                    dkz[o + k] = d * (g - pb[k]) * z * (1 - z);                                     \
                    dkh[o + k] = d * z * dg;                                                        \
                    cb[k] = (1 - z) * d;                                                            \
                }                                                                                   \
            }                                                                                       \
        }                                                                                           \
        ROWS_END                                                                                    \
    }

/* out = in W for R rows at once (R = 1 or 4; row strides os, is): the rows' recurrent matmul in
 * the sequence kernels. W (K, N) comes packed by PACK_COLUMNS: blocks of VB columns, each block
 * its K rows contiguous, so the loop streams through memory. The columns of a block have their
 * sums in a local array (registers, once the compiler unrolls the block), so each weight is
 * loaded once per block of rows and no partial sum is stored and reloaded. */
#define VB(T) ((int64_t)(256 / sizeof(T)))
#define ROWS_VECMAT(T, R, out, os, in, is, w, K, N)                                                 \
    do {                                                                                            \
        int64_t j0_ = 0;                                                                            \
        for (; j0_ + VB(T) <= (N); j0_ += VB(T)) {                                                  \
            T acc_[R][VB(T)];                                                                       \
            for (int64_t i_ = 0; i_ < (R); i_++) {                                                  \
                _Pragma("omp simd")                                                                 \
                for (int64_t j_ = 0; j_ < VB(T); j_++) acc_[i_][j_] = 0;                            \
            }                                                                                       \
            for (int64_t k_ = 0; k_ < (K); k_++) {                                                  \
                const T *wr_ = (w) + j0_ * (K) + k_ * VB(T);                                        \
                for (int64_t i_ = 0; i_ < (R); i_++) {                                              \
                    const T x_ = (in)[i_ * (is) + k_];                                              \
                    _Pragma("omp simd")                                                             \
                    for (int64_t j_ = 0; j_ < VB(T); j_++) acc_[i_][j_] += x_ * wr_[j_];            \
                }                                                                                   \
            }                                                                                       \
            for (int64_t i_ = 0; i_ < (R); i_++) {                                                  \
                _Pragma("omp simd")                                                                 \
                for (int64_t j_ = 0; j_ < VB(T); j_++) (out)[i_ * (os) + j0_ + j_] = acc_[i_][j_];  \
            }                                                                                       \
        }                                                                                           \
        for (int64_t i_ = 0; i_ < (R) && j0_ < (N); i_++) {                                         \
            T *o_ = (out) + i_ * (os);                                                              \
            _Pragma("omp simd")                                                                     \
            for (int64_t j_ = j0_; j_ < (N); j_++) o_[j_] = 0;                                      \
            for (int64_t k_ = 0; k_ < (K); k_++) {                                                  \
                const T x_ = (in)[i_ * (is) + k_], *wr_ = (w) + j0_ * (K) + k_ * ((N) - j0_) - j0_; \
                _Pragma("omp simd")                                                                 \
                for (int64_t j_ = j0_; j_ < (N); j_++) o_[j_] += x_ * wr_[j_];                      \
            }                                                                                       \
        }                                                                                           \
    } while (0)

/* W (D, K, N) row-major, copied into the layout ROWS_VECMAT reads: for each direction, the
 * blocks of VB columns one after the other, each its K rows of (up to) VB values. */
#define PACK_COLUMNS_FN(NAME, T)                                                                    \
    static T *NAME(const T *w, int64_t D, int64_t K, int64_t N) {                                   \
        T *p = (T *)malloc(sizeof(T) * D * K * N);                                                  \
        for (int64_t d = 0; d < D; d++)                                                             \
            for (int64_t j0 = 0; j0 < N; j0 += VB(T)) {                                             \
                int64_t width = N - j0 < VB(T) ? N - j0 : VB(T);                                    \
                for (int64_t k = 0; k < K; k++)                                                     \
                    memcpy(p + d * K * N + j0 * K + k * width, w + d * K * N + k * N + j0, sizeof(T) * width); \
            }                                                                                       \
        return p;                                                                                   \
    }
PACK_COLUMNS_FN(pack_columns_f32, float)
PACK_COLUMNS_FN(pack_columns_f64, double)
#define PACK_COLUMNS(w, D, K, N)                                                                    \
    _Generic((w), float *: pack_columns_f32, const float *: pack_columns_f32,                       \
             double *: pack_columns_f64, const double *: pack_columns_f64)(w, D, K, N)

/* GRU (reset_after=True) over a whole sequence, the recurrent matmul inside (see GRUFunction in
 * bptt/gru.py and GRUNormFunction in bptt/gru_norm.py). Each thread runs its own rows (d, b)
 * through all T steps: a row's h_t needs only its own h_{t-1}, so the threads never wait for
 * each other. For a small hidden size a step's matmul (say 2 x (32 x 64) x (64 x 192)) is too
 * small for the BLAS to run well; here 4 rows share each load of the weights, and T matmul calls
 * and T element-wise calls become one call.
 *   q_t  = (h_{t-1} m) W_hh^T                                   (H x 3H per row, in the loop)
 *   hp_t = q_t + b_hh,  or  LN_gate(q_t) g_hh + b_hh  when g_hh is not NULL
 *   xp_t = xz_t,        or  LN_gate(xz_t) g_x + b_x   when g_x is not NULL
 *   r = sigmoid(xp_r + hp_r), z = sigmoid(xp_z + hp_z), n = tanh(xp_n + r hp_n),
 *   h_t = n + z (h_{t-1} - n).
 * xz (D, T, B, 3H) = x W_ih^T (+ b_ih without layer norm); wt (D, H, 3H) = W_hh^T; b_hh, g_hh,
 * g_x, b_x (D, 3H) or NULL; mask (D, B, H) or NULL; hs (D, T+1, B, H) with h_0 at t = 0.
 * Writes hs[1..T], gates (r, z, n after their activations) and hp (D, T, B, 3H); with layer
 * norm also q (D, T, B, 3H) and the statistics stats (4, D, T, B, 3): mean and 1/std of q, then
 * of xz. */
#define GRU_SEQ_FORWARD(NAME, T, SIGMOID, TANH, SQRT)                                               \
    void NAME(int64_t D, int64_t steps, int64_t B, int64_t H, T eps, const T *xz, const T *wt,      \
              const T *b_hh, const T *g_hh, const T *g_x, const T *b_x, const T *mask, T *q,        \
              T *stats, T *hp, T *gates, T *hs) {                                                   \
        int64_t G = 3 * H, n_stats = D * steps * B * 3;                                             \
        T *wp = PACK_COLUMNS(wt, D, H, G);                                                          \
        ROWS_BEGIN_AT(D * B, D * steps * B * G, step_min_work)                                      \
        T *hin = (T *)malloc(sizeof(T) * (4 * H + G)), *xn = hin + 4 * H;                           \
        for (int64_t t = 0; t < steps; t++)                                                         \
            for (int64_t r0 = b0, n_rows; r0 < b1; r0 += n_rows) {                                  \
                ROW_BLOCK(r0, n_rows, b1, B)                                                        \
                int64_t at0 = (d0 * steps + t) * B + r0 % B; /* row index in (D, T, B) */           \
                const T *h0_ = hs + ((d0 * (steps + 1) + t) * B + r0 % B) * H;                      \
                if (mask) ROW_MUL(hin, h0_, mask + r0 * H, n_rows * H);                             \
                else memcpy(hin, h0_, sizeof(T) * n_rows * H);                                      \
                BLOCK_VECMAT(T, n_rows, (g_hh ? q : hp) + at0 * G, G, hin, H, wp + d0 * H * G, H, G); \
                for (int64_t i = 0; i < n_rows; i++) {                                              \
                    int64_t row = at0 + i, at = row * G;                                            \
                    const T *hb_prev = h0_ + i * H, *x = xz + at;                                   \
                    T *hb = (T *)h0_ + (B + i) * H, *p = hp + at, *g = gates + at;                  \
                    if (g_hh) GATE_NORM_ROW(T, SQRT, p, q + at, g_hh + d0 * G, stats + row * 3,     \
                                            stats + n_stats + row * 3, eps, H);                     \
                    if (b_hh) ROW_ADD(p, b_hh + d0 * G, G);                                         \
                    if (g_x) {                                                                      \
                        GATE_NORM_ROW(T, SQRT, xn, x, g_x + d0 * G, stats + 2 * n_stats + row * 3,  \
                                      stats + 3 * n_stats + row * 3, eps, H);                       \
                        if (b_x) ROW_ADD(xn, b_x + d0 * G, G);                                      \
                        x = xn;                                                                     \
                    }                                                                               \
                    _Pragma("omp simd")                                                             \
                    for (int64_t k = 0; k < H; k++) {                                               \
                        T rg = SIGMOID(x[k] + p[k]), z = SIGMOID(x[H + k] + p[H + k]);              \
                        T n = TANH(x[2 * H + k] + rg * p[2 * H + k]);                               \
                        g[k] = rg;                                                                  \
                        g[H + k] = z;                                                               \
                        g[2 * H + k] = n;                                                           \
                        hb[k] = n + z * (hb_prev[k] - n);                                           \
                    }                                                                               \
                }                                                                                   \
            }                                                                                       \
        free(hin);                                                                                  \
        ROWS_END                                                                                    \
        free(wp);                                                                                   \
    }

/* y = LN_gate(x) gain for one row of 3 gates of H values; the statistics to mean[0..2], rstd[0..2]. */
#define GATE_NORM_ROW(T, SQRT, y, x, gain, mean, rstd, eps, H)                                      \
    for (int64_t qg_ = 0; qg_ < 3; qg_++) {                                                         \
        const T *xq_ = (x) + qg_ * (H), *gq_ = (gain) + qg_ * (H);                                  \
        T *yq_ = (y) + qg_ * (H);                                                                   \
        ROW_STATS(T, SQRT, xq_, H, eps, m_, r_s)                                                    \
        (mean)[qg_] = m_;                                                                           \
        (rstd)[qg_] = r_s;                                                                          \
        _Pragma("omp simd")                                                                         \
        for (int64_t k_ = 0; k_ < (H); k_++) yq_[k_] = (xq_[k_] - m_) * r_s * gq_[k_];              \
    }

/* The backward of GATE_NORM_ROW in place: dy (3 gates of H) becomes dL/dx; the gain's and the
 * bias's gradients added to sums_gain, sums_bias (T, NULL for none). */
#define GATE_NORM_ROW_BACKWARD(T, dy, x, gain, mean, rstd, H, sums_gain, sums_bias)                \
    for (int64_t qg_ = 0; qg_ < 3; qg_++) {                                                         \
        const T *xq_ = (x) + qg_ * (H), *gq_ = (gain) + qg_ * (H), m_ = (mean)[qg_], r_s = (rstd)[qg_]; \
        T *dq_ = (dy) + qg_ * (H), *sg_ = (sums_gain) + qg_ * (H), u1_ = 0, u2_ = 0;                \
        ROW_SUMS2(T, H, dq_[k_] * gq_[k_], dq_[k_] * gq_[k_] * ((xq_[k_] - m_) * r_s), u1_, u2_);   \
        _Pragma("omp simd")                                                                         \
        for (int64_t k_ = 0; k_ < (H); k_++) sg_[k_] += dq_[k_] * ((xq_[k_] - m_) * r_s);           \
        if (sums_bias) ROW_ADD((sums_bias) + qg_ * (H), dq_, H);                                    \
        u1_ /= (H);                                                                                 \
        u2_ /= (H);                                                                                 \
        _Pragma("omp simd")                                                                         \
        for (int64_t k_ = 0; k_ < (H); k_++)                                                        \
            dq_[k_] = r_s * (dq_[k_] * gq_[k_] - u1_ - (xq_[k_] - m_) * r_s * u2_);                 \
    }

/* Its backward, t = T-1 .. 0 for each row: dL/dh_t = carry + rec * m + grad_t, where carry =
 * z_{t+1} dL/dh_{t+1} (on entry: the final state's gradient) and rec = dL/dq_{t+1} W_hh (this
 * row's, kept from the previous step; zero at t = T-1); grad (D, T, B, H) or NULL. Writes dxz
 * = dL/dxz and dq = dL/dq (D, T, B, 3H) (without layer norm dL/dq = dL/dhp, the gradient of
 * b_hh too); with layer norm of q, dhp (D, T, B, 3H) = dL/dhp. The gains' and biases' gradients
 * (D, 3H) each are added to sums = [g_hh | b_hh | g_x | b_x] in double: a step's rows summed
 * in T first (converting every product to double was costly at S3's size), each thread's
 * added in thread order. On return carry (D, B, H) = dL/dh_0. w (D, 3H, H) = W_hh. */
#define GRU_SEQ_BACKWARD(NAME, T)                                                                   \
    void NAME(int64_t D, int64_t steps, int64_t B, int64_t H, const T *gates, const T *hp,          \
              const T *q, const T *xz, const T *stats, const T *g_hh, const T *g_x, const T *hs,    \
              const T *w, const T *mask, const T *grad, T *carry, T *dxz, T *dhp, T *dq,            \
              double *sums) {                                                                       \
        int64_t G = 3 * H, n_sums = 4 * D * G, n_stats = D * steps * B * 3;                         \
        T *wp = PACK_COLUMNS(w, D, G, H);                                                           \
        ROWS_BEGIN_AT(D * B, D * steps * B * G, step_min_work)                                      \
        T *rec = (T *)calloc((b1 - b0) * H + 1, sizeof(T));                                         \
        T *part = (g_hh || g_x) ? (T *)calloc(n_sums, sizeof(T)) : NULL;                            \
        double *own = part ? (double *)calloc(n_sums, sizeof(double)) : NULL;                       \
        for (int64_t t = steps - 1; t >= 0; t--) {                                                  \
            for (int64_t r0 = b0, n_rows; r0 < b1; r0 += n_rows) {                                  \
                ROW_BLOCK(r0, n_rows, b1, B)                                                        \
                int64_t at0 = (d0 * steps + t) * B + r0 % B;                                        \
                const T *h0_ = hs + ((d0 * (steps + 1) + t) * B + r0 % B) * H;                      \
                T *rec0 = rec + (r0 - b0) * H;                                                      \
                for (int64_t i = 0; i < n_rows; i++) {                                              \
                    int64_t row = at0 + i, at = row * G, r_ = r0 + i;                               \
                    const T *g = gates + at, *p = hp + at, *hb_prev = h0_ + i * H;                  \
                    T *rb = rec0 + i * H, *cb = carry + r_ * H, *dx = dxz + at;                     \
                    T *dp = g_hh ? dhp + at : dq + at;                                              \
                    if (t < steps - 1) ROW_ADD_MUL(cb, rb, mask ? mask + r_ * H : NULL, H);         \
                    if (grad) ROW_ADD(cb, grad + row * H, H);                                       \
                    _Pragma("omp simd")                                                             \
                    for (int64_t k = 0; k < H; k++) { /* cb[k] is dL/dh_t now */                    \
                        T rg = g[k], z = g[H + k], n = g[2 * H + k], dh = cb[k];                    \
                        T dn = dh * (1 - z) * (1 - n * n);                                          \
                        T dz = dh * (hb_prev[k] - n) * z * (1 - z);                                 \
                        T dr = dn * p[2 * H + k] * rg * (1 - rg);                                   \
                        dx[k] = dr;                                                                 \
                        dx[H + k] = dz;                                                             \
                        dx[2 * H + k] = dn;                                                         \
                        dp[k] = dr;                                                                 \
                        dp[H + k] = dz;                                                             \
                        dp[2 * H + k] = dn * rg;                                                    \
                        cb[k] = dh * z;                                                             \
                    }                                                                               \
                    if (g_hh) {                                                                     \
                        memcpy(dq + at, dp, sizeof(T) * G);                                         \
                        GATE_NORM_ROW_BACKWARD(T, dq + at, q + at, g_hh + d0 * G, stats + row * 3,  \
                                               stats + n_stats + row * 3, H, part + d0 * G,         \
                                               part + D * G + d0 * G);                              \
                    }                                                                               \
                    if (g_x)                                                                        \
                        GATE_NORM_ROW_BACKWARD(T, dx, xz + at, g_x + d0 * G, stats + 2 * n_stats + row * 3, \
                                               stats + 3 * n_stats + row * 3, H, part + 2 * D * G + d0 * G, \
                                               part + 3 * D * G + d0 * G);                          \
                }                                                                                   \
                BLOCK_VECMAT(T, n_rows, rec0, H, dq + at0 * G, G, wp + d0 * G * H, G, H);            \
            }                                                                                       \
            if (part) {                                                                             \
                _Pragma("omp simd")                                                                 \
                for (int64_t j = 0; j < n_sums; j++) {                                              \
                    own[j] += part[j];                                                              \
                    part[j] = 0;                                                                    \
                }                                                                                   \
            }                                                                                       \
        }                                                                                           \
        for (int64_t r_ = b0; r_ < b1; r_++)                                                        \
            ROW_ADD_MUL(carry + r_ * H, rec + (r_ - b0) * H, mask ? mask + r_ * H : NULL, H);       \
        if (own) {                                                                                  \
            ROWS_IN_ORDER({                                                                         \
                for (int64_t j = 0; j < n_sums; j++) sums[j] += own[j];                             \
            })                                                                                      \
        }                                                                                           \
        free(own);                                                                                  \
        free(part);                                                                                 \
        free(rec);                                                                                  \
        ROWS_END                                                                                    \
        free(wp);                                                                                   \
    }

/* The rows [r0, r0 + n_rows) of one direction that a thread's sequence loop takes together at a
 * step: at most 4, never across a direction (they share one weight matrix). */
#define ROW_BLOCK(r0, n_rows, b1, B)                                                                \
    int64_t d0 = (r0) / (B);                                                                        \
    n_rows = (d0 + 1) * (B) - (r0) < (b1) - (r0) ? (d0 + 1) * (B) - (r0) : (b1) - (r0);             \
    n_rows = n_rows < 4 ? n_rows : 4;
/* The matmul of 1 or 4 rows as functions, not expanded at each of the sequence kernels' call
 * sites (which made the file slow to compile); a call does K x N multiply-adds per row. */
#define ROWS_VECMAT_FN(NAME, T, R)                                                                  \
    __attribute__((noinline)) static void NAME(T *out, int64_t os, const T *in, int64_t is,         \
                                               const T *w, int64_t K, int64_t N) {                  \
        ROWS_VECMAT(T, R, out, os, in, is, w, K, N);                                                \
    }
ROWS_VECMAT_FN(rows_vecmat1_f32, float, 1)
ROWS_VECMAT_FN(rows_vecmat4_f32, float, 4)
ROWS_VECMAT_FN(rows_vecmat1_f64, double, 1)
ROWS_VECMAT_FN(rows_vecmat4_f64, double, 4)
/* ROWS_VECMAT for n_rows (1..4) rows of type T (float or double). */
#define BLOCK_VECMAT(T, n_rows, out, os, in, is, w, K, N)                                           \
    do {                                                                                            \
        if ((n_rows) == 4)                                                                          \
            _Generic((out), float *: rows_vecmat4_f32, double *: rows_vecmat4_f64)(out, os, in, is, w, K, N); \
        else                                                                                        \
            for (int64_t i_b = 0; i_b < (n_rows); i_b++)                                            \
                _Generic((out), float *: rows_vecmat1_f32, double *: rows_vecmat1_f64)(             \
                    (out) + i_b * (os), os, (in) + i_b * (is), is, w, K, N);                        \
    } while (0)

/* GRU with reset_after=False over a whole sequence, the two recurrent matmuls inside (see
 * GRUResetBeforeFunction in bptt/gru.py; as GRU_SEQ_FORWARD, each thread runs its rows through all
 * steps, 4 rows per load of the weights):
 *   r, z = sigmoid(pre_rz + hin W_rz^T),  u = r hin,  n = tanh(pre_n + u W_n^T),
 *   h_t = n + z (h_{t-1} - n),  hin = h_{t-1} m.
 * pre (D, T, B, 3H) = x W_ih^T + b_ih + b_hh; wt_rz (D, H, 2H), wt_n (D, H, H); mask (D, B, H) or
 * NULL; hs (D, T+1, B, H) with h_0 at t = 0. Writes gates (r, z, n), u (D, T, B, H), hs[1..T]. */
#define GRU_RB_SEQ_FORWARD(NAME, T, SIGMOID, TANH)                                                  \
    void NAME(int64_t D, int64_t steps, int64_t B, int64_t H, const T *pre, const T *wt_rz,         \
              const T *wt_n, const T *mask, T *gates, T *u, T *hs) {                                \
        int64_t G = 3 * H;                                                                          \
        T *wp_rz = PACK_COLUMNS(wt_rz, D, H, 2 * H);                                                \
        T *wp_n = PACK_COLUMNS(wt_n, D, H, H);                                                      \
        ROWS_BEGIN_AT(D * B, D * steps * B * G, step_min_work)                                      \
        T *hin = (T *)malloc(sizeof(T) * 4 * H);                                                    \
        for (int64_t t = 0; t < steps; t++)                                                         \
            for (int64_t r0 = b0, n_rows; r0 < b1; r0 += n_rows) {                                  \
                ROW_BLOCK(r0, n_rows, b1, B)                                                        \
                int64_t at0 = ((d0 * steps + t) * B + r0 % B);                                      \
                const T *h0_ = hs + ((d0 * (steps + 1) + t) * B + r0 % B) * H;                      \
                if (mask) ROW_MUL(hin, h0_, mask + r0 * H, n_rows * H);                             \
                else memcpy(hin, h0_, sizeof(T) * n_rows * H);                                      \
                BLOCK_VECMAT(T, n_rows, gates + at0 * G, G, hin, H, wp_rz + d0 * H * 2 * H, H, 2 * H); \
                for (int64_t i = 0; i < n_rows; i++) {                                              \
                    T *g = gates + (at0 + i) * G, *ub = u + (at0 + i) * H;                          \
                    const T *x = pre + (at0 + i) * G, *hi = hin + i * H;                            \
                    _Pragma("omp simd")                                                             \
                    for (int64_t k = 0; k < 2 * H; k++) g[k] = SIGMOID(x[k] + g[k]);                \
                    _Pragma("omp simd")                                                             \
                    for (int64_t k = 0; k < H; k++) ub[k] = g[k] * hi[k];                           \
                }                                                                                   \
                BLOCK_VECMAT(T, n_rows, gates + at0 * G + 2 * H, G, u + at0 * H, H, wp_n + d0 * H * H, H, H); \
                for (int64_t i = 0; i < n_rows; i++) {                                              \
                    T *g = gates + (at0 + i) * G, *hb = (T *)h0_ + (B + i) * H;                     \
                    const T *x = pre + (at0 + i) * G, *hp_ = h0_ + i * H;                           \
                    _Pragma("omp simd")                                                             \
                    for (int64_t k = 0; k < H; k++) {                                               \
                        T n = TANH(x[2 * H + k] + g[2 * H + k]);                                    \
                        g[2 * H + k] = n;                                                           \
                        hb[k] = n + g[H + k] * (hp_[k] - n);                                        \
                    }                                                                               \
                }                                                                                   \
            }                                                                                       \
        free(hin);                                                                                  \
        ROWS_END                                                                                    \
        free(wp_rz);                                                                                \
        free(wp_n);                                                                                 \
    }

/* Its backward, t = T-1 .. 0 for each row: dL/dh_t = carry + rec m + grad_t (carry = z_{t+1}
 * dL/dh_{t+1}, on entry the final state's gradient; rec = dL/d(hin_{t+1}), this row's, zero at
 * t = T-1); then the pre-activation gradients da (r, z, n) = dL/dpre, du = da_n W_n,
 * da_r = du hin r (1 - r), rec = du r + da_rz W_rz. w_rz (D, 2H, H), w_n (D, H, H) = W_hh's
 * rows; grad (D, T, B, H) or NULL. On return carry (D, B, H) = dL/dh_0. */
#define GRU_RB_SEQ_BACKWARD(NAME, T)                                                                \
    void NAME(int64_t D, int64_t steps, int64_t B, int64_t H, const T *gates, const T *hs,          \
              const T *w_rz, const T *w_n, const T *mask, const T *grad, T *carry, T *da) {         \
        int64_t G = 3 * H;                                                                          \
        T *wp_rz = PACK_COLUMNS(w_rz, D, 2 * H, H);                                                 \
        T *wp_n = PACK_COLUMNS(w_n, D, H, H);                                                       \
        ROWS_BEGIN_AT(D * B, D * steps * B * G, step_min_work)                                      \
        T *rec = (T *)calloc((b1 - b0) * H + 4 * H, sizeof(T)), *du = rec + (b1 - b0) * H;          \
        for (int64_t t = steps - 1; t >= 0; t--)                                                    \
            for (int64_t r0 = b0, n_rows; r0 < b1; r0 += n_rows) {                                  \
                ROW_BLOCK(r0, n_rows, b1, B)                                                        \
                int64_t at0 = ((d0 * steps + t) * B + r0 % B);                                      \
                const T *h0_ = hs + ((d0 * (steps + 1) + t) * B + r0 % B) * H;                      \
                T *rec0 = rec + (r0 - b0) * H;                                                      \
                for (int64_t i = 0; i < n_rows; i++) {                                              \
                    int64_t row = (r0 + i) * H;                                                     \
                    const T *g = gates + (at0 + i) * G, *pb = h0_ + i * H;                          \
                    T *cb = carry + row, *dab = da + (at0 + i) * G;                                 \
                    if (t < steps - 1) ROW_ADD_MUL(cb, rec0 + i * H, mask ? mask + row : NULL, H);  \
                    if (grad) ROW_ADD(cb, grad + (at0 + i) * H, H);                                 \
                    _Pragma("omp simd")                                                             \
                    for (int64_t k = 0; k < H; k++) {                                               \
                        T z = g[H + k], n = g[2 * H + k], dh = cb[k];                               \
                        dab[H + k] = dh * (pb[k] - n) * z * (1 - z);                                \
                        dab[2 * H + k] = dh * (1 - z) * (1 - n * n);                                \
                        cb[k] = dh * z;                                                             \
                    }                                                                               \
                }                                                                                   \
                BLOCK_VECMAT(T, n_rows, du, H, da + at0 * G + 2 * H, G, wp_n + d0 * H * H, H, H);    \
                for (int64_t i = 0; i < n_rows; i++) {                                              \
                    const T *g = gates + (at0 + i) * G, *pb = h0_ + i * H, *dub = du + i * H;       \
                    const T *mk = mask ? mask + (r0 + i) * H : NULL;                                \
                    T *dab = da + (at0 + i) * G;                                                    \
                    _Pragma("omp simd")                                                             \
                    for (int64_t k = 0; k < H; k++) {                                               \
                        T rg = g[k], hin = mk ? pb[k] * mk[k] : pb[k];                              \
                        dab[k] = dub[k] * hin * rg * (1 - rg);                                      \
                    }                                                                               \
                }                                                                                   \
                BLOCK_VECMAT(T, n_rows, rec0, H, da + at0 * G, G, wp_rz + d0 * 2 * H * H, 2 * H, H);  \
                for (int64_t i = 0; i < n_rows; i++) {                                              \
                    const T *g = gates + (at0 + i) * G, *dub = du + i * H;                          \
                    T *rb = rec0 + i * H;                                                           \
                    _Pragma("omp simd")                                                             \
                    for (int64_t k = 0; k < H; k++) rb[k] += dub[k] * g[k];                         \
                }                                                                                   \
            }                                                                                       \
        for (int64_t r_ = b0; r_ < b1; r_++)                                                        \
            ROW_ADD_MUL(carry + r_ * H, rec + (r_ - b0) * H, mask ? mask + r_ * H : NULL, H);       \
        free(rec);                                                                                  \
        ROWS_END                                                                                    \
        free(wp_rz);                                                                                \
        free(wp_n);                                                                                 \
    }

/* LSTM over a whole sequence, the recurrent matmul inside, plain or layer-normed (see
 * LSTMFunction in bptt/lstm.py and LSTMNormFunction in bptt/lstm_norm.py; as GRU_SEQ_FORWARD,
 * each thread runs its rows through all steps, 4 rows per load of the weights). Gates in the
 * order (o, i, f, g):
 *   plain:        a = xz + hm W_hh^T                      (xz = x W_ih^T + b_ih + b_hh)
 *   layer norm:   a = LN_gate(xz) g_x + b_x + LN_gate(q) g_h,  q = hm W_hh^T   (when g_h is not NULL)
 *   o, i, f = sigmoid(a_o, a_i, a_f), g = tanh(a_g),  c_t = f c_{t-1} + i g,
 *   h_t = o tc,  tc = tanh(c_t), or tanh(LN(c_t) w_c + b_c) with layer norm;  hm = h_{t-1} m.
 * xz (D, T, B, 4H); wt (D, H, 4H) = W_hh^T; g_x, b_x, g_h (D, 4H) and w_c, b_c (D, H), or NULL
 * (b_x may be NULL with layer norm); mask (D, B, H) or NULL; cs, hs (D, T+1, B, H) with c_0, h_0
 * at t = 0. Writes gates (activations), cs and hs [1..T], tc (D, T, B, H); with layer norm also
 * q (D, T, B, 4H) and stats = [mean, 1/std of xz (D, T, B, 4) | of q (D, T, B, 4) | of c (D, T, B)]. */
#define LSTM_SEQ_FORWARD(NAME, T, SIGMOID, TANH, SQRT)                                              \
    void NAME(int64_t D, int64_t steps, int64_t B, int64_t H, T eps, const T *xz, const T *wt,      \
              const T *g_x, const T *b_x, const T *g_h, const T *w_c, const T *b_c, const T *mask,  \
              T *q, T *stats, T *gates, T *cs, T *tc, T *hs) {                                      \
        int64_t G = 4 * H, n4 = D * steps * B * 4, n1 = D * steps * B;                              \
        T *mean_x = stats, *rstd_x = stats + n4, *mean_h = stats + 2 * n4, *rstd_h = stats + 3 * n4; \
        T *mean_c = stats + 4 * n4, *rstd_c = stats + 4 * n4 + n1;                                  \
        T *wp = PACK_COLUMNS(wt, D, H, G);                                                          \
        ROWS_BEGIN_AT(D * B, D * steps * B * G, step_min_work)                                      \
        T *hin = (T *)malloc(sizeof(T) * 4 * H);                                                    \
        for (int64_t t = 0; t < steps; t++)                                                         \
            for (int64_t r0 = b0, n_rows; r0 < b1; r0 += n_rows) {                                  \
                ROW_BLOCK(r0, n_rows, b1, B)                                                        \
                int64_t at0 = (d0 * steps + t) * B + r0 % B, st0 = (d0 * (steps + 1) + t) * B + r0 % B; \
                const T *h0_ = hs + st0 * H;                                                        \
                if (mask) ROW_MUL(hin, h0_, mask + r0 * H, n_rows * H);                             \
                else memcpy(hin, h0_, sizeof(T) * n_rows * H);                                      \
                BLOCK_VECMAT(T, n_rows, (g_h ? q : gates) + at0 * G, G, hin, H, wp + d0 * H * G, H, G); \
                for (int64_t i = 0; i < n_rows; i++) {                                              \
                    int64_t row = at0 + i, at = row * G;                                            \
                    const T *x = xz + at, *cp = cs + (st0 + i) * H;                                 \
                    T *a = gates + at, *cb = (T *)cp + B * H, *tb = tc + row * H;                   \
                    T *hb = (T *)h0_ + (B + i) * H;                                                 \
                    if (g_h) {                                                                      \
                        for (int64_t qg = 0; qg < 4; qg++) {                                        \
                            int64_t w = d0 * G + qg * H, s = row * 4 + qg;                          \
                            const T *xq = x + qg * H, *pq = q + at + qg * H, *gx = g_x + w, *gh = g_h + w; \
                            T *aq = a + qg * H, sx, sh, vx, vh;                                     \
                            ROW_SUMS2(T, H, xq[k_], pq[k_], sx, sh);                                \
                            T mx = sx / H, mh = sh / H;                                             \
                            ROW_SUMS2(T, H, (xq[k_] - mx) * (xq[k_] - mx), (pq[k_] - mh) * (pq[k_] - mh), vx, vh); \
                            T rx = 1 / SQRT(vx / H + eps), rh = 1 / SQRT(vh / H + eps);             \
                            mean_x[s] = mx;                                                         \
                            rstd_x[s] = rx;                                                         \
                            mean_h[s] = mh;                                                         \
                            rstd_h[s] = rh;                                                         \
                            _Pragma("omp simd")                                                     \
                            for (int64_t k = 0; k < H; k++)                                         \
                                aq[k] = (xq[k] - mx) * rx * gx[k] + (pq[k] - mh) * rh * gh[k];      \
                            if (b_x) ROW_ADD(aq, b_x + w, H);                                       \
                        }                                                                           \
                    } else {                                                                        \
                        ROW_ADD(a, x, G);                                                           \
                    }                                                                               \
                    _Pragma("omp simd")                                                             \
                    for (int64_t k = 0; k < 3 * H; k++) a[k] = SIGMOID(a[k]);                       \
                    _Pragma("omp simd")                                                             \
                    for (int64_t k = 3 * H; k < 4 * H; k++) a[k] = TANH(a[k]);                      \
                    _Pragma("omp simd")                                                             \
                    for (int64_t k = 0; k < H; k++) cb[k] = a[2 * H + k] * cp[k] + a[H + k] * a[3 * H + k]; \
                    if (g_h) {                                                                      \
                        const T *wc = w_c + d0 * H, *bc = b_c + d0 * H;                             \
                        ROW_STATS(T, SQRT, cb, H, eps, mc, rc)                                      \
                        mean_c[row] = mc;                                                           \
                        rstd_c[row] = rc;                                                           \
                        _Pragma("omp simd")                                                         \
                        for (int64_t k = 0; k < H; k++) tb[k] = TANH((cb[k] - mc) * rc * wc[k] + bc[k]); \
                    } else {                                                                        \
                        _Pragma("omp simd")                                                         \
                        for (int64_t k = 0; k < H; k++) tb[k] = TANH(cb[k]);                        \
                    }                                                                               \
                    _Pragma("omp simd")                                                             \
                    for (int64_t k = 0; k < H; k++) hb[k] = a[k] * tb[k];                           \
                }                                                                                   \
            }                                                                                       \
        free(hin);                                                                                  \
        ROWS_END                                                                                    \
        free(wp);                                                                                   \
    }

/* Its backward, t = T-1 .. 0 for each row: dL/dh_t = rec m + grad_t (at t = T-1: dh (D, B, H)
 * on entry, the final state's gradient), rec = dL/dq_{t+1} W_hh (this row's, kept from the
 * previous step); dc (D, B, H): dL/dc_T on entry, carried back, dL/dc_0 on return; dh: dL/dh_0
 * on return. Writes dxz = dL/dxz (D, T, B, 4H) (plain: dL/da, also dL/dq and the bias's
 * gradient) and, with layer norm, dq = dL/dq (D, T, B, 4H), adding the parameters' gradients to
 * sums = [g_h | g_x | b_x (D, 4H) | w_c | b_c (D, H)] in double (a step's rows summed in T
 * first, each thread's added in thread order). w (D, 4H, H) = W_hh; grad (D, T, B, H) or NULL. */
#define LSTM_SEQ_BACKWARD(NAME, T)                                                                  \
    void NAME(int64_t D, int64_t steps, int64_t B, int64_t H, const T *gates, const T *xz,          \
              const T *q, const T *stats, const T *g_x, const T *g_h, const T *w_c, const T *cs,    \
              const T *tc, const T *hs, const T *w, const T *mask, const T *grad, T *dh, T *dc,     \
              T *dxz, T *dq, double *sums) {                                                        \
        int64_t G = 4 * H, n4 = D * steps * B * 4, n1 = D * steps * B, n_sums = D * 14 * H;          \
        const T *mean_x = stats, *rstd_x = stats + n4, *mean_h = stats + 2 * n4, *rstd_h = stats + 3 * n4; \
        const T *mean_c = stats + 4 * n4, *rstd_c = stats + 4 * n4 + n1;                            \
        T *wp = PACK_COLUMNS(w, D, G, H);                                                           \
        ROWS_BEGIN_AT(D * B, D * steps * B * G, step_min_work)                                      \
        T *rec = (T *)calloc((b1 - b0) * H + H, sizeof(T)), *dt = rec + (b1 - b0) * H;              \
        T *part = g_h ? (T *)calloc(n_sums, sizeof(T)) : NULL;                                      \
        double *own = part ? (double *)calloc(n_sums, sizeof(double)) : NULL;                       \
        for (int64_t t = steps - 1; t >= 0; t--) {                                                  \
            for (int64_t r0 = b0, n_rows; r0 < b1; r0 += n_rows) {                                  \
                ROW_BLOCK(r0, n_rows, b1, B)                                                        \
                int64_t at0 = (d0 * steps + t) * B + r0 % B, st0 = (d0 * (steps + 1) + t) * B + r0 % B; \
                T *rec0 = rec + (r0 - b0) * H, *dq0 = (g_h ? dq : dxz) + at0 * G;                   \
                for (int64_t i = 0; i < n_rows; i++) {                                              \
                    int64_t row = at0 + i, at = row * G, r_ = r0 + i;                               \
                    const T *a = gates + at, *cp = cs + (st0 + i) * H, *cb = cp + B * H;            \
                    const T *tb = tc + row * H;                                                     \
                    T *dhb = dh + r_ * H, *dcb = dc + r_ * H, *da = dxz + at, *rb = rec0 + i * H;   \
                    if (t < steps - 1) {                                                            \
                        if (mask) ROW_MUL(dhb, rb, mask + r_ * H, H);                               \
                        else memcpy(dhb, rb, sizeof(T) * H);                                        \
                    }                                                                               \
                    if (grad) ROW_ADD(dhb, grad + row * H, H);                                      \
                    if (g_h) { /* dc += dL/dc_t through tc = tanh(LN(c) w_c + b_c) */               \
                        const T *wc = w_c + d0 * H;                                                 \
                        T mc = mean_c[row], rc = rstd_c[row], s1, s2;                               \
                        T *swc = part + D * 12 * H + d0 * H, *sbc = part + D * 13 * H + d0 * H;     \
                        _Pragma("omp simd")                                                         \
                        for (int64_t k = 0; k < H; k++) {                                           \
                            T dtk = dhb[k] * a[k] * (1 - tb[k] * tb[k]);                            \
                            dt[k] = dtk;                                                            \
                            swc[k] += dtk * ((cb[k] - mc) * rc);                                    \
                            sbc[k] += dtk;                                                          \
                        }                                                                           \
                        ROW_SUMS2(T, H, dt[k_] * wc[k_], dt[k_] * wc[k_] * ((cb[k_] - mc) * rc), s1, s2); \
                        s1 /= H;                                                                    \
                        s2 /= H;                                                                    \
                        _Pragma("omp simd")                                                         \
                        for (int64_t k = 0; k < H; k++)                                             \
                            dcb[k] += rc * (dt[k] * wc[k] - s1 - (cb[k] - mc) * rc * s2);           \
                    } else {                                                                        \
                        _Pragma("omp simd")                                                         \
                        for (int64_t k = 0; k < H; k++) dcb[k] += dhb[k] * a[k] * (1 - tb[k] * tb[k]); \
                    }                                                                               \
                    _Pragma("omp simd")                                                             \
                    for (int64_t k = 0; k < H; k++) {                                               \
                        T o = a[k], ig = a[H + k], f = a[2 * H + k], g = a[3 * H + k], dck = dcb[k]; \
                        da[k] = dhb[k] * tb[k] * o * (1 - o);                                       \
                        da[H + k] = dck * g * ig * (1 - ig);                                        \
                        da[2 * H + k] = dck * cp[k] * f * (1 - f);                                  \
                        da[3 * H + k] = dck * ig * (1 - g * g);                                     \
                        dcb[k] = dck * f;                                                           \
                    }                                                                               \
                    if (g_h) {                                                                      \
                        for (int64_t qg = 0; qg < 4; qg++) {                                        \
                            int64_t w_ = d0 * G + qg * H, s = row * 4 + qg;                         \
                            const T *xq = xz + at + qg * H, *pq = q + at + qg * H;                  \
                            const T *gx = g_x + w_, *gh = g_h + w_;                                 \
                            T *daq = da + qg * H, *dqq = dq + at + qg * H;                          \
                            T mx = mean_x[s], rx = rstd_x[s], mh = mean_h[s], rh = rstd_h[s];       \
                            T *sgh = part + w_, *sgx = part + D * 4 * H + w_, *sbx = part + D * 8 * H + w_; \
                            T u1x, u2x, u1h, u2h;                                                   \
                            ROW_SUMS2(T, H, daq[k_] * gx[k_], daq[k_] * gx[k_] * ((xq[k_] - mx) * rx), u1x, u2x); \
                            ROW_SUMS2(T, H, daq[k_] * gh[k_], daq[k_] * gh[k_] * ((pq[k_] - mh) * rh), u1h, u2h); \
                            u1x /= H;                                                               \
                            u2x /= H;                                                               \
                            u1h /= H;                                                               \
                            u2h /= H;                                                               \
                            _Pragma("omp simd")                                                     \
                            for (int64_t k = 0; k < H; k++) {                                       \
                                T e = daq[k];                                                       \
                                sgx[k] += e * ((xq[k] - mx) * rx);                                  \
                                sgh[k] += e * ((pq[k] - mh) * rh);                                  \
                                sbx[k] += e;                                                        \
                                dqq[k] = rh * (e * gh[k] - u1h - (pq[k] - mh) * rh * u2h);          \
                                daq[k] = rx * (e * gx[k] - u1x - (xq[k] - mx) * rx * u2x);          \
                            }                                                                       \
                        }                                                                           \
                    }                                                                               \
                }                                                                                   \
                BLOCK_VECMAT(T, n_rows, rec0, H, dq0, G, wp + d0 * G * H, G, H);                     \
            }                                                                                       \
            if (part) {                                                                             \
                _Pragma("omp simd")                                                                 \
                for (int64_t j = 0; j < n_sums; j++) {                                              \
                    own[j] += part[j];                                                              \
                    part[j] = 0;                                                                    \
                }                                                                                   \
            }                                                                                       \
        }                                                                                           \
        for (int64_t r_ = b0; r_ < b1; r_++) { /* dL/dh_0 = rec_0 m */                              \
            T *dhb = dh + r_ * H, *rb = rec + (r_ - b0) * H;                                        \
            if (mask) ROW_MUL(dhb, rb, mask + r_ * H, H);                                           \
            else memcpy(dhb, rb, sizeof(T) * H);                                                    \
        }                                                                                           \
        if (own) {                                                                                  \
            ROWS_IN_ORDER({                                                                         \
                for (int64_t j = 0; j < n_sums; j++) sums[j] += own[j];                             \
            })                                                                                      \
        }                                                                                           \
        free(own);                                                                                  \
        free(part);                                                                                 \
        free(rec);                                                                                  \
        ROWS_END                                                                                    \
        free(wp);                                                                                   \
    }

/* Elman RNN over a whole sequence, the recurrent matmul inside (see RNNFunction in bptt/rnn.py; as
 * GRU_SEQ_FORWARD, each thread runs its rows through all steps, 4 rows per load of the weights):
 *   h_t = act(pre_t + (h_{t-1} m) W_hh^T),  act = tanh (relu = 0) or relu (relu = 1).
 * pre (D, T, B, H) = x W_ih^T + b_ih + b_hh; wt (D, H, H) = W_hh^T; mask (D, B, H) or NULL;
 * hs (D, T+1, B, H) with h_0 at t = 0; writes hs[1..T]. */
#define RNN_SEQ_FORWARD(NAME, T, TANH)                                                              \
    void NAME(int64_t D, int64_t steps, int64_t B, int64_t H, int64_t relu, const T *pre,           \
              const T *wt, const T *mask, T *hs) {                                                  \
        T *wp = PACK_COLUMNS(wt, D, H, H);                                                          \
        ROWS_BEGIN_AT(D * B, D * steps * B * H, step_min_work)                                      \
        T *hin = (T *)malloc(sizeof(T) * 4 * H);                                                    \
        for (int64_t t = 0; t < steps; t++)                                                         \
            for (int64_t r0 = b0, n_rows; r0 < b1; r0 += n_rows) {                                  \
                ROW_BLOCK(r0, n_rows, b1, B)                                                        \
                int64_t at0 = (d0 * steps + t) * B + r0 % B;                                        \
                const T *h0_ = hs + ((d0 * (steps + 1) + t) * B + r0 % B) * H;                      \
                T *out = (T *)h0_ + B * H;                                                          \
                if (mask) ROW_MUL(hin, h0_, mask + r0 * H, n_rows * H);                             \
                else memcpy(hin, h0_, sizeof(T) * n_rows * H);                                      \
                BLOCK_VECMAT(T, n_rows, out, H, hin, H, wp + d0 * H * H, H, H);                     \
                ROW_ADD(out, pre + at0 * H, n_rows * H);                                            \
                if (relu) {                                                                         \
                    _Pragma("omp simd")                                                             \
                    for (int64_t k = 0; k < n_rows * H; k++) out[k] = out[k] > 0 ? out[k] : 0;      \
                } else {                                                                            \
                    _Pragma("omp simd")                                                             \
                    for (int64_t k = 0; k < n_rows * H; k++) out[k] = TANH(out[k]);                 \
                }                                                                                   \
            }                                                                                       \
        free(hin);                                                                                  \
        ROWS_END                                                                                    \
        free(wp);                                                                                   \
    }

/* Its backward, t = T-1 .. 0 for each row: dL/dh_t = rec m + grad_t (at t = T-1: dh (D, B, H) on
 * entry, the final state's gradient), da_t = dL/dh_t act'(h_t) = dL/dpre_t (written to da
 * (D, T, B, H)), rec = da_t W_hh (this row's). On return dh = dL/dh_0. w (D, H, H) = W_hh;
 * grad (D, T, B, H) or NULL. */
#define RNN_SEQ_BACKWARD(NAME, T)                                                                   \
    void NAME(int64_t D, int64_t steps, int64_t B, int64_t H, int64_t relu, const T *hs,            \
              const T *w, const T *mask, const T *grad, T *dh, T *da) {                             \
        T *wp = PACK_COLUMNS(w, D, H, H);                                                           \
        ROWS_BEGIN_AT(D * B, D * steps * B * H, step_min_work)                                      \
        T *rec = (T *)calloc((b1 - b0) * H + 1, sizeof(T));                                         \
        for (int64_t t = steps - 1; t >= 0; t--)                                                    \
            for (int64_t r0 = b0, n_rows; r0 < b1; r0 += n_rows) {                                  \
                ROW_BLOCK(r0, n_rows, b1, B)                                                        \
                int64_t at0 = (d0 * steps + t) * B + r0 % B;                                        \
                const T *hb = hs + ((d0 * (steps + 1) + t + 1) * B + r0 % B) * H;                   \
                T *rec0 = rec + (r0 - b0) * H, *dh0_ = dh + r0 * H, *da0 = da + at0 * H;            \
                if (t < steps - 1) {                                                                \
                    if (mask) ROW_MUL(dh0_, rec0, mask + r0 * H, n_rows * H);                       \
                    else memcpy(dh0_, rec0, sizeof(T) * n_rows * H);                                \
                }                                                                                   \
                if (grad) ROW_ADD(dh0_, grad + at0 * H, n_rows * H);                                \
                if (relu) {                                                                         \
                    _Pragma("omp simd")                                                             \
                    for (int64_t k = 0; k < n_rows * H; k++) da0[k] = hb[k] > 0 ? dh0_[k] : 0;      \
                } else {                                                                            \
                    _Pragma("omp simd")                                                             \
                    for (int64_t k = 0; k < n_rows * H; k++) da0[k] = dh0_[k] * (1 - hb[k] * hb[k]); \
                }                                                                                   \
                BLOCK_VECMAT(T, n_rows, rec0, H, da0, H, wp + d0 * H * H, H, H);                     \
            }                                                                                       \
        for (int64_t r_ = b0; r_ < b1; r_++) { /* dL/dh_0 = rec_0 m */                              \
            T *dhb = dh + r_ * H, *rb = rec + (r_ - b0) * H;                                        \
            if (mask) ROW_MUL(dhb, rb, mask + r_ * H, H);                                           \
            else memcpy(dhb, rb, sizeof(T) * H);                                                    \
        }                                                                                           \
        free(rec);                                                                                  \
        ROWS_END                                                                                    \
        free(wp);                                                                                   \
    }

/* GRU (reset_after=True, gate order r, z, n; see GRUFunction in bptt/gru.py), forward, one step.
 * xp = x W_ih^T + b_ih and hp = (h_{t-1} m) W_hh^T + b_hh (D, B, 3H) in; writes the activations
 * r, z, n to gates, h_t = n + z (h_{t-1} - n) to h, and h_t * mask to hm (D, B, H) contiguous
 * when mask is not NULL (the input of the next step's matmul):
 *   r = sigmoid(xp_r + hp_r), z = sigmoid(xp_z + hp_z), n = tanh(xp_n + r hp_n). */
#define GRU_FORWARD(NAME, T, SIGMOID, TANH)                                                         \
    void NAME(int64_t D, int64_t B, int64_t H, const T *xp, int64_t xp_d, const T *hp,              \
              int64_t hp_d, T *gates, int64_t gates_d, const T *h_prev, T *h, int64_t h_d,          \
              const T *mask, T *hm) {                                                               \
        STEP_ROWS_BEGIN(D, B, D * B * 3 * H)                                                  \
        {                                                                                           \
                const T *x = xp + d * xp_d + b * 3 * H, *p = hp + d * hp_d + b * 3 * H;             \
                const T *hb_prev = h_prev + d * h_d + b * H;                                        \
                T *g = gates + d * gates_d + b * 3 * H, *hb = h + d * h_d + b * H;                  \
                _Pragma("omp simd")                                                                 \
                for (int64_t k = 0; k < H; k++) {                                                   \
                    T r = SIGMOID(x[k] + p[k]), z = SIGMOID(x[H + k] + p[H + k]);                   \
                    T n = TANH(x[2 * H + k] + r * p[2 * H + k]);                                    \
                    g[k] = r;                                                                       \
                    g[H + k] = z;                                                                   \
                    g[2 * H + k] = n;                                                               \
                    hb[k] = n + z * (hb_prev[k] - n);                                               \
                }                                                                                   \
                if (mask) ROW_MUL(hm + (d * B + b) * H, hb, mask + (d * B + b) * H, H);             \
        }                                                                                           \
        STEP_ROWS_END                                                                               \
    }

/* Its backward, one step. dL/dh_t = carry + rec * mask + grad, where carry = z_{t+1} dL/dh_{t+1}
 * (the final state's gradient for the last step), rec = dL/dhp_{t+1} W_hh or NULL (last step),
 * grad = dL/dh_t from the output at t or NULL; carry, rec, mask (D, B, H) contiguous. Writes
 * dxp = dL/d(xp) and dhp = dL/d(hp) (D, B, 3H), and carry = z_t dL/dh_t. */
#define GRU_BACKWARD(NAME, T)                                                                       \
    void NAME(int64_t D, int64_t B, int64_t H, const T *gates, int64_t gates_d, const T *hp,        \
              int64_t hp_d, const T *h_prev, int64_t h_d, const T *rec, const T *mask,              \
              const T *grad, int64_t grad_d, T *carry, T *dxp, T *dhp, int64_t d_d) {               \
        STEP_ROWS_BEGIN(D, B, D * B * 3 * H)                                                  \
        {                                                                                           \
                const T *g = gates + d * gates_d + b * 3 * H, *p = hp + d * hp_d + b * 3 * H;       \
                const T *hb_prev = h_prev + d * h_d + b * H;                                        \
                int64_t row = (d * B + b) * H;                                                      \
                const T *rb = rec ? rec + row : NULL, *mk = mask ? mask + row : NULL;               \
                const T *gb = grad ? grad + d * grad_d + b * H : NULL;                              \
                T *cb = carry + row, *dx = dxp + d * d_d + b * 3 * H, *dp = dhp + d * d_d + b * 3 * H; \
                if (rb) ROW_ADD_MUL(cb, rb, mk, H);                                                 \
                if (gb) ROW_ADD(cb, gb, H);                                                         \
                _Pragma("omp simd")                                                                 \
                for (int64_t k = 0; k < H; k++) { /* cb[k] is dL/dh_t now */                        \
                    T r = g[k], z = g[H + k], n = g[2 * H + k];                                     \
                    T dh = cb[k];                                                                   \
                    T dn = dh * (1 - z) * (1 - n * n);                                              \
                    T dz = dh * (hb_prev[k] - n) * z * (1 - z);                                     \
                    T dr = dn * p[2 * H + k] * r * (1 - r);                                         \
                    dx[k] = dr;                                                                     \
                    dx[H + k] = dz;                                                                 \
                    dx[2 * H + k] = dn;                                                             \
                    dp[k] = dr;                                                                     \
                    dp[H + k] = dz;                                                                 \
                    dp[2 * H + k] = dn * r;                                                         \
                    cb[k] = dh * z;                                                                 \
                }                                                                                   \
        }                                                                                           \
        STEP_ROWS_END                                                                               \
    }

/* s1, s2 = the sums over k_ < n of the expressions E1, E2 (written in k_): 16 lanes summed by a
 * plain element-wise loop, then the lanes pairwise. (GCC 12 left some `omp simd reduction`
 * loops scalar inside these kernels; this form always vectorises.) */
#define ROW_SUMS2(T, n, E1, E2, s1, s2)                                                             \
    do {                                                                                            \
        T l1_[16] = {0}, l2_[16] = {0};                                                             \
        int64_t k0_ = 0;                                                                            \
        for (; k0_ + 16 <= (n); k0_ += 16) {                                                        \
            _Pragma("omp simd")                                                                     \
            for (int64_t l_ = 0; l_ < 16; l_++) {                                                   \
                int64_t k_ = k0_ + l_;                                                              \
                l1_[l_] += (E1);                                                                    \
                l2_[l_] += (E2);                                                                    \
            }                                                                                       \
        }                                                                                           \
        for (int64_t k_ = k0_; k_ < (n); k_++) {                                                    \
            l1_[k_ - k0_] += (E1);                                                                  \
            l2_[k_ - k0_] += (E2);                                                                  \
        }                                                                                           \
        for (int w_ = 8; w_ >= 1; w_ /= 2) { /* the lanes pairwise: 4 vector adds, not 15 in a chain */ \
            _Pragma("omp simd")                                                                     \
            for (int l_ = 0; l_ < w_; l_++) {                                                       \
                l1_[l_] += l1_[l_ + w_];                                                            \
                l2_[l_] += l2_[l_ + w_];                                                            \
            }                                                                                       \
        }                                                                                           \
        s1 = l1_[0];                                                                                \
        s2 = l2_[0];                                                                                \
    } while (0)

/* Mean and 1/sqrt(var + eps) of n values (two passes, as ATen's layer norm). */
#define ROW_STATS(T, SQRT, v, n, eps, mean, rstd)                                                   \
    T mean, rstd;                                                                                   \
    {                                                                                               \
        T s_, q_, unused_;                                                                          \
        ROW_SUMS2(T, n, (v)[k_], 0, s_, unused_);                                                   \
        mean = s_ / (n);                                                                            \
        ROW_SUMS2(T, n, ((v)[k_] - mean) * ((v)[k_] - mean), 0, q_, unused_);                       \
        (void)unused_;                                                                              \
        rstd = 1 / SQRT(q_ / (n) + (eps));                                                          \
    }

/* LSTM with layer norm (see LSTMNormFunction in bptt/lstm_norm.py; gates o, i, f, g; LN over
 * each gate's H units without bias, then a gain; LN(c) with weight w_c and bias b_c), forward,
 * one step:
 *   a = LN_gate(xz) g_x + bias + LN_gate(hp) g_h,  c_t = f c_{t-1} + i g,
 *   tc = tanh(LN(c_t) w_c + b_c),  h_t = o tc,
 * with xz = x_t W_ih^T and hp = (h_{t-1} m) W_hh^T (D, B, 4H) in. Writes the activations to
 * gates, the statistics (mean, 1/std) of xz and of hp per gate (D, B, 4) and of c_t (D, B), c_t,
 * tc, h_t, and h_t * mask to hm when hm is not NULL. g_x, bias, g_h (D, 4H) (bias: zeros if none),
 * w_c and b_c (D, H), mask (D, B, H) contiguous. */
#define LSTM_LN_FORWARD(NAME, T, SIGMOID, TANH, SQRT)                                               \
    void NAME(int64_t D, int64_t B, int64_t H, T eps, const T *xz, const T *hp, int64_t p_d,        \
              const T *g_x, const T *bias, const T *g_h, const T *w_c, const T *b_c, T *gates,      \
              int64_t gates_d, T *mean_x, T *rstd_x, T *mean_h, T *rstd_h, int64_t sh_d, T *mean_c, \
              T *rstd_c, int64_t sc_d, const T *c_prev, T *c, int64_t c_d, T *tc, int64_t tc_d,    \
              T *h, int64_t h_d, const T *mask, T *hm, int64_t hm_d) {                              \
        STEP_ROWS_BEGIN(D, B, D * B * 4 * H)                                                        \
        const T *x = xz + d * p_d + b * 4 * H, *p = hp + d * p_d + b * 4 * H;                       \
        T *a = gates + d * gates_d + b * 4 * H;                                                     \
        for (int64_t q = 0; q < 4; q++) {                                                           \
            int64_t w = (d * 4 + q) * H, s = d * sh_d + b * 4 + q;                                  \
            const T *xq = x + q * H, *pq = p + q * H, *gx = g_x + w, *gh = g_h + w;                 \
            T *aq = a + q * H;                                                                      \
            const T *bq = bias + w;                                                                 \
            T sx, sh, vx, vh;                                                                       \
            ROW_SUMS2(T, H, xq[k_], pq[k_], sx, sh);                                                \
            T mx = sx / H, mh = sh / H;                                                             \
            ROW_SUMS2(T, H, (xq[k_] - mx) * (xq[k_] - mx), (pq[k_] - mh) * (pq[k_] - mh), vx, vh);  \
            T rx = 1 / SQRT(vx / H + eps), rh = 1 / SQRT(vh / H + eps);                             \
            mean_x[s] = mx;                                                                         \
            rstd_x[s] = rx;                                                                         \
            mean_h[s] = mh;                                                                         \
            rstd_h[s] = rh;                                                                         \
            if (q < 3) {                                                                            \
                _Pragma("omp simd")                                                                 \
                for (int64_t k = 0; k < H; k++)                                                     \
                    aq[k] = SIGMOID((xq[k] - mx) * rx * gx[k] + (pq[k] - mh) * rh * gh[k] + bq[k]); \
            } else {                                                                                \
                _Pragma("omp simd")                                                                 \
                for (int64_t k = 0; k < H; k++)                                                     \
                    aq[k] = TANH((xq[k] - mx) * rx * gx[k] + (pq[k] - mh) * rh * gh[k] + bq[k]);    \
            }                                                                                       \
        }                                                                                           \
        const T *cp = c_prev + d * c_d + b * H, *wc = w_c + d * H, *bc = b_c + d * H;               \
        T *cb = c + d * c_d + b * H, *tb = tc + d * tc_d + b * H, *hb = h + d * h_d + b * H;        \
        _Pragma("omp simd")                                                                         \
        for (int64_t k = 0; k < H; k++) cb[k] = a[2 * H + k] * cp[k] + a[H + k] * a[3 * H + k];     \
        ROW_STATS(T, SQRT, cb, H, eps, mc, rc)                                                      \
        mean_c[d * sc_d + b] = mc;                                                                  \
        rstd_c[d * sc_d + b] = rc;                                                                  \
        _Pragma("omp simd")                                                                         \
        for (int64_t k = 0; k < H; k++) {                                                           \
            tb[k] = TANH((cb[k] - mc) * rc * wc[k] + bc[k]);                                        \
            hb[k] = a[k] * tb[k];                                                                   \
        }                                                                                           \
        if (hm) ROW_MUL(hm + d * hm_d + b * H, hb, mask + (d * B + b) * H, H);                      \
        STEP_ROWS_END                                                                               \
    }

/* Its backward, one step. On entry rec = dL/dhp_{t+1} W_hh (or, for the last step, the final
 * state's gradient, with mask NULL), grad = dL/dh_t from the output at t or NULL; rec is
 * overwritten with dL/dh_t = rec * mask + grad. dc = dL/dc_t from step t+1, replaced by
 * dL/dc_{t-1}. Writes dxz = dL/dxz and dhp = dL/dhp (through the gate layer norms; for dW_ih
 * and dW_hh), and adds this step's share of the parameters' gradients to sums (double):
 * [g_h (D, 4H) | g_x (D, 4H) | bias (D, 4H) | w_c (D, H) | b_c (D, H)], summed over a thread's
 * rows in T first (converting each row's products to double was slow), then added in thread
 * order. */
#define LSTM_LN_BACKWARD(NAME, T)                                                                   \
    void NAME(int64_t D, int64_t B, int64_t H, const T *gates, int64_t gates_d, const T *xz,        \
              const T *hp, int64_t p_d, const T *mean_x, const T *rstd_x, const T *mean_h,          \
              const T *rstd_h, int64_t sh_d, const T *g_x, const T *g_h, const T *w_c,              \
              const T *c_prev, const T *c, int64_t c_d, const T *mean_c, const T *rstd_c,           \
              int64_t sc_d, const T *tc, int64_t tc_d, T *rec, const T *mask, const T *grad,        \
              int64_t grad_d, T *dc, T *dxz, T *dhp, double *sums) {                                \
        int64_t n_sums = D * 14 * H;                                                                \
        ROWS_BEGIN_AT(D * B, D * B * 4 * H, step_min_work)                                          \
        T *sum = (T *)calloc(n_sums, sizeof(T)); /* this call's share over the thread's rows */      \
        for (int64_t r_ = b0; r_ < b1; r_++) {                                                      \
            int64_t d = r_ / B, b = r_ % B, row = (d * B + b) * H;                                  \
            const T *a = gates + d * gates_d + b * 4 * H, *x = xz + d * p_d + b * 4 * H;            \
            const T *p = hp + d * p_d + b * 4 * H;                                                  \
            const T *cp = c_prev + d * c_d + b * H, *cb = c + d * c_d + b * H;                      \
            const T *tb = tc + d * tc_d + b * H, *wc = w_c + d * H;                                 \
            T *dh = rec + row, *dcb = dc + row;                                                     \
            T *dab = dxz + d * p_d + b * 4 * H, *dpb = dhp + d * p_d + b * 4 * H;                   \
            T *dwb = sum + D * 12 * H + d * H, *dbb = sum + D * 13 * H + d * H;                     \
            if (mask) ROW_MUL(dh, dh, mask + row, H);                                               \
            if (grad) ROW_ADD(dh, grad + d * grad_d + b * H, H);                                    \
            T mc = mean_c[d * sc_d + b], rc = rstd_c[d * sc_d + b], s1, s2;                         \
            T *dtb = dpb; /* dL/d(LN(c) w_c + b_c), in dhp's row until the gates' loop below */   \
            _Pragma("omp simd")                                                                     \
            for (int64_t k = 0; k < H; k++) {                                                       \
                T dt = dh[k] * a[k] * (1 - tb[k] * tb[k]), hat = (cb[k] - mc) * rc;                 \
                dtb[k] = dt;                                                                        \
                dwb[k] += dt * hat;                                                                 \
                dbb[k] += dt;                                                                       \
            }                                                                                       \
            ROW_SUMS2(T, H, dtb[k_] * wc[k_], dtb[k_] * wc[k_] * ((cb[k_] - mc) * rc), s1, s2);    \
            s1 /= H;                                                                                \
            s2 /= H;                                                                                \
            _Pragma("omp simd")                                                                     \
            for (int64_t k = 0; k < H; k++) {                                                       \
                T o = a[k], i = a[H + k], f = a[2 * H + k], g = a[3 * H + k];                       \
                T dt = dh[k] * o * (1 - tb[k] * tb[k]);                                             \
                T dck = dcb[k] + rc * (dt * wc[k] - s1 - (cb[k] - mc) * rc * s2);                   \
                dab[k] = dh[k] * tb[k] * o * (1 - o);                                               \
                dab[H + k] = dck * g * i * (1 - i);                                                 \
                dab[2 * H + k] = dck * cp[k] * f * (1 - f);                                         \
                dab[3 * H + k] = dck * i * (1 - g * g);                                             \
                dcb[k] = dck * f;                                                                   \
            }                                                                                       \
            for (int64_t q = 0; q < 4; q++) { /* dab: dL/d(pre-activation), replaced by dL/dxz */   \
                int64_t w = (d * 4 + q) * H, s = d * sh_d + b * 4 + q;                              \
                const T *xq = x + q * H, *pq = p + q * H, *gx = g_x + w, *gh = g_h + w;             \
                T *daq = dab + q * H, *dpq = dpb + q * H;                                           \
                T mx = mean_x[s], rx = rstd_x[s], mh = mean_h[s], rh = rstd_h[s];                   \
                T *sgh = sum + w, *sgx = sum + D * 4 * H + w, *sbq = sum + D * 8 * H + w;           \
                T u1x, u2x, u1h, u2h;                                                               \
                ROW_SUMS2(T, H, daq[k_] * gx[k_], daq[k_] * gx[k_] * ((xq[k_] - mx) * rx), u1x, u2x);  \
                ROW_SUMS2(T, H, daq[k_] * gh[k_], daq[k_] * gh[k_] * ((pq[k_] - mh) * rh), u1h, u2h);  \
                _Pragma("omp simd")                                                                 \
                for (int64_t k = 0; k < H; k++) {                                                   \
                    T e = daq[k];                                                                   \
                    sgx[k] += e * ((xq[k] - mx) * rx);                                              \
                    sgh[k] += e * ((pq[k] - mh) * rh);                                              \
                    sbq[k] += e;                                                                    \
                }                                                                                   \
                u1x /= H;                                                                           \
                u2x /= H;                                                                           \
                u1h /= H;                                                                           \
                u2h /= H;                                                                           \
                _Pragma("omp simd")                                                                 \
                for (int64_t k = 0; k < H; k++) {                                                   \
                    T e = daq[k];                                                                   \
                    dpq[k] = rh * (e * gh[k] - u1h - (pq[k] - mh) * rh * u2h);                      \
                    daq[k] = rx * (e * gx[k] - u1x - (xq[k] - mx) * rx * u2x);                      \
                }                                                                                   \
            }                                                                                       \
        }                                                                                           \
        ROWS_IN_ORDER({                                                                             \
            for (int64_t j = 0; j < n_sums; j++) sums[j] += sum[j];                                 \
        })                                                                                          \
        free(sum);                                                                                  \
        ROWS_END                                                                                    \
    }

/* Layer norm per gate (gate_norm in cells.py) over D directions of N rows, each row G gates of
 * H values:  y = (x - mean) rstd gain + bias,  rstd = 1 / sqrt(var + eps),  mean and var over
 * each (row, gate)'s H values, written to mean, rstd (D, N, G) at direction stride s_d.
 * x and y (rows of G*H contiguous; direction strides x_d and y_d); gain (D, G*H) contiguous;
 * bias (D, G*H) or NULL. Used for one step's
 * recurrent projection (N = B) and for a whole input projection (N = T B; rows split over the
 * threads when the call does enough work). */
#define GATE_NORM_FORWARD(NAME, T, SQRT)                                                            \
    void NAME(int64_t D, int64_t N, int64_t G, int64_t H, T eps, const T *x, int64_t x_d,           \
              const T *gain, const T *bias, T *y, int64_t y_d, T *mean, T *rstd,                    \
              int64_t s_d) {                                                                        \
        ROWS_BEGIN(N, D * N * G * H)                                                                \
        for (int64_t d = 0; d < D; d++)                                                             \
            for (int64_t n = b0; n < b1; n++)                                                       \
                for (int64_t q = 0; q < G; q++) {                                                   \
                    int64_t at = (n * G + q) * H, s = d * s_d + n * G + q;                          \
                    const T *xq = x + d * x_d + at, *gq = gain + (d * G + q) * H;                   \
                    T *yq = y + d * y_d + at;                                                       \
                    ROW_STATS(T, SQRT, xq, H, eps, m, r)                                            \
                    mean[s] = m;                                                                    \
                    rstd[s] = r;                                                                    \
                    _Pragma("omp simd")                                                             \
                    for (int64_t k = 0; k < H; k++) yq[k] = (xq[k] - m) * r * gq[k];                \
                    if (bias) ROW_ADD(yq, bias + (d * G + q) * H, H);                               \
                }                                                                                   \
        ROWS_END                                                                                    \
    }

/* Its backward: per (row, gate), with e = dy gain and hat = (x - mean) rstd,
 *   dx = rstd (e - mean(e) - hat mean(e hat));
 * and dgain (D, G*H) += the sum over rows of dy hat, dbias += the sum of dy (each NULL when not
 * wanted): 64 rows at a time in T, those sums in double, each thread's added in thread order.
 * dy, dx laid out as x (direction strides dy_d, dx_d). */
#define GATE_NORM_BACKWARD(NAME, T)                                                                 \
    void NAME(int64_t D, int64_t N, int64_t G, int64_t H, const T *dy, int64_t dy_d, const T *x,    \
              int64_t x_d, const T *mean, const T *rstd, int64_t s_d, const T *gain, T *dx,         \
              int64_t dx_d, double *dgain, double *dbias) {                                         \
        int64_t n_sums = D * G * H;                                                                 \
        ROWS_BEGIN(N, D * N * G * H)                                                                \
        double *own = (double *)calloc(2 * n_sums, sizeof(double)), *sg = own, *sb = own + n_sums;  \
        T *part = (T *)calloc(2 * n_sums, sizeof(T)), *pg = part, *pb = part + n_sums;              \
        for (int64_t n0 = b0; n0 < b1; n0 += 64) { /* 64 rows' sums in T, then added in double */  \
            for (int64_t d = 0; d < D; d++)                                                         \
                for (int64_t n = n0; n < n0 + 64 && n < b1; n++)                                    \
                    for (int64_t q = 0; q < G; q++) {                                               \
                        int64_t at = (n * G + q) * H, s = d * s_d + n * G + q, w = (d * G + q) * H; \
                        const T *dyq = dy + d * dy_d + at, *xq = x + d * x_d + at, *gq = gain + w;  \
                        T *dxq = dx + d * dx_d + at, m = mean[s], r = rstd[s], u1, u2;              \
                        T *pgq = pg + w, *pbq = pb + w;                                             \
                        ROW_SUMS2(T, H, dyq[k_] * gq[k_], dyq[k_] * gq[k_] * ((xq[k_] - m) * r), u1, u2); \
                        _Pragma("omp simd")                                                         \
                        for (int64_t k = 0; k < H; k++) {                                           \
                            pgq[k] += dyq[k] * ((xq[k] - m) * r);                                   \
                            pbq[k] += dyq[k];                                                       \
                        }                                                                           \
                        u1 /= H;                                                                    \
                        u2 /= H;                                                                    \
                        _Pragma("omp simd")                                                         \
                        for (int64_t k = 0; k < H; k++)                                             \
                            dxq[k] = r * (dyq[k] * gq[k] - u1 - (xq[k] - m) * r * u2);              \
                    }                                                                               \
            _Pragma("omp simd")                                                                     \
            for (int64_t j = 0; j < 2 * n_sums; j++) {                                              \
                own[j] += part[j];                                                                  \
                part[j] = 0;                                                                        \
            }                                                                                       \
        }                                                                                           \
        ROWS_IN_ORDER({                                                                             \
            for (int64_t j = 0; j < n_sums; j++) {                                                  \
                if (dgain) dgain[j] += sg[j];                                                       \
                if (dbias) dbias[j] += sb[j];                                                       \
            }                                                                                       \
        })                                                                                          \
        free(part);                                                                                 \
        free(own);                                                                                  \
        ROWS_END                                                                                    \
    }

/* k = bias + x W^T for one row: x (F), wt = W^T (F, n), bias (n) or NULL. */
#define PROJECT_ROW(T, k, x, wt, bias, F, n)                                                        \
    do {                                                                                            \
        _Pragma("omp simd")                                                                         \
        for (int64_t j_ = 0; j_ < (n); j_++) (k)[j_] = (bias) ? (bias)[j_] : 0;                     \
        for (int64_t f_ = 0; f_ < (F); f_++) {                                                      \
            const T *w_ = (wt) + f_ * (n), x_ = (x)[f_];                                            \
            _Pragma("omp simd")                                                                     \
            for (int64_t j_ = 0; j_ < (n); j_++) (k)[j_] += w_[j_] * x_;                            \
        }                                                                                           \
    } while (0)

/* minGRU with a narrow input (F features, e.g. 1 for pixel MNIST or a univariate series): the
 * input projection k = x W_ih^T + b_ih is computed inside the loops instead of being written to
 * and read back from two (T, B, H) tensors. x (T, B, F); wt = W_ih^T (F, 2H) (the k_z columns,
 * then k_h); bias (2H) or NULL. Same recurrence as MINGRU_FORWARD; rows split over threads. */
#define MINGRU_X_FORWARD(NAME, T, SIGMOID)                                                          \
    void NAME(int64_t steps, int64_t B, int64_t H, int64_t F, const T *x, const T *wt,              \
              const T *bias, const T *h0, const uint8_t *valid, T *h) {                             \
        ROWS_BEGIN(B, steps * B * H)                                                                \
        T *k = (T *)malloc(sizeof(T) * 2 * H);                                                      \
        for (int64_t t = 0; t < steps; t++)                                                         \
            for (int64_t b = b0; b < b1; b++) {                                                     \
                const T *xb = x + (t * B + b) * F, *pb = (t ? h + (t - 1) * B * H : h0) + b * H;    \
                T on = (!valid || valid[t * B + b]) ? 1 : 0, *hb = h + (t * B + b) * H;             \
                PROJECT_ROW(T, k, xb, wt, bias, F, 2 * H);                                          \
                _Pragma("omp simd")                                                                 \
                for (int64_t j = 0; j < H; j++) {                                                   \
                    T z = on * SIGMOID(k[j]), kh = k[H + j];                                        \
                    T g = kh >= 0 ? kh + (T)0.5 : SIGMOID(kh);                                      \
                    hb[j] = pb[j] + z * (g - pb[j]);                                                \
                }                                                                                   \
            }                                                                                       \
        free(k);                                                                                    \
        ROWS_END                                                                                    \
    }

/* Its backward: as MINGRU_BACKWARD, and then, from dk = (dk_z, dk_h) of each (t, b), the input
 * projection's gradients dbias (2H) += dk and dwt (F, 2H) += x dk: summed in T over a thread's
 * rows of one step, then in double over the steps, then over the threads in thread order
 * (the same sums whatever the timing); dx (T, B, F) = dk W_ih when dx is not NULL. */
#define MINGRU_X_BACKWARD(NAME, T, SIGMOID)                                                         \
    void NAME(int64_t steps, int64_t B, int64_t H, int64_t F, const T *x, const T *wt,              \
              const T *bias, const T *h0, const uint8_t *valid, const T *h, const T *grad_h,        \
              int64_t grad_step, T *carry, double *dwt, double *dbias, T *dx) {                     \
        int64_t n = (1 + F) * 2 * H; /* [dbias | dwt rows] */                                        \
        ROWS_BEGIN(B, steps * B * H)                                                                \
        T *k = (T *)malloc(sizeof(T) * (4 * H + n)), *dk = k + 2 * H, *part = k + 4 * H;            \
        double *sums = (double *)calloc(n, sizeof(double));                                         \
        memset(part, 0, sizeof(T) * n);                                                             \
        for (int64_t t = steps - 1; t >= 0; t--) {                                                  \
            const T *prev = t > 0 ? h + (t - 1) * B * H : h0;                                       \
            for (int64_t b = b0; b < b1; b++) {                                                     \
                const T *xb = x + (t * B + b) * F, *pb = prev + b * H;                              \
                const T *gb = grad_h + t * grad_step + b * H;                                       \
                T on = (!valid || valid[t * B + b]) ? 1 : 0, *cb = carry + b * H;                   \
                PROJECT_ROW(T, k, xb, wt, bias, F, 2 * H);                                          \
                _Pragma("omp simd")                                                                 \
                for (int64_t j = 0; j < H; j++) {                                                   \
                    T z = on * SIGMOID(k[j]), kh = k[H + j], s = SIGMOID(kh);                       \
                    T g = kh >= 0 ? kh + (T)0.5 : s, dg = kh >= 0 ? (T)1 : s * (1 - s);             \
                    T d = gb[j] + cb[j];                                                            \
                    dk[j] = d * (g - pb[j]) * z * (1 - z);                                          \
                    dk[H + j] = d * z * dg;                                                         \
                    cb[j] = (1 - z) * d;                                                            \
                }                                                                                   \
                ROW_ADD(part, dk, 2 * H);                                                           \
                for (int64_t f = 0; f < F; f++) {                                                   \
                    const T *w = wt + f * 2 * H, xf = xb[f];                                        \
                    T *pw = part + (f + 1) * 2 * H;                                                 \
                    _Pragma("omp simd")                                                             \
                    for (int64_t j = 0; j < 2 * H; j++) pw[j] += dk[j] * xf;                        \
                    if (dx) {                                                                       \
                        T acc = 0;                                                                  \
                        _Pragma("omp simd reduction(+:acc)")                                        \
                        for (int64_t j = 0; j < 2 * H; j++) acc += dk[j] * w[j];                    \
                        dx[(t * B + b) * F + f] = acc;                                              \
                    }                                                                               \
                }                                                                                   \
            }                                                                                       \
            _Pragma("omp simd")                                                                     \
            for (int64_t j = 0; j < n; j++) {                                                       \
                sums[j] += part[j];                                                                 \
                part[j] = 0;                                                                        \
            }                                                                                       \
        }                                                                                           \
        ROWS_IN_ORDER({                                                                             \
            for (int64_t j = 0; j < 2 * H; j++) dbias[j] += sums[j];                                \
            for (int64_t j = 0; j < F * 2 * H; j++) dwt[j] += sums[2 * H + j];                      \
        })                                                                                          \
        free(sums);                                                                                 \
        free(k);                                                                                    \
        ROWS_END                                                                                    \
    }

/* GRU with reset_after=False (n = tanh(xp_n + W_hn (r * h m) + b_hn); see GRUResetBeforeFunction
 * in bptt/gru.py): two matmuls a step, so two element-wise calls forward and two backward.
 * Forward A, after gates_rz = pre_rz + hin W_rz^T: r, z = sigmoid(.) in place; u = r * hin.
 * hin = h_{t-1} m (D, B, H) with direction stride hin_d; u (D, B, H) at direction stride u_d. */
#define GRU_RB_FORWARD_A(NAME, T, SIGMOID)                                                          \
    void NAME(int64_t D, int64_t B, int64_t H, T *gates, int64_t gates_d, const T *hin,             \
              int64_t hin_d, T *u, int64_t u_d) {                                                   \
        for (int64_t d = 0; d < D; d++)                                                             \
            for (int64_t b = 0; b < B; b++) {                                                       \
                T *g = gates + d * gates_d + b * 3 * H, *ub = u + d * u_d + b * H;                  \
                const T *hb = hin + d * hin_d + b * H;                                              \
                _Pragma("omp simd")                                                                 \
                for (int64_t k = 0; k < 2 * H; k++) g[k] = SIGMOID(g[k]);                           \
                _Pragma("omp simd")                                                                 \
                for (int64_t k = 0; k < H; k++) ub[k] = g[k] * hb[k];                               \
            }                                                                                       \
    }

/* Forward B, after gates_n = pre_n + u W_n^T: n = tanh(.) in place; h_t = n + z (h_{t-1} - n);
 * hm = h_t * mask (D, B, H) contiguous when mask is not NULL. */
#define GRU_RB_FORWARD_B(NAME, T, TANH)                                                             \
    void NAME(int64_t D, int64_t B, int64_t H, T *gates, int64_t gates_d, const T *h_prev, T *h,    \
              int64_t h_d, const T *mask, T *hm) {                                                  \
        for (int64_t d = 0; d < D; d++)                                                             \
            for (int64_t b = 0; b < B; b++) {                                                       \
                T *g = gates + d * gates_d + b * 3 * H;                                             \
                const T *pb = h_prev + d * h_d + b * H;                                             \
                T *hb = h + d * h_d + b * H;                                                        \
                _Pragma("omp simd")                                                                 \
                for (int64_t k = 0; k < H; k++) {                                                   \
                    T n = TANH(g[2 * H + k]);                                                       \
                    g[2 * H + k] = n;                                                               \
                    hb[k] = n + g[H + k] * (pb[k] - n);                                             \
                }                                                                                   \
                if (mask) ROW_MUL(hm + (d * B + b) * H, hb, mask + (d * B + b) * H, H);             \
            }                                                                                       \
    }

/* Backward C: carry = z_{t+1} dL/dh_{t+1} (the final state's gradient for the last step) becomes
 * dL/dh_t = carry + rec * mask + grad, with rec = dL/d(h_t m) through the two matmuls of step
 * t+1 (NULL for the last step) and grad = dL/dh_t from the output (or NULL). Writes the z and n
 * pre-activation gradients to da, and carry = z_t dL/dh_t. carry, rec, mask (D, B, H) contiguous. */
#define GRU_RB_BACKWARD_C(NAME, T)                                                                  \
    void NAME(int64_t D, int64_t B, int64_t H, const T *gates, int64_t gates_d, const T *h_prev,    \
              int64_t h_d, const T *rec, const T *mask, const T *grad, int64_t grad_d, T *carry,    \
              T *da, int64_t da_d) {                                                                \
        for (int64_t d = 0; d < D; d++)                                                             \
            for (int64_t b = 0; b < B; b++) {                                                       \
                const T *g = gates + d * gates_d + b * 3 * H, *pb = h_prev + d * h_d + b * H;       \
                int64_t row = (d * B + b) * H;                                                      \
                const T *rb = rec ? rec + row : NULL, *mk = mask ? mask + row : NULL;               \
                T *cb = carry + row, *dab = da + d * da_d + b * 3 * H;                              \
                if (rb) ROW_ADD_MUL(cb, rb, mk, H);                                                 \
                if (grad) ROW_ADD(cb, grad + d * grad_d + b * H, H);                                \
                _Pragma("omp simd")                                                                 \
                for (int64_t k = 0; k < H; k++) { /* cb[k] is dL/dh_t now */                        \
                    T z = g[H + k], n = g[2 * H + k], dh = cb[k];                                   \
                    dab[H + k] = dh * (pb[k] - n) * z * (1 - z);                                    \
                    dab[2 * H + k] = dh * (1 - z) * (1 - n * n);                                    \
                    cb[k] = dh * z;                                                                 \
                }                                                                                   \
            }                                                                                       \
    }

/* Backward D, after du = dL/du = da_n W_n (D, B, H) contiguous: the r pre-activation gradient
 * da_r = du hin r (1 - r), hin = h_{t-1} m; and rec = du r, the u-path part of dL/d(h_{t-1} m)
 * (the caller adds da_rz W_rz). */
#define GRU_RB_BACKWARD_D(NAME, T)                                                                  \
    void NAME(int64_t D, int64_t B, int64_t H, const T *gates, int64_t gates_d, const T *h_prev,    \
              int64_t h_d, const T *mask, const T *du, T *da, int64_t da_d, T *rec) {               \
        for (int64_t d = 0; d < D; d++)                                                             \
            for (int64_t b = 0; b < B; b++) {                                                       \
                const T *g = gates + d * gates_d + b * 3 * H, *pb = h_prev + d * h_d + b * H;       \
                int64_t row = (d * B + b) * H;                                                      \
                const T *dub = du + row, *mk = mask ? mask + row : NULL;                            \
                T *dab = da + d * da_d + b * 3 * H, *rb = rec + row;                                \
                _Pragma("omp simd")                                                                 \
                for (int64_t k = 0; k < H; k++) {                                                   \
                    T r = g[k], hin = mk ? pb[k] * mk[k] : pb[k];                                   \
                    dab[k] = dub[k] * hin * r * (1 - r);                                            \
                    rb[k] = dub[k] * r;                                                             \
                }                                                                                   \
            }                                                                                       \
    }

/* minLSTM over a whole sequence (see MinLSTMScan in scan.py): xp (T, B, 3H) = (k_f, k_i, k_h),
 * h0 (B, H), valid (T, B) bytes or NULL, h (T, B, H). With f = sigmoid(k_f), i = sigmoid(k_i):
 *   f' = f / (f + i),  i' = i / (f + i),  h_t = f' h_{t-1} + i' g(k_h)     (f' = 1, i' = 0 if padded)
 * computed as f' = Bs / (As + Bs), i' = As / (As + Bs) with As = e^-m (1 + e^-k_f),
 * Bs = e^-m (1 + e^-k_i), m = max(0, -k_f, -k_i): no exponent is positive, so nothing
 * overflows however negative k is. Rows split over threads. */
#define MINLSTM_GATES(T, EXP, kf, ki, on, fp, ip, ef, ei, as, bs)                                   \
    T m_ = (kf) < (ki) ? -(kf) : -(ki);                                                             \
    m_ = m_ > 0 ? m_ : 0;                                                                           \
    T e0_ = EXP(-m_), ef = EXP(-(kf) - m_), ei = EXP(-(ki) - m_);                                   \
    T as = e0_ + ef, bs = e0_ + ei, sum_ = as + bs;                                                 \
    T fp = (on) ? bs / sum_ : 1, ip = (on) ? as / sum_ : 0;

#define MINLSTM_FORWARD(NAME, T, SIGMOID, EXP)                                                      \
    void NAME(int64_t steps, int64_t B, int64_t H, const T *xp, const T *h0, const uint8_t *valid,  \
              T *h) {                                                                               \
        ROWS_BEGIN(B, steps * B * H)                                                                \
        for (int64_t t = 0; t < steps; t++)                                                         \
            for (int64_t b = b0; b < b1; b++) {                                                     \
                const T *x = xp + (t * B + b) * 3 * H;                                              \
                const T *pb = t > 0 ? h + ((t - 1) * B + b) * H : h0 + b * H;                       \
                T *hb = h + (t * B + b) * H;                                                        \
                int on = !valid || valid[t * B + b];                                                \
                _Pragma("omp simd")                                                                 \
                for (int64_t k = 0; k < H; k++) {                                                   \
                    MINLSTM_GATES(T, EXP, x[k], x[H + k], on, fp, ip, ef, ei, as, bs)               \
                    T kh = x[2 * H + k], g = kh >= 0 ? kh + (T)0.5 : SIGMOID(kh);                   \
                    hb[k] = fp * pb[k] + ip * g;                                                    \
                }                                                                                   \
            }                                                                                       \
        ROWS_END                                                                                    \
    }

/* Its backward, t = T-1 .. 0, with d = dL/dh_t in total = grad_h[t] + f'_{t+1} d_{t+1}:
 *   dL/d(log i - log f) = f' i' d (g - h_{t-1}),  dk_f = -(that) (1 - f),  dk_i = (that) (1 - i),
 *   dk_h = d i' g'(k_h);  1 - f = sigmoid(-k_f), 1 - i = sigmoid(-k_i) (not from As, Bs, which
 *   can both underflow to 0).
 * carry (B, H): dL/dh_{T-1} from the final state on entry, dL/dh0 on return; grad_h advances
 * grad_step elements a step (0: one row of zeros). dxp (T, B, 3H). */
#define MINLSTM_BACKWARD(NAME, T, SIGMOID, EXP)                                                     \
    void NAME(int64_t steps, int64_t B, int64_t H, const T *xp, const T *h0, const uint8_t *valid,  \
              const T *h, const T *grad_h, int64_t grad_step, T *dxp, T *carry) {                   \
        ROWS_BEGIN(B, steps * B * H)                                                                \
        for (int64_t t = steps - 1; t >= 0; t--) {                                                  \
            const T *prev = t > 0 ? h + (t - 1) * B * H : h0;                                       \
            for (int64_t b = b0; b < b1; b++) {                                                     \
                const T *x = xp + (t * B + b) * 3 * H, *pb = prev + b * H;                          \
                const T *gb = grad_h + t * grad_step + b * H;                                       \
                T *dx = dxp + (t * B + b) * 3 * H, *cb = carry + b * H;                             \
                int on = !valid || valid[t * B + b];                                                \
                _Pragma("omp simd")                                                                 \
                for (int64_t k = 0; k < H; k++) {                                                   \
                    MINLSTM_GATES(T, EXP, x[k], x[H + k], on, fp, ip, ef, ei, as, bs)               \
                    T kh = x[2 * H + k], s = SIGMOID(kh);                                           \
                    T g = kh >= 0 ? kh + (T)0.5 : s, dg = kh >= 0 ? (T)1 : s * (1 - s);             \
                    T d = gb[k] + cb[k], dd = fp * ip * d * (g - pb[k]);                            \
                    dx[k] = -dd * SIGMOID(-x[k]);                                                   \
                    dx[H + k] = dd * SIGMOID(-x[H + k]);                                            \
                    dx[2 * H + k] = d * ip * dg;                                                    \
                    cb[k] = fp * d;                                                                 \
                }                                                                                   \
            }                                                                                       \
        }                                                                                           \
        ROWS_END                                                                                    \
    }

/* Every kernel of this file for one element type: S the name suffix (also of the sigmoid_ and
 * tanh_ helpers), T the type, SQRT and EXP its square root and exponential. */
#define ALL_KERNELS(S, T, SQRT, EXP)                                                                    \
    LSTM_FORWARD(rnnkit_lstm_forward_##S, T, sigmoid_##S)                                           \
    LSTM_BACKWARD(rnnkit_lstm_backward_##S, T)                                                      \
    LSTM_LN_FORWARD(rnnkit_lstm_ln_forward_##S, T, sigmoid_##S, tanh_##S, SQRT)                     \
    LSTM_LN_BACKWARD(rnnkit_lstm_ln_backward_##S, T)                                                \
    GATE_NORM_FORWARD(rnnkit_gate_norm_forward_##S, T, SQRT)                                        \
    GATE_NORM_BACKWARD(rnnkit_gate_norm_backward_##S, T)                                            \
    GRU_SEQ_FORWARD(rnnkit_gru_seq_forward_##S, T, sigmoid_##S, tanh_##S, SQRT)                     \
    GRU_SEQ_BACKWARD(rnnkit_gru_seq_backward_##S, T)                                                \
    GRU_RB_SEQ_FORWARD(rnnkit_gru_rb_seq_forward_##S, T, sigmoid_##S, tanh_##S)                     \
    GRU_RB_SEQ_BACKWARD(rnnkit_gru_rb_seq_backward_##S, T)                                          \
    LSTM_SEQ_FORWARD(rnnkit_lstm_seq_forward_##S, T, sigmoid_##S, tanh_##S, SQRT)                   \
    LSTM_SEQ_BACKWARD(rnnkit_lstm_seq_backward_##S, T)                                              \
    RNN_SEQ_FORWARD(rnnkit_rnn_seq_forward_##S, T, tanh_##S)                                        \
    RNN_SEQ_BACKWARD(rnnkit_rnn_seq_backward_##S, T)                                                \
    GRU_FORWARD(rnnkit_gru_forward_##S, T, sigmoid_##S, tanh_##S)                                   \
    GRU_BACKWARD(rnnkit_gru_backward_##S, T)                                                        \
    GRU_RB_FORWARD_A(rnnkit_gru_rb_gates_##S, T, sigmoid_##S)                                       \
    GRU_RB_FORWARD_B(rnnkit_gru_rb_state_##S, T, tanh_##S)                                          \
    GRU_RB_BACKWARD_C(rnnkit_gru_rb_back_state_##S, T)                                              \
    GRU_RB_BACKWARD_D(rnnkit_gru_rb_back_gates_##S, T)                                              \
    MINGRU_FORWARD(rnnkit_mingru_forward_##S, T, sigmoid_##S)                                       \
    MINGRU_BACKWARD(rnnkit_mingru_backward_##S, T, sigmoid_##S)                                     \
    MINLSTM_FORWARD(rnnkit_minlstm_forward_##S, T, sigmoid_##S, EXP)                                \
    MINLSTM_BACKWARD(rnnkit_minlstm_backward_##S, T, sigmoid_##S, EXP)                              \
    MINGRU_X_FORWARD(rnnkit_mingru_x_forward_##S, T, sigmoid_##S)                                   \
    MINGRU_X_BACKWARD(rnnkit_mingru_x_backward_##S, T, sigmoid_##S)

ALL_KERNELS(f32, float, sqrtf, exp_f32)

/* The float64 kernels serve tests and float64 models, where exactness matters more than speed:
 * built at -O1, which halves the time the first use spends compiling this file. */
#pragma GCC push_options
#pragma GCC optimize("O1")
ALL_KERNELS(f64, double, sqrt, exp)
#pragma GCC pop_options

int rnnkit_native_abi(void) { return 22; }
