// CPU kernels of ddgan, plain C called through ctypes (see ops/cpu_library.py for why not a torch extension).
//
// adaptive_group_norm: y = act((x + bias - mean) * rstd * gamma + beta) per sample, GroupNorm's statistics
// over each group of channels and all pixels, in one read for the statistics and one read + write for the
// output, where PyTorch's eager path makes four passes over memory (bias add, GroupNorm, modulation, SiLU).
//
// Its backward reads x and dy twice and writes dx once, with the per-sample gradients of gamma, beta and bias.
// Each sample is computed by one thread in one fixed order, so its result is the same whatever the batch
// size and the number of threads: a seed's image does not depend on them.
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

enum { DTYPE_FLOAT32 = 0, DTYPE_BFLOAT16 = 1 };
enum { ACT_LINEAR = 0, ACT_SILU = 1 };
enum { OK = 0, BAD_ARGUMENT = 1, OUT_OF_MEMORY = 2 };

// Partial sums run in float (so they vectorise) over blocks of this many pixels, then go into doubles.
#define PIXEL_BLOCK 256
// A sum along contiguous memory keeps this many partial sums: float addition is not associative, so the
// compiler vectorises a reduction only when the code spells out the lanes.
#define LANES 16

static inline float bf16_to_float(uint16_t value) {
    uint32_t bits = (uint32_t)value << 16;
    float result;
    memcpy(&result, &bits, sizeof result);
    return result;
}

// Round to nearest even, as torch does; NaN stays NaN. Written without branches so that loops vectorise.
static inline uint16_t float_to_bf16(float value) {
    uint32_t bits;
    memcpy(&bits, &value, sizeof bits);
    uint32_t rounded = (bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16;
    return (uint16_t)(((bits & 0x7fffffffu) > 0x7f800000u) ? ((bits >> 16) | 0x40u) : rounded);
}

// exp(x) to about one float ulp: 2^k * e^r with |r| <= ln(2) / 2 and e^r by its degree-6 Taylor polynomial
// (remainder below r^7 / 7! = 1.2e-7). libm's expf would not vectorise; this does. Comparisons instead of
// fminf/fmaxf for the same reason, and a NaN passes through them.
static inline float exp_vectorisable(float x) {
    x = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x);
    float k = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;  // round to nearest: 1.5 * 2^23 trick
    float r = fmaf(k, -0.693145751953125f, x);                          // ln 2 split in two: k * high is exact
    r = fmaf(k, -1.428606765330187e-06f, r);
    float p = 1.0f / 720;
    p = fmaf(p, r, 1.0f / 120);
    p = fmaf(p, r, 1.0f / 24);
    p = fmaf(p, r, 1.0f / 6);
    p = fmaf(p, r, 0.5f);
    p = fmaf(p, r * r, r) + 1.0f;
    int32_t exponent = ((int32_t)k + 127) << 23;
    float scale;
    memcpy(&scale, &exponent, sizeof scale);
    return p * scale;
}

static inline float activate(float u, int act) { return act == ACT_SILU ? u / (1.0f + exp_vectorisable(-u)) : u; }

// d act(u) / du: SiLU's is s (1 + u (1 - s)) with s = sigmoid(u).
static inline float activation_slope(float u, int act) {
    if (act != ACT_SILU) return 1.0f;
    const float s = 1.0f / (1.0f + exp_vectorisable(-u));
    return s * (1.0f + u * (1.0f - s));
}

// One sample's working memory, per channel c of group g. Forward: y = act((x + shift) * scale + beta) with
// shift = bias - mean_g, scale = rstd_g * gamma. Backward: xhat = (x + shift) * rstd, du = dy * act'(u).
typedef struct {
    int64_t channels, pixels, groups;
    double* sums;    // forward: the current pass's sums; backward: dbeta = sum_p du
    double* sums_2;  // backward: dgamma = sum_p du * xhat
    double* sums_3;  // backward: dbias = sum_p dx
    float* shift;
    float* rstd;
    float* scale;
    float* a;  // backward: the group's mean of gamma du, spread over its channels
    float* b;  // backward: the group's mean of gamma du xhat
} Sample;

static int sample_alloc(Sample* s, int64_t channels, int64_t pixels, int64_t groups) {
    const size_t doubles = (size_t)channels * sizeof(double), floats = (size_t)channels * sizeof(float);
    *s = (Sample){channels,       pixels,         groups,         malloc(doubles), malloc(doubles), malloc(doubles),
                  malloc(floats), malloc(floats), malloc(floats), malloc(floats),  malloc(floats)};
    return s->sums && s->sums_2 && s->sums_3 && s->shift && s->rstd && s->scale && s->a && s->b;
}

static void sample_free(Sample* s) {
    free(s->sums), free(s->sums_2), free(s->sums_3), free(s->shift), free(s->rstd), free(s->scale), free(s->a),
        free(s->b);
}

// After pass 1 (sums of x) the mean, after pass 2 (sums of (x + shift)^2) the variance: shift, rstd and scale
// per channel, and the group's mean and rstd into mean_out / rstd_out where given (for the backward).
static void finish_stats(Sample* s, const float* gamma, const float* bias, int pass, float eps, float* mean_out,
                         float* rstd_out) {
    const int64_t per_group = s->channels / s->groups;
    const double count = (double)per_group * (double)s->pixels;
    for (int64_t g = 0; g < s->groups; ++g) {
        double total = 0.0;
        for (int64_t c = g * per_group; c < (g + 1) * per_group; ++c)
            total += s->sums[c] + (pass == 1 && bias ? (double)bias[c] * (double)s->pixels : 0.0);
        if (pass == 1) {
            const double mean = total / count;
            for (int64_t c = g * per_group; c < (g + 1) * per_group; ++c)
                s->shift[c] = (float)((bias ? (double)bias[c] : 0.0) - mean);
            if (mean_out) mean_out[g] = (float)mean;
        } else {
            const double rstd = 1.0 / sqrt(total / count + (double)eps);
            for (int64_t c = g * per_group; c < (g + 1) * per_group; ++c) {
                s->rstd[c] = (float)rstd;
                s->scale[c] = (float)(rstd * gamma[c]);
            }
            if (rstd_out) rstd_out[g] = (float)rstd;
        }
    }
}

// The backward's shift and rstd per channel, from the forward's saved group statistics.
static void load_stats(Sample* s, const float* bias, const float* mean, const float* rstd) {
    const int64_t per_group = s->channels / s->groups;
    for (int64_t c = 0; c < s->channels; ++c) {
        s->shift[c] = (bias ? bias[c] : 0.0f) - mean[c / per_group];
        s->rstd[c] = rstd[c / per_group];
    }
}

// GroupNorm's backward: dx = rstd * (gamma du - a_g - xhat b_g), a_g and b_g the group's means of gamma du
// and gamma du xhat, which dbeta and dgamma give per channel.
static void finish_backward_terms(Sample* s, const float* gamma) {
    const int64_t per_group = s->channels / s->groups;
    const double count = (double)per_group * (double)s->pixels;
    for (int64_t g = 0; g < s->groups; ++g) {
        double a = 0.0, b = 0.0;
        for (int64_t c = g * per_group; c < (g + 1) * per_group; ++c) {
            a += gamma[c] * s->sums[c];
            b += gamma[c] * s->sums_2[c];
        }
        for (int64_t c = g * per_group; c < (g + 1) * per_group; ++c) {
            s->a[c] = (float)(a / count);
            s->b[c] = (float)(b / count);
        }
    }
}

#define BLOCK_END(start, P) ((start) + PIXEL_BLOCK < (P) ? (start) + PIXEL_BLOCK : (P))

// One set of kernels per storage type; the macros keep loads and stores inline so that loops vectorise.
// NHWC walks pixels with a row of partial sums per channel; NCHW walks each channel's plane with LANES
// partial sums. Partial sums are float over PIXEL_BLOCK pixels, then go into doubles. The backward is NHWC
// only: in NCHW it measured slower than PyTorch's GroupNorm (BENCHMARKS.md).
#define DEFINE_KERNELS(NAME, T, LOAD, STORE)                                                                      \
    static void NAME##_forward_nhwc(const T* x, T* out, const float* gamma, const float* beta, const float* bias, \
                                    Sample* s, float eps, int act, float* mean_out, float* rstd_out) {            \
        const int64_t C = s->channels, P = s->pixels;                                                             \
        float partial[C];                                                                                         \
        for (int pass = 1; pass <= 2; ++pass) {                                                                   \
            memset(s->sums, 0, (size_t)C * sizeof(double));                                                       \
            for (int64_t start = 0; start < P; start += PIXEL_BLOCK) {                                            \
                memset(partial, 0, sizeof partial);                                                               \
                for (int64_t p = start; p < BLOCK_END(start, P); ++p) {                                           \
                    const T* row = x + p * C;                                                                     \
                    if (pass == 1) {                                                                              \
                        for (int64_t c = 0; c < C; ++c) partial[c] += LOAD(row[c]);                               \
                    } else {                                                                                      \
                        for (int64_t c = 0; c < C; ++c) {                                                         \
                            const float d = LOAD(row[c]) + s->shift[c];                                           \
                            partial[c] += d * d;                                                                  \
                        }                                                                                         \
                    }                                                                                             \
                }                                                                                                 \
                for (int64_t c = 0; c < C; ++c) s->sums[c] += partial[c];                                         \
            }                                                                                                     \
            finish_stats(s, gamma, bias, pass, eps, mean_out, rstd_out);                                          \
        }                                                                                                         \
        const float *shift = s->shift, *scale = s->scale;                                                         \
        for (int64_t p = 0; p < P; ++p) {                                                                         \
            const T* row = x + p * C;                                                                             \
            T* out_row = out + p * C;                                                                             \
            for (int64_t c = 0; c < C; ++c)                                                                       \
                out_row[c] = STORE(activate(fmaf(LOAD(row[c]) + shift[c], scale[c], beta[c]), act));              \
        }                                                                                                         \
    }                                                                                                             \
                                                                                                                  \
    static void NAME##_forward_nchw(const T* x, T* out, const float* gamma, const float* beta, const float* bias, \
                                    Sample* s, float eps, int act, float* mean_out, float* rstd_out) {            \
        const int64_t C = s->channels, P = s->pixels;                                                             \
        for (int pass = 1; pass <= 2; ++pass) {                                                                   \
            for (int64_t c = 0; c < C; ++c) {                                                                     \
                const T* plane = x + c * P;                                                                       \
                const float shift = pass == 1 ? 0.0f : s->shift[c];                                               \
                double total = 0.0;                                                                               \
                for (int64_t start = 0; start < P; start += PIXEL_BLOCK) {                                        \
                    const int64_t stop = BLOCK_END(start, P);                                                     \
                    float lanes[LANES] = {0};                                                                     \
                    int64_t p = start;                                                                            \
                    for (; p + LANES <= stop; p += LANES)                                                         \
                        for (int j = 0; j < LANES; ++j) {                                                         \
                            const float d = LOAD(plane[p + j]) + shift;                                           \
                            lanes[j] += pass == 1 ? d : d * d;                                                    \
                        }                                                                                         \
                    for (int j = 0; p + j < stop; ++j) {                                                          \
                        const float d = LOAD(plane[p + j]) + shift;                                               \
                        lanes[j] += pass == 1 ? d : d * d;                                                        \
                    }                                                                                             \
                    for (int j = 0; j < LANES; ++j) total += lanes[j];                                            \
                }                                                                                                 \
                s->sums[c] = total;                                                                               \
            }                                                                                                     \
            finish_stats(s, gamma, bias, pass, eps, mean_out, rstd_out);                                          \
        }                                                                                                         \
        for (int64_t c = 0; c < C; ++c) {                                                                         \
            const T* plane = x + c * P;                                                                           \
            T* out_plane = out + c * P;                                                                           \
            const float shift = s->shift[c], scale = s->scale[c], offset = beta[c];                               \
            for (int64_t p = 0; p < P; ++p)                                                                       \
                out_plane[p] = STORE(activate(fmaf(LOAD(plane[p]) + shift, scale, offset), act));                 \
        }                                                                                                         \
    }                                                                                                             \
                                                                                                                  \
    static void NAME##_backward_nhwc(const T* x, const T* dy, T* dx, const float* gamma, const float* beta,       \
                                     Sample* s, int act) {                                                        \
        const int64_t C = s->channels, P = s->pixels;                                                             \
        const float *shift = s->shift, *rstd = s->rstd;                                                           \
        float partial[C], partial_2[C];                                                                           \
        memset(s->sums, 0, (size_t)C * sizeof(double));                                                           \
        memset(s->sums_2, 0, (size_t)C * sizeof(double));                                                         \
        for (int64_t start = 0; start < P; start += PIXEL_BLOCK) { /* dbeta, dgamma */                            \
            memset(partial, 0, sizeof partial);                                                                   \
            memset(partial_2, 0, sizeof partial_2);                                                               \
            for (int64_t p = start; p < BLOCK_END(start, P); ++p) {                                               \
                const T *x_row = x + p * C, *dy_row = dy + p * C;                                                 \
                for (int64_t c = 0; c < C; ++c) {                                                                 \
                    const float xhat = (LOAD(x_row[c]) + shift[c]) * rstd[c];                                     \
                    const float du = LOAD(dy_row[c]) * activation_slope(fmaf(xhat, gamma[c], beta[c]), act);      \
                    partial[c] += du;                                                                             \
                    partial_2[c] += du * xhat;                                                                    \
                }                                                                                                 \
            }                                                                                                     \
            for (int64_t c = 0; c < C; ++c) s->sums[c] += partial[c], s->sums_2[c] += partial_2[c];               \
        }                                                                                                         \
        finish_backward_terms(s, gamma);                                                                          \
        const float *a = s->a, *b = s->b;                                                                         \
        memset(s->sums_3, 0, (size_t)C * sizeof(double));                                                         \
        for (int64_t start = 0; start < P; start += PIXEL_BLOCK) { /* dx, dbias */                                \
            memset(partial, 0, sizeof partial);                                                                   \
            for (int64_t p = start; p < BLOCK_END(start, P); ++p) {                                               \
                const T *x_row = x + p * C, *dy_row = dy + p * C;                                                 \
                T* dx_row = dx + p * C;                                                                           \
                for (int64_t c = 0; c < C; ++c) {                                                                 \
                    const float xhat = (LOAD(x_row[c]) + shift[c]) * rstd[c];                                     \
                    const float du = LOAD(dy_row[c]) * activation_slope(fmaf(xhat, gamma[c], beta[c]), act);      \
                    const float d = rstd[c] * (gamma[c] * du - a[c] - xhat * b[c]);                               \
                    dx_row[c] = STORE(d);                                                                         \
                    partial[c] += d;                                                                              \
                }                                                                                                 \
            }                                                                                                     \
            for (int64_t c = 0; c < C; ++c) s->sums_3[c] += partial[c];                                           \
        }                                                                                                         \
    }

#define LOAD_FLOAT(v) (v)
#define STORE_FLOAT(v) (v)
DEFINE_KERNELS(float32, float, LOAD_FLOAT, STORE_FLOAT)
DEFINE_KERNELS(bfloat16, uint16_t, bf16_to_float, float_to_bf16)

// One call of either entry point: its arguments, and each sample's share of them.
typedef struct {
    const char *x, *dy;  // dy: the backward's only
    char *out;           // y, or dx
    int dtype, channels_last, act, backward;
    const float *gamma, *beta, *bias;  // [batch, channels]; bias may be NULL
    float *mean, *rstd;                // [batch, groups]: the forward writes them when given, the backward reads
    float *dgamma, *dbeta, *dbias;     // [batch, channels]: the backward's outputs (dbias NULL when bias is)
    float eps;
} Call;

static void run_sample(const Call* k, Sample* s, int64_t n) {
    const int64_t C = s->channels, offset = n * C * s->pixels * (k->dtype == DTYPE_FLOAT32 ? 4 : 2);
    const char *x = k->x + offset, *dy = k->backward ? k->dy + offset : NULL;
    char* out = k->out + offset;
    const float *gamma = k->gamma + n * C, *beta = k->beta + n * C, *bias = k->bias ? k->bias + n * C : NULL;
    float *mean = k->mean ? k->mean + n * s->groups : NULL, *rstd = k->rstd ? k->rstd + n * s->groups : NULL;
    if (!k->backward) {
#define FORWARD(KERNEL, T) KERNEL((const T*)x, (T*)out, gamma, beta, bias, s, k->eps, k->act, mean, rstd)
        if (k->dtype == DTYPE_FLOAT32)
            k->channels_last ? FORWARD(float32_forward_nhwc, float) : FORWARD(float32_forward_nchw, float);
        else
            k->channels_last ? FORWARD(bfloat16_forward_nhwc, uint16_t) : FORWARD(bfloat16_forward_nchw, uint16_t);
#undef FORWARD
        return;
    }
    load_stats(s, bias, mean, rstd);
    if (k->dtype == DTYPE_FLOAT32)
        float32_backward_nhwc((const float*)x, (const float*)dy, (float*)out, gamma, beta, s, k->act);
    else
        bfloat16_backward_nhwc((const uint16_t*)x, (const uint16_t*)dy, (uint16_t*)out, gamma, beta, s, k->act);
    for (int64_t c = 0; c < C; ++c) {
        k->dbeta[n * C + c] = (float)s->sums[c];
        k->dgamma[n * C + c] = (float)s->sums_2[c];
        if (k->dbias) k->dbias[n * C + c] = (float)s->sums_3[c];
    }
}

// Samples in parallel, each on one thread. Returns OK, BAD_ARGUMENT or OUT_OF_MEMORY.
static int run(const Call* k, int64_t batch, int64_t channels, int64_t pixels, int64_t groups, int threads) {
    if (batch < 0 || channels < 1 || pixels < 1 || groups < 1 || channels % groups != 0 || threads < 1 ||
        (k->dtype != DTYPE_FLOAT32 && k->dtype != DTYPE_BFLOAT16) || (k->act != ACT_LINEAR && k->act != ACT_SILU) ||
        (k->backward && (!k->channels_last || !k->mean || !k->rstd)))
        return BAD_ARGUMENT;
    int failed = 0;
#pragma omp parallel for schedule(static) num_threads(threads) reduction(| : failed)
    for (int64_t n = 0; n < batch; ++n) {
        Sample s;
        if (sample_alloc(&s, channels, pixels, groups))
            run_sample(k, &s, n);
        else
            failed = 1;
        sample_free(&s);
    }
    return failed ? OUT_OF_MEMORY : OK;
}

// x, out: [batch, channels, pixels] (channels_last = 0) or [batch, pixels, channels] (1), of `dtype`;
// gamma, beta: [batch, channels] float32; bias: the same or NULL; mean_out, rstd_out: [batch, groups] float32
// or NULL, the statistics for the backward. Returns OK, BAD_ARGUMENT or OUT_OF_MEMORY.
int ddgan_adaptive_group_norm(const void* x, void* out, int dtype, int channels_last, const float* gamma,
                              const float* beta, const float* bias, int64_t batch, int64_t channels,
                              int64_t pixels, int64_t groups, float eps, int act, int threads, float* mean_out,
                              float* rstd_out) {
    const Call call = {.x = x, .out = out, .dtype = dtype, .channels_last = channels_last, .act = act,
                       .gamma = gamma, .beta = beta, .bias = bias, .mean = mean_out, .rstd = rstd_out, .eps = eps};
    return run(&call, batch, channels, pixels, groups, threads);
}

// The gradients of ddgan_adaptive_group_norm for NHWC x (channels_last must be 1): dx like x from dy like x,
// and dgamma, dbeta, dbias [batch, channels] float32 (dbias NULL when bias is), from the forward's statistics.
int ddgan_adaptive_group_norm_backward(const void* x, const void* dy, void* dx, int dtype, int channels_last,
                                       const float* gamma, const float* beta, const float* bias, const float* mean,
                                       const float* rstd, float* dgamma, float* dbeta, float* dbias, int64_t batch,
                                       int64_t channels, int64_t pixels, int64_t groups, int act, int threads) {
    const Call call = {.x = x, .dy = dy, .out = dx, .dtype = dtype, .channels_last = channels_last, .act = act,
                       .backward = 1, .gamma = gamma, .beta = beta, .bias = bias, .mean = (float*)mean,
                       .rstd = (float*)rstd, .dgamma = dgamma, .dbeta = dbeta, .dbias = dbias};
    return run(&call, batch, channels, pixels, groups, threads);
}
