// CPU kernels of ddgan, plain C called through ctypes (see ops/cpu_library.py for why not a torch extension).
//
// adaptive_group_norm: y = act((x + bias - mean) * rstd * gamma + beta) per sample, GroupNorm's statistics
// over each group of channels and all pixels, in one read for the statistics and one read + write for the
// output, where PyTorch's eager path makes four passes over memory (bias add, GroupNorm, modulation, SiLU).
//
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

static inline float activate(float y, int act) { return act == ACT_SILU ? y / (1.0f + exp_vectorisable(-y)) : y; }

// Per-channel statistics of one sample and the per-channel (shift, scale) that normalise it:
// y = (x + shift[c]) * scale[c] + beta[c], shift = bias - mean, scale = rstd * gamma.
// `sum_pixels(c, shift, out)` adds sum_p (x[c, p] + shift[c])^k into out[c] for k = 1 or 2 (shift NULL: k = 1).
typedef struct {
    int64_t channels, pixels, groups;
    double* sums;  // [channels]
    float* shift;  // [channels]
    float* scale;  // [channels]
} SampleStats;

static void finish_stats(SampleStats* s, const float* gamma, const float* bias, int pass, float eps) {
    const int64_t per_group = s->channels / s->groups;
    const double count = (double)per_group * (double)s->pixels;
    for (int64_t g = 0; g < s->groups; ++g) {
        double total = 0.0;
        for (int64_t c = g * per_group; c < (g + 1) * per_group; ++c) total += s->sums[c];
        if (pass == 1) {  // the mean: the sums were of x alone, so add the bias's share
            for (int64_t c = g * per_group; c < (g + 1) * per_group; ++c)
                total += (bias ? (double)bias[c] : 0.0) * (double)s->pixels;
            const double mean = total / count;
            for (int64_t c = g * per_group; c < (g + 1) * per_group; ++c)
                s->shift[c] = (float)((bias ? (double)bias[c] : 0.0) - mean);
        } else {  // the variance, of the centred values
            const double rstd = 1.0 / sqrt(total / count + (double)eps);
            for (int64_t c = g * per_group; c < (g + 1) * per_group; ++c) s->scale[c] = (float)(rstd * gamma[c]);
        }
    }
}

// One kernel per (storage type, layout): the macros keep the loads and stores inline so that loops vectorise.
#define DEFINE_SAMPLE_KERNELS(NAME, T, LOAD, STORE)                                                           \
    static void NAME##_channels_last(const T* x, T* out, const float* gamma, const float* beta,               \
                                     const float* bias, SampleStats* s, float eps, int act) {                 \
        const int64_t C = s->channels, P = s->pixels;                                                         \
        float partial[C];                                                                                     \
        for (int pass = 1; pass <= 2; ++pass) {                                                               \
            memset(s->sums, 0, (size_t)C * sizeof(double));                                                   \
            for (int64_t start = 0; start < P; start += PIXEL_BLOCK) {                                        \
                const int64_t stop = start + PIXEL_BLOCK < P ? start + PIXEL_BLOCK : P;                       \
                memset(partial, 0, sizeof partial);                                                           \
                for (int64_t p = start; p < stop; ++p) {                                                      \
                    const T* row = x + p * C;                                                                 \
                    if (pass == 1) {                                                                          \
                        for (int64_t c = 0; c < C; ++c) partial[c] += LOAD(row[c]);                           \
                    } else {                                                                                  \
                        for (int64_t c = 0; c < C; ++c) {                                                     \
                            const float d = LOAD(row[c]) + s->shift[c];                                       \
                            partial[c] += d * d;                                                              \
                        }                                                                                     \
                    }                                                                                         \
                }                                                                                             \
                for (int64_t c = 0; c < C; ++c) s->sums[c] += partial[c];                                     \
            }                                                                                                 \
            finish_stats(s, gamma, bias, pass, eps);                                                          \
        }                                                                                                     \
        const float* shift = s->shift;                                                                        \
        const float* scale = s->scale;                                                                        \
        for (int64_t p = 0; p < P; ++p) {                                                                     \
            const T* row = x + p * C;                                                                         \
            T* out_row = out + p * C;                                                                         \
            for (int64_t c = 0; c < C; ++c)                                                                   \
                out_row[c] = STORE(activate(fmaf(LOAD(row[c]) + shift[c], scale[c], beta[c]), act));          \
        }                                                                                                     \
    }                                                                                                         \
                                                                                                              \
    static void NAME##_channels_first(const T* x, T* out, const float* gamma, const float* beta,              \
                                      const float* bias, SampleStats* s, float eps, int act) {                \
        const int64_t C = s->channels, P = s->pixels;                                                         \
        for (int pass = 1; pass <= 2; ++pass) {                                                               \
            for (int64_t c = 0; c < C; ++c) {                                                                 \
                const T* plane = x + c * P;                                                                   \
                const float shift = pass == 1 ? 0.0f : s->shift[c];                                           \
                double total = 0.0;                                                                           \
                for (int64_t start = 0; start < P; start += PIXEL_BLOCK) {                                    \
                    const int64_t stop = start + PIXEL_BLOCK < P ? start + PIXEL_BLOCK : P;                   \
                    float lanes[LANES] = {0};                                                                 \
                    int64_t p = start;                                                                        \
                    for (; p + LANES <= stop; p += LANES)                                                     \
                        for (int j = 0; j < LANES; ++j) {                                                     \
                            const float d = LOAD(plane[p + j]) + shift;                                       \
                            lanes[j] += pass == 1 ? d : d * d;                                                \
                        }                                                                                     \
                    for (int j = 0; p + j < stop; ++j) {                                                      \
                        const float d = LOAD(plane[p + j]) + shift;                                           \
                        lanes[j] += pass == 1 ? d : d * d;                                                    \
                    }                                                                                         \
                    for (int j = 0; j < LANES; ++j) total += lanes[j];                                        \
                }                                                                                             \
                s->sums[c] = total;                                                                           \
            }                                                                                                 \
            finish_stats(s, gamma, bias, pass, eps);                                                          \
        }                                                                                                     \
        for (int64_t c = 0; c < C; ++c) {                                                                     \
            const T* plane = x + c * P;                                                                       \
            T* out_plane = out + c * P;                                                                       \
            const float shift = s->shift[c], scale = s->scale[c], offset = beta[c];                           \
            for (int64_t p = 0; p < P; ++p)                                                                   \
                out_plane[p] = STORE(activate(fmaf(LOAD(plane[p]) + shift, scale, offset), act));             \
        }                                                                                                     \
    }

#define LOAD_FLOAT(v) (v)
#define STORE_FLOAT(v) (v)
DEFINE_SAMPLE_KERNELS(float32, float, LOAD_FLOAT, STORE_FLOAT)
DEFINE_SAMPLE_KERNELS(bfloat16, uint16_t, bf16_to_float, float_to_bf16)

// x, out: [batch, channels, pixels] (channels_last = 0) or [batch, pixels, channels] (1), of `dtype`;
// gamma, beta: [batch, channels] float32; bias: the same or NULL. Returns OK, BAD_ARGUMENT or OUT_OF_MEMORY.
int ddgan_adaptive_group_norm(const void* x, void* out, int dtype, int channels_last, const float* gamma,
                              const float* beta, const float* bias, int64_t batch, int64_t channels,
                              int64_t pixels, int64_t groups, float eps, int act, int threads) {
    if (batch < 0 || channels < 1 || pixels < 1 || groups < 1 || channels % groups != 0 || threads < 1 ||
        (dtype != DTYPE_FLOAT32 && dtype != DTYPE_BFLOAT16) || (act != ACT_LINEAR && act != ACT_SILU))
        return BAD_ARGUMENT;
    const size_t element = dtype == DTYPE_FLOAT32 ? sizeof(float) : sizeof(uint16_t);
    const int64_t sample = channels * pixels;
    int failed = 0;
#pragma omp parallel for schedule(static) num_threads(threads) reduction(| : failed)
    for (int64_t n = 0; n < batch; ++n) {
        SampleStats s = {channels, pixels, groups, malloc((size_t)channels * sizeof(double)),
                         malloc((size_t)channels * sizeof(float)), malloc((size_t)channels * sizeof(float))};
        if (!s.sums || !s.shift || !s.scale) {
            failed = 1;
        } else {
            const char* x_n = (const char*)x + (size_t)(n * sample) * element;
            char* out_n = (char*)out + (size_t)(n * sample) * element;
            const float* gamma_n = gamma + n * channels;
            const float* beta_n = beta + n * channels;
            const float* bias_n = bias ? bias + n * channels : NULL;
            if (dtype == DTYPE_FLOAT32 && channels_last)
                float32_channels_last((const float*)x_n, (float*)out_n, gamma_n, beta_n, bias_n, &s, eps, act);
            else if (dtype == DTYPE_FLOAT32)
                float32_channels_first((const float*)x_n, (float*)out_n, gamma_n, beta_n, bias_n, &s, eps, act);
            else if (channels_last)
                bfloat16_channels_last((const uint16_t*)x_n, (uint16_t*)out_n, gamma_n, beta_n, bias_n, &s, eps,
                                       act);
            else
                bfloat16_channels_first((const uint16_t*)x_n, (uint16_t*)out_n, gamma_n, beta_n, bias_n, &s, eps,
                                        act);
        }
        free(s.sums);
        free(s.shift);
        free(s.scale);
    }
    return failed ? OUT_OF_MEMORY : OK;
}
