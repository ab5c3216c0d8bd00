// realm's CUDA kernels. NVRTC compiles this file when the backend starts, so
// it includes no CUDA headers: half conversions are single PTX instructions.
//
// Activations are f32 rows; weights stay in their GGUF type and are decoded
// 32 values at a time; the KV cache is f16, laid out [position][layer][width]
// per sequence so that it grows by appending.
//
// Every output value is reduced in an order fixed by its own row alone (never
// by how many rows share the launch), so a sequence's results do not depend
// on its company in a batch.

typedef unsigned char u8;
typedef signed char i8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long long u64;

__device__ __forceinline__ float f16_to_f32(u16 h) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
}

__device__ __forceinline__ u16 f32_to_f16(float f) {
    u16 h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
    return h;
}

__device__ __forceinline__ float half_at(const u8* p) { return f16_to_f32((u16)p[0] | ((u16)p[1] << 8)); }

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

// ---- Weight decoders: `load(row, sb, w)` writes values 32*sb .. 32*sb+32 of a
// row, as the CPU backend's reference dequantization computes them.

struct F32 {
    static __device__ void load(const u8* row, int sb, float* w) {
        const float* r = (const float*)row + sb * 32;
#pragma unroll
        for (int i = 0; i < 32; i++) w[i] = r[i];
    }
};

struct F16 {
    static __device__ void load(const u8* row, int sb, float* w) {
        const u16* r = (const u16*)row + sb * 32;
#pragma unroll
        for (int i = 0; i < 32; i++) w[i] = f16_to_f32(r[i]);
    }
};

struct BF16 {
    static __device__ void load(const u8* row, int sb, float* w) {
        const u16* r = (const u16*)row + sb * 32;
#pragma unroll
        for (int i = 0; i < 32; i++) w[i] = __uint_as_float(((u32)r[i]) << 16);
    }
};

struct Q4_0 {
    static __device__ void load(const u8* row, int sb, float* w) {
        const u8* b = row + sb * 18;
        float d = half_at(b);
#pragma unroll
        for (int j = 0; j < 16; j++) {
            u8 q = b[2 + j];
            w[j] = (float)((int)(q & 15) - 8) * d;
            w[j + 16] = (float)((int)(q >> 4) - 8) * d;
        }
    }
};

struct Q4_1 {
    static __device__ void load(const u8* row, int sb, float* w) {
        const u8* b = row + sb * 20;
        float d = half_at(b), m = half_at(b + 2);
#pragma unroll
        for (int j = 0; j < 16; j++) {
            u8 q = b[4 + j];
            w[j] = (float)(q & 15) * d + m;
            w[j + 16] = (float)(q >> 4) * d + m;
        }
    }
};

template <bool HAS_MIN>
struct Q5 {
    static __device__ void load(const u8* row, int sb, float* w) {
        const u8* b = row + sb * (HAS_MIN ? 24 : 22);
        float d = half_at(b), m = HAS_MIN ? half_at(b + 2) : 0.0f;
        const u8* rest = b + (HAS_MIN ? 4 : 2);
        u32 qh = (u32)rest[0] | ((u32)rest[1] << 8) | ((u32)rest[2] << 16) | ((u32)rest[3] << 24);
        int offset = HAS_MIN ? 0 : 16;
#pragma unroll
        for (int j = 0; j < 16; j++) {
            u8 q = rest[4 + j];
            u32 h0 = ((qh >> j) << 4) & 0x10;
            u32 h1 = (qh >> (j + 12)) & 0x10;
            w[j] = (float)((int)((q & 15) | h0) - offset) * d + m;
            w[j + 16] = (float)((int)((q >> 4) | h1) - offset) * d + m;
        }
    }
};

struct Q8_0 {
    static __device__ void load(const u8* row, int sb, float* w) {
        const u8* b = row + sb * 34;
        float d = half_at(b);
#pragma unroll
        for (int j = 0; j < 32; j++) w[j] = (float)(i8)b[2 + j] * d;
    }
};

// K-quants: 256-value super-blocks; sub-block `s` of 32 is `sb % 8`.

struct Q2_K {
    static __device__ void load(const u8* row, int sb, float* w) {
        const u8* b = row + (sb >> 3) * 84;
        int s = sb & 7, n = s >> 2, j = s & 3;
        float d = half_at(b + 80), dmin = half_at(b + 82);
        const u8* qs = b + 16 + 32 * n;
#pragma unroll
        for (int half = 0; half < 2; half++) {
            u8 sc = b[2 * s + half];
            float dl = d * (float)(sc & 15), ml = dmin * (float)(sc >> 4);
#pragma unroll
            for (int l = 0; l < 16; l++) {
                int q = (qs[16 * half + l] >> (2 * j)) & 3;
                w[16 * half + l] = dl * (float)q - ml;
            }
        }
    }
};

struct Q3_K {
    static __device__ void load(const u8* row, int sb, float* w) {
        const u8* b = row + (sb >> 3) * 110;
        int s = sb & 7, n = s >> 2, j = s & 3;
        const u8* hmask = b;
        const u8* qs = b + 32 + 32 * n;
        const u8* sc = b + 96;
        float d = half_at(b + 108);
#pragma unroll
        for (int half = 0; half < 2; half++) {
            int g = 2 * s + half, jj = g & 3, quarter = g >> 2;
            int low4 = (sc[jj + 4 * (quarter & 1)] >> (4 * (quarter >> 1))) & 15;
            int high2 = (sc[8 + jj] >> (2 * quarter)) & 3;
            float dl = d * (float)((low4 | (high2 << 4)) - 32);
#pragma unroll
            for (int l0 = 0; l0 < 16; l0++) {
                int l = 16 * half + l0;
                int low = (qs[l] >> (2 * j)) & 3;
                int missing = ((~hmask[l]) >> (4 * n + j)) & 1;
                w[l] = dl * (float)(low - 4 * missing);
            }
        }
    }
};

__device__ __forceinline__ void scale_min_k4(int s, const u8* q, int* sc, int* m) {
    if (s < 4) {
        *sc = q[s] & 63;
        *m = q[s + 4] & 63;
    } else {
        *sc = (q[s + 4] & 15) | ((q[s - 4] >> 6) << 4);
        *m = (q[s + 4] >> 4) | ((q[s] >> 6) << 4);
    }
}

template <bool FIFTH_BIT>
struct QK45 {
    static __device__ void load(const u8* row, int sb, float* w) {
        const u8* b = row + (sb >> 3) * (FIFTH_BIT ? 176 : 144);
        int s = sb & 7, j = s >> 1, hi = s & 1;
        int sc, m;
        scale_min_k4(s, b + 4, &sc, &m);
        float dl = half_at(b) * (float)sc, ml = half_at(b + 2) * (float)m;
        const u8* qh = b + 16;
        const u8* qs = b + (FIFTH_BIT ? 48 : 16) + 32 * j;
#pragma unroll
        for (int l = 0; l < 32; l++) {
            int q = hi ? (qs[l] >> 4) : (qs[l] & 15);
            if (FIFTH_BIT) q |= ((qh[l] >> (2 * j + hi)) & 1) << 4;
            w[l] = dl * (float)q - ml;
        }
    }
};

struct Q6_K {
    static __device__ void load(const u8* row, int sb, float* w) {
        const u8* b = row + (sb >> 3) * 210;
        int s = sb & 7, n = s >> 2, kk = s & 3;
        const u8* ql = b + 64 * n + (kk & 1) * 32;
        const u8* qh = b + 128 + 32 * n;
        float d = half_at(b + 208);
#pragma unroll
        for (int half = 0; half < 2; half++) {
            float dl = d * (float)(i8)b[192 + 2 * s + half];
#pragma unroll
            for (int l0 = 0; l0 < 16; l0++) {
                int l = 16 * half + l0;
                int nib = (kk >> 1) ? (ql[l] >> 4) : (ql[l] & 15);
                int q = (nib | (((qh[l] >> (2 * kk)) & 3) << 4)) - 32;
                w[l] = dl * (float)q;
            }
        }
    }
};

// ---- y[rows, n] = x[rows, k] . W[n, k]^T. One warp per weight row, eight
// input rows per block row; lane L takes sub-blocks L, L+32, ... of the weight
// row, so each value's sum runs in one order whatever the number of rows.

#define WARPS 4
// Warps of an attention block: each takes every ATTN_WARPS-th position, so
// that many loads of keys and values are in flight at once.
#define ATTN_WARPS 16

template <typename D, int TILE_ROWS>
__device__ void matmul(const u8* __restrict__ w, const float* __restrict__ x, float* __restrict__ y, int k, int n,
                       int rows, int row_bytes) {
    int lane = threadIdx.x & 31;
    int j = blockIdx.x * WARPS + (threadIdx.x >> 5);
    if (j >= n) return;
    int r0 = blockIdx.y * TILE_ROWS;
    int nr = min(TILE_ROWS, rows - r0);
    const u8* wr = w + (size_t)j * row_bytes;
    float acc[TILE_ROWS];
#pragma unroll
    for (int r = 0; r < TILE_ROWS; r++) acc[r] = 0.0f;
    for (int sb = lane; sb < (k >> 5); sb += 32) {
        float v[32];
        D::load(wr, sb, v);
#pragma unroll
        for (int r = 0; r < TILE_ROWS; r++) {
            if (r < nr) {
                const float4* xr = (const float4*)(x + (size_t)(r0 + r) * k + sb * 32);
                float s = 0.0f;
#pragma unroll
                for (int i = 0; i < 8; i++) {
                    float4 a = xr[i];
                    s = fmaf(v[4 * i], a.x, s);
                    s = fmaf(v[4 * i + 1], a.y, s);
                    s = fmaf(v[4 * i + 2], a.z, s);
                    s = fmaf(v[4 * i + 3], a.w, s);
                }
                acc[r] += s;
            }
        }
    }
#pragma unroll
    for (int r = 0; r < TILE_ROWS; r++) {
        float total = warp_sum(acc[r]);
        if (lane == 0 && r < nr) y[(size_t)(r0 + r) * n + j] = total;
    }
}

// Two tilings: 8 input rows per block row for decode-sized batches, 32 for
// large ones (fewer passes over the weights); the sums are the same.
#define MATMUL(name, D)                                                                                         \
    extern "C" __global__ void matmul_##name##_8(const u8* w, const float* x, float* y, int k, int n, int rows, \
                                                 int row_bytes) {                                               \
        matmul<D, 8>(w, x, y, k, n, rows, row_bytes);                                                           \
    }                                                                                                           \
    extern "C" __global__ void matmul_##name##_32(const u8* w, const float* x, float* y, int k, int n,          \
                                                  int rows, int row_bytes) {                                    \
        matmul<D, 32>(w, x, y, k, n, rows, row_bytes);                                                          \
    }

MATMUL(f32, F32)
MATMUL(f16, F16)
MATMUL(bf16, BF16)
MATMUL(q4_0, Q4_0)
MATMUL(q4_1, Q4_1)
MATMUL(q5_0, Q5<false>)
MATMUL(q5_1, Q5<true>)
MATMUL(q8_0, Q8_0)
MATMUL(q2_k, Q2_K)
MATMUL(q3_k, Q3_K)
MATMUL(q4_k, QK45<false>)
MATMUL(q5_k, QK45<true>)
MATMUL(q6_k, Q6_K)

// ---- Activations rounded as the CPU backend (and llama.cpp) quantizes them
// for a weight type, kept as f32: the matmul then sums what the integer dot
// products sum. One warp per block of values.
//  1: q8_0 blocks of 32: d = f16(amax / 127), q = rint(x * 127 / amax).
//  2: q8_K blocks of 256: max = the first value of largest magnitude,
//     iscale = -127 / max, q = min(127, rint(iscale * x)), d = 1 / iscale.
//  3: f16.  4: bf16 (round to nearest even).
extern "C" __global__ void round_activations(const float* x, float* y, int n, int mode) {
    int lane = threadIdx.x & 31;
    size_t warp = (size_t)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (mode == 2) {
        size_t base = warp * 256;
        if (base >= (size_t)n) return;
        float v[8];
        float amax = 0.0f, mx = 0.0f;
        int at = 1 << 30;
#pragma unroll
        for (int i = 0; i < 8; i++) {
            v[i] = x[base + lane + 32 * i];
            float a = fabsf(v[i]);
            if (a > amax) {
                amax = a;
                mx = v[i];
                at = lane + 32 * i;
            }
        }
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) {
            float a2 = __shfl_xor_sync(0xffffffffu, amax, o);
            float m2 = __shfl_xor_sync(0xffffffffu, mx, o);
            int at2 = __shfl_xor_sync(0xffffffffu, at, o);
            if (a2 > amax || (a2 == amax && at2 < at)) {
                amax = a2;
                mx = m2;
                at = at2;
            }
        }
        float iscale = amax != 0.0f ? -127.0f / mx : 0.0f;
        float d = amax != 0.0f ? 1.0f / iscale : 0.0f;
#pragma unroll
        for (int i = 0; i < 8; i++) y[base + lane + 32 * i] = fminf(127.0f, rintf(iscale * v[i])) * d;
    } else {
        size_t i = warp * 32 + lane;
        if (warp * 32 >= (size_t)n) return;
        float v = x[i];
        if (mode == 1) {
            float amax = fabsf(v);
#pragma unroll
            for (int o = 16; o > 0; o >>= 1) amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, o));
            float id = amax != 0.0f ? 127.0f / amax : 0.0f;
            y[i] = rintf(v * id) * f16_to_f32(f32_to_f16(amax / 127.0f));
        } else if (mode == 3) {
            y[i] = f16_to_f32(f32_to_f16(v));
        } else {
            u32 bits = __float_as_uint(v);
            bits = (bits + 0x7fffu + ((bits >> 16) & 1u)) & 0xffff0000u;
            y[i] = __uint_as_float(bits);
        }
    }
}

// ---- Row-wise ops.

// One block per group of `group` values; the sum of squares in f64 as the CPU
// backend takes it.
extern "C" __global__ void rms_norm(const float* x, float* y, const float* weight, int group, float eps) {
    __shared__ double partial[32];
    const float* xs = x + (size_t)blockIdx.x * group;
    float* ys = y + (size_t)blockIdx.x * group;
    double s = 0.0;
    for (int i = threadIdx.x; i < group; i += blockDim.x) s += (double)(xs[i] * xs[i]);
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
    if ((threadIdx.x & 31) == 0) partial[threadIdx.x >> 5] = s;
    __syncthreads();
    if (threadIdx.x == 0) {
        double total = 0.0;
        for (int i = 0; i < (int)(blockDim.x >> 5); i++) total += partial[i];
        partial[0] = total;
    }
    __syncthreads();
    float scale = 1.0f / sqrtf((float)(partial[0] / group) + eps);
    for (int i = threadIdx.x; i < group; i += blockDim.x)
        ys[i] = weight ? xs[i] * scale * weight[i] : xs[i] * scale;
}

extern "C" __global__ void add(const float* a, const float* b, float* y, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] = a[i] + b[i];
}

extern "C" __global__ void mul(const float* a, const float* b, float* y, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] = a[i] * b[i];
}

extern "C" __global__ void scale(const float* a, float* y, float f, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] = a[i] * f;
}

extern "C" __global__ void add_row(const float* a, const float* row, float* y, int cols, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] = a[i] + row[i % cols];
}

extern "C" __global__ void swiglu(const float* gate, const float* up, float* y, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) {
        float g = gate[i];
        y[i] = g / (1.0f + expf(-g)) * up[i];
    }
}

// GELU (tanh form) through f16 as ggml's table does: f16(gelu(f16(x))).
extern "C" __global__ void geglu(const float* gate, const float* up, float* y, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) {
        float x = gate[i], g;
        if (x <= -10.0f) {
            g = 0.0f;
        } else if (x >= 10.0f) {
            g = x;
        } else {
            float h = f16_to_f32(f32_to_f16(x));
            float inner = fmaf(0.044715f * h, h, 1.0f);
            g = f16_to_f32(f32_to_f16(0.5f * h * (1.0f + tanhf(0.7978846f * h * inner))));
        }
        y[i] = g * up[i];
    }
}

// RoPE over every head of a row: one block per row; `theta_scale` is
// base^(-2 / rotary_dims), pair i turns by pos * freq_scale * theta_scale^i.
extern "C" __global__ void rope(const float* x, float* y, const int* pos, int cols, int head_dim, int rotary_dims,
                                float theta_scale, float freq_scale, int neox) {
    const float* xr = x + (size_t)blockIdx.x * cols;
    float* yr = y + (size_t)blockIdx.x * cols;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) yr[c] = xr[c];
    __syncthreads();
    int half = rotary_dims / 2, pairs = (cols / head_dim) * half;
    float p = (float)pos[blockIdx.x];
    for (int t = threadIdx.x; t < pairs; t += blockDim.x) {
        int head = t / half, i = t % half;
        int a = head * head_dim + (neox ? i : 2 * i);
        int b = head * head_dim + (neox ? i + half : 2 * i + 1);
        float angle = p * powf(theta_scale, (float)i) * freq_scale;
        float sn, cs;
        sincosf(angle, &sn, &cs);
        float x0 = xr[a], x1 = xr[b];
        yr[a] = fmaf(x0, cs, -(x1 * sn));
        yr[b] = fmaf(x0, sn, x1 * cs);
    }
}

// Row `i` of y is row `index[i]` of x.
extern "C" __global__ void gather_rows(const float* x, float* y, const int* index, int cols) {
    const float* xr = x + (size_t)index[blockIdx.x] * cols;
    float* yr = y + (size_t)blockIdx.x * cols;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) yr[c] = xr[c];
}

// ---- The KV cache. Each row carries its sequence's key and value stores and
// its position; a store holds [position][layers][width] f16 values.

extern "C" __global__ void kv_append(const float* k, const float* v, const u64* keys, const u64* values,
                                     const int* pos, int layers, int layer, int width) {
    int row = blockIdx.x;
    size_t at = ((size_t)pos[row] * layers + layer) * width;
    u16* kd = (u16*)keys[row] + at;
    u16* vd = (u16*)values[row] + at;
    for (int c = threadIdx.x; c < width; c += blockDim.x) {
        kd[c] = f32_to_f16(k[(size_t)row * width + c]);
        vd[c] = f32_to_f16(v[(size_t)row * width + c]);
    }
}

// Attention of one query row and head (block (row, head), ATTN_WARPS warps) over
// its sequence's positions lo..=pos, lo = pos + 1 - window for a sliding
// window, rounded where llama.cpp rounds (the query and the softmax weights to
// f16, as its f16 KV products take them). Three passes over the keys, each
// warp taking every ATTN_WARPS-th position: the maximum score, the sum of the
// exponentials (in f64), then the weighted values. head_dim <= 256 and a
// multiple of 32.
extern "C" __global__ void attention(const float* q, float* out, const u64* keys, const u64* values, const int* pos,
                                     int layers, int layer, int n_head, int n_kv_head, int head_dim, float scale,
                                     int window) {
    __shared__ float part_max[ATTN_WARPS];
    __shared__ double part_sum[ATTN_WARPS];
    __shared__ float part_acc[ATTN_WARPS][256];
    int row = blockIdx.x, h = blockIdx.y;
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int per_lane = head_dim >> 5;
    int kvh = h / (n_head / n_kv_head);
    int width = n_kv_head * head_dim;
    size_t stride = (size_t)layers * width;
    const u16* kbase = (const u16*)keys[row] + (size_t)layer * width + kvh * head_dim;
    const u16* vbase = (const u16*)values[row] + (size_t)layer * width + kvh * head_dim;
    int p = pos[row];
    int lo = window > 0 ? max(0, p + 1 - window) : 0;
    const float* qr = q + (size_t)row * n_head * head_dim + h * head_dim;
    float qv[8], acc[8];
#pragma unroll
    for (int i = 0; i < 8; i++) {
        qv[i] = i < per_lane ? f16_to_f32(f32_to_f16(qr[lane + 32 * i])) : 0.0f;
        acc[i] = 0.0f;
    }
    auto score = [&](int t) {
        const u16* kt = kbase + (size_t)t * stride;
        float s = 0.0f;
#pragma unroll
        for (int i = 0; i < 8; i++)
            if (i < per_lane) s = fmaf(qv[i], f16_to_f32(kt[lane + 32 * i]), s);
        return warp_sum(s) * scale;
    };
    float m = __int_as_float(0xff800000);  // -inf
    for (int t = lo + warp; t <= p; t += ATTN_WARPS) m = fmaxf(m, score(t));
    if (lane == 0) part_max[warp] = m;
    __syncthreads();
    float mx = part_max[0];
    for (int w = 1; w < ATTN_WARPS; w++) mx = fmaxf(mx, part_max[w]);
    double l = 0.0;
    for (int t = lo + warp; t <= p; t += ATTN_WARPS) l += (double)expf(score(t) - mx);
    if (lane == 0) part_sum[warp] = l;
    __syncthreads();
    double total = 0.0;
    for (int w = 0; w < ATTN_WARPS; w++) total += part_sum[w];
    float inv = (float)(1.0 / total);
    for (int t = lo + warp; t <= p; t += ATTN_WARPS) {
        float weight = f16_to_f32(f32_to_f16(expf(score(t) - mx) * inv));
        const u16* vt = vbase + (size_t)t * stride;
#pragma unroll
        for (int i = 0; i < 8; i++)
            if (i < per_lane) acc[i] = fmaf(weight, f16_to_f32(vt[lane + 32 * i]), acc[i]);
    }
#pragma unroll
    for (int i = 0; i < 8; i++)
        if (i < per_lane) part_acc[warp][lane + 32 * i] = acc[i];
    __syncthreads();
    float* o = out + (size_t)row * n_head * head_dim + h * head_dim;
    for (int d = threadIdx.x; d < head_dim; d += blockDim.x) {
        float sum = 0.0f;
        for (int w = 0; w < ATTN_WARPS; w++) sum += part_acc[w][d];
        o[d] = sum;
    }
}

// ---- The k largest values of each row (value descending, the lower index
// first among equals), one block per row, k[row] of them (at most max_k):
// pass r finds the largest value after pass r - 1's pick in that order, so
// each row's answer depends on nothing but the row.
__device__ __forceinline__ bool ranks_before(float v, int i, float bv, int bi) {
    return bi < 0 || (i >= 0 && (v > bv || (v == bv && i < bi)));
}

extern "C" __global__ void top_k(const float* x, int cols, const int* k, int max_k, float* values, int* ids) {
    __shared__ float warp_v[32];
    __shared__ int warp_i[32];
    const float* row = x + (size_t)blockIdx.x * cols;
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    float pv = __int_as_float(0x7f800000);  // +inf: everything comes after it
    int pi = -1;
    for (int r = 0; r < k[blockIdx.x]; r++) {
        float bv = 0.0f;
        int bi = -1;
        for (int c = threadIdx.x; c < cols; c += blockDim.x) {
            float v = row[c];
            bool after = v < pv || (v == pv && c > pi);
            if (after && ranks_before(v, c, bv, bi)) {
                bv = v;
                bi = c;
            }
        }
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) {
            float ov = __shfl_xor_sync(0xffffffffu, bv, o);
            int oi = __shfl_xor_sync(0xffffffffu, bi, o);
            if (ranks_before(ov, oi, bv, bi)) {
                bv = ov;
                bi = oi;
            }
        }
        if (lane == 0) {
            warp_v[warp] = bv;
            warp_i[warp] = bi;
        }
        __syncthreads();
        bv = warp_v[0];
        bi = warp_i[0];
        for (int w = 1; w < warps; w++)
            if (ranks_before(warp_v[w], warp_i[w], bv, bi)) {
                bv = warp_v[w];
                bi = warp_i[w];
            }
        __syncthreads();
        if (threadIdx.x == 0) {
            values[(size_t)blockIdx.x * max_k + r] = bv;
            ids[(size_t)blockIdx.x * max_k + r] = bi;
        }
        pv = bv;
        pi = bi;
    }
}
