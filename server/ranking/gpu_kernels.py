"""CUDA C source of the GPU ranker's kernels (compiled at run time by CuPy through NVRTC).

The item table is chunked: `chunks` is a device array of pointers to fixed-size blocks of
2^chunk_shift rows each, so growing the table adds a block and never moves rows. Rows are stored as
raw IEEE half bits (unsigned short) and widened with `cvt.f32.f16`, so the source needs no CUDA headers.

Kernels:
- score_tpc{4,8,16,32}_{vec,scalar}: one fused gather + dot + side-feature pass. A block serves one
  request (blockIdx.y) and a tile of its candidates; the query is staged in shared memory as f32; a
  group of TPC threads owns one candidate at a time and reads its FP16 row with 16-byte loads (four in
  flight per thread), accumulating in f32, then reduces across the group with warp shuffles.
- topk_small_*: block-per-request bitonic sort of up to 1024 64-bit keys, one per thread in a register,
  exchanging through warp shuffles (partners < 32 apart) or shared memory (farther). A key is
  (order-preserving bits of the score) << 32 | (~column), so the sort is by score descending with ties
  to the lower column, exactly like the CPU top-k; NaN and -inf become key 0 and are never selected.
- topk_scores / topk_keys_*: the same for wider rows, sorted in shared memory; rows wider than one sort
  are reduced tile by tile (each tile keeps its top k).
- make_keys / decode_keys: the same keys for a library sort, for the rare k too large for the tiles.
- scatter_rows / set_pointer: catalogue writes, enqueued on the ranker's stream.
- spin: keeps the GPU busy while a benchmark queues work, so event timings carry no launch gaps.
"""

from __future__ import annotations

# Largest row of keys one block sorts in shared memory (8 bytes each: 64 KiB, above the 48 KiB default).
SORT_MAX = 8192
# Largest row of keys sorted one key per thread, in registers (the usual case).
SORT_SMALL_MAX = 1024

SCORE_THREADS = 256
SCORE_TPCS = (4, 8, 16, 32)

SOURCE = r"""
typedef unsigned long long u64;
typedef unsigned short f16bits;

__device__ __forceinline__ float h2f(f16bits h) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
}

__device__ __forceinline__ float neg_inf() { return __int_as_float((int)0xff800000u); }

// acc += dot(8 halves packed in u, q[0..8))
__device__ __forceinline__ float dot8(const uint4 u, const float* q, float acc) {
    const float4 qa = *reinterpret_cast<const float4*>(q);
    const float4 qb = *reinterpret_cast<const float4*>(q + 4);
    acc = fmaf(h2f((f16bits)(u.x & 0xffffu)), qa.x, acc);
    acc = fmaf(h2f((f16bits)(u.x >> 16)), qa.y, acc);
    acc = fmaf(h2f((f16bits)(u.y & 0xffffu)), qa.z, acc);
    acc = fmaf(h2f((f16bits)(u.y >> 16)), qa.w, acc);
    acc = fmaf(h2f((f16bits)(u.z & 0xffffu)), qb.x, acc);
    acc = fmaf(h2f((f16bits)(u.z >> 16)), qb.y, acc);
    acc = fmaf(h2f((f16bits)(u.w & 0xffffu)), qb.z, acc);
    acc = fmaf(h2f((f16bits)(u.w >> 16)), qb.w, acc);
    return acc;
}

template <int TPC, bool VEC>
__device__ __forceinline__ void score_impl(
    const f16bits* const* __restrict__ chunks, int chunk_shift, long long n_rows, int dim,
    const float* __restrict__ queries, const long long* __restrict__ rows,
    const float* __restrict__ side, float w_sim, float w0, float w1, float w2,
    int C, int cands_per_block, float* __restrict__ total, float* __restrict__ sim)
{
    extern __shared__ __align__(16) float q[];
    const int b = blockIdx.y;
    const float* qg = queries + (long long)b * dim;
    for (int i = threadIdx.x; i < dim; i += blockDim.x) q[i] = qg[i];
    __syncthreads();

    const int lane = threadIdx.x % TPC;
    const int group = threadIdx.x / TPC;
    const int groups = blockDim.x / TPC;
    const int c0 = blockIdx.x * cands_per_block;
    const int c_end = min(C, c0 + cands_per_block);
    const long long chunk_mask = (1LL << chunk_shift) - 1;
    const long long* brows = rows + (long long)b * C;

    // The trip count is uniform across the block, so every lane reaches the shuffles. Each group
    // fetches its next candidate's row index one iteration ahead, off the critical path.
    long long row_next = c0 + group < c_end ? brows[c0 + group] : -1;
    for (int base = c0; base < c_end; base += groups) {
        const int c = base + group;
        const bool in_tile = c < c_end;
        const long long row = row_next;
        row_next = c + groups < c_end ? brows[c + groups] : -1;
        const bool valid = row >= 0 && row < n_rows;
        float acc = 0.f;
        if (valid) {
            const f16bits* r = chunks[row >> chunk_shift] + (row & chunk_mask) * (long long)dim;
            if (VEC) {
                const uint4* rv = reinterpret_cast<const uint4*>(r);
                const int nvec = dim >> 3;
                for (int v0 = 0; v0 < nvec; v0 += 4 * TPC) {
                    uint4 u[4];
#pragma unroll
                    for (int j = 0; j < 4; ++j) {
                        const int v = v0 + j * TPC + lane;
                        u[j] = v < nvec ? __ldg(rv + v) : make_uint4(0u, 0u, 0u, 0u);
                    }
#pragma unroll
                    for (int j = 0; j < 4; ++j) {
                        const int v = v0 + j * TPC + lane;
                        if (v < nvec) acc = dot8(u[j], q + v * 8, acc);
                    }
                }
            } else {
                for (int i = lane; i < dim; i += TPC) acc = fmaf(h2f(__ldg(r + i)), q[i], acc);
            }
        }
#pragma unroll
        for (int off = TPC / 2; off > 0; off >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, off);
        if (in_tile && lane == 0) {
            const long long o = (long long)b * C + c;
            // The CPU ranker: similarity = -inf for rows outside the table, total = sim * w + side @ w,
            // then -inf wherever the row is padding. Rounded step by step (no contraction) like NumPy.
            const float s = valid ? acc : neg_inf();
            const float* f = side + o * 3;
            const float sd =
                __fadd_rn(__fadd_rn(__fmul_rn(f[0], w0), __fmul_rn(f[1], w1)), __fmul_rn(f[2], w2));
            sim[o] = s;
            total[o] = row < 0 ? neg_inf() : __fadd_rn(__fmul_rn(s, w_sim), sd);
        }
    }
}

#define SCORE_KERNEL(TPC, VEC, NAME)                                                                 \
extern "C" __global__ void __launch_bounds__(256) NAME(                                            \
    const f16bits* const* __restrict__ chunks, int chunk_shift, long long n_rows, int dim,        \
    const float* __restrict__ queries, const long long* __restrict__ rows,                         \
    const float* __restrict__ side, float w_sim, float w0, float w1, float w2,                     \
    int C, int cands_per_block, float* __restrict__ total, float* __restrict__ sim) {              \
    score_impl<TPC, VEC>(chunks, chunk_shift, n_rows, dim, queries, rows, side, w_sim, w0, w1, w2, \
                         C, cands_per_block, total, sim);                                          \
}
SCORE_KERNEL(4, true, score_tpc4_vec)
SCORE_KERNEL(8, true, score_tpc8_vec)
SCORE_KERNEL(16, true, score_tpc16_vec)
SCORE_KERNEL(32, true, score_tpc32_vec)
SCORE_KERNEL(4, false, score_tpc4_scalar)
SCORE_KERNEL(8, false, score_tpc8_scalar)
SCORE_KERNEL(16, false, score_tpc16_scalar)
SCORE_KERNEL(32, false, score_tpc32_scalar)

__device__ __forceinline__ u64 make_key(float s, unsigned column) {
    if (s != s || s == neg_inf()) return 0ull;
    unsigned u = __float_as_uint(s);
    u = (u & 0x80000000u) ? ~u : (u | 0x80000000u);
    return ((u64)u << 32) | (u64)(0xffffffffu - column);
}

// Sorts keys[0..n) descending; n is a power of two; ends with a barrier.
__device__ __forceinline__ void bitonic_desc(u64* keys, int n) {
    for (int size = 2; size <= n; size <<= 1) {
        for (int stride = size >> 1; stride > 0; stride >>= 1) {
            for (int t = threadIdx.x; t < (n >> 1); t += blockDim.x) {
                const int i = 2 * t - (t & (stride - 1));
                const int j = i + stride;
                const u64 a = keys[i];
                const u64 c = keys[j];
                const bool desc = (i & size) == 0;
                if ((a < c) == desc) {
                    keys[i] = c;
                    keys[j] = a;
                }
            }
            __syncthreads();
        }
    }
}

__device__ __forceinline__ void decode(u64 key, const float* total, const float* sim, long long row_base,
                                       long long o, long long* out_pos, float* out_score, float* out_sim) {
    if (key == 0ull) {
        out_pos[o] = -1;
        out_score[o] = neg_inf();
        out_sim[o] = 0.f;
    } else {
        const unsigned column = 0xffffffffu - (unsigned)(key & 0xffffffffull);
        out_pos[o] = (long long)column;
        out_score[o] = total[row_base + column];
        out_sim[o] = sim[row_base + column];
    }
}

// Top-k of rows of at most 1024 keys (the usual case): one block per request, one key per thread, held in
// a register. Compare-exchange partners within a warp swap keys by shuffle; farther ones go through
// shared memory (two buffers, so one barrier per such step). Sorted descending, thread i holds rank i.
template <bool FROM_KEYS>
__device__ __forceinline__ void topk_small_impl(
    const float* __restrict__ total, const float* __restrict__ sim, const u64* __restrict__ keys_in,
    int C, int width, int k, long long* __restrict__ out_pos, float* __restrict__ out_score,
    float* __restrict__ out_sim)
{
    __shared__ u64 exchange[2][1024];
    const int b = blockIdx.y;
    const int i = threadIdx.x;
    const int n = blockDim.x;  // a power of two, 32..1024
    u64 key = 0ull;
    if (i < width) {
        const long long src = (long long)b * width + i;
        key = FROM_KEYS ? keys_in[src] : make_key(total[src], (unsigned)i);
    }
    int buf = 0;
    for (int size = 2; size <= n; size <<= 1) {
        for (int stride = size >> 1; stride > 0; stride >>= 1) {
            u64 other;
            if (stride >= 32) {
                exchange[buf][i] = key;
                __syncthreads();
                other = exchange[buf][i ^ stride];
                buf ^= 1;
            } else {
                other = __shfl_xor_sync(0xffffffffu, key, stride);
            }
            // In a descending run the lower index keeps the larger key; in an ascending one, the smaller.
            const bool keep_max = ((i & stride) == 0) == ((i & size) == 0);
            key = keep_max ? (key > other ? key : other) : (key < other ? key : other);
        }
    }
    const long long row_base = (long long)b * C;
    if (i < k) decode(key, total, sim, row_base, (long long)b * k + i, out_pos, out_score, out_sim);
    for (int j = n + i; j < k; j += n)
        decode(0ull, total, sim, row_base, (long long)b * k + j, out_pos, out_score, out_sim);
}

#define TOPK_SMALL_KERNEL(FROM_KEYS, NAME)                                                           \
extern "C" __global__ void __launch_bounds__(1024) NAME(                                           \
    const float* __restrict__ total, const float* __restrict__ sim, const u64* __restrict__ keys_in, \
    int C, int width, int k, long long* __restrict__ out_pos, float* __restrict__ out_score,        \
    float* __restrict__ out_sim) {                                                                 \
    topk_small_impl<FROM_KEYS>(total, sim, keys_in, C, width, k, out_pos, out_score, out_sim);     \
}
TOPK_SMALL_KERNEL(false, topk_small_scores)
TOPK_SMALL_KERNEL(true, topk_small_keys)

// One block per (tile, request): loads the tile's keys, sorts them, and either decodes the top k into
// the outputs (FINAL) or writes them to keys_out[b, tile * k ...] for the next pass.
template <bool FROM_KEYS, bool FINAL>
__device__ __forceinline__ void topk_impl(
    const float* __restrict__ total, const float* __restrict__ sim, const u64* __restrict__ keys_in,
    int C, int width, int tile, int sort_n, int k, u64* __restrict__ keys_out,
    long long* __restrict__ out_pos, float* __restrict__ out_score, float* __restrict__ out_sim)
{
    extern __shared__ u64 keys[];
    const int b = blockIdx.y;
    const int start = blockIdx.x * tile;
    const int len = min(tile, width - start);
    for (int i = threadIdx.x; i < sort_n; i += blockDim.x) {
        u64 key = 0ull;
        if (i < len) {
            const long long src = (long long)b * width + start + i;
            key = FROM_KEYS ? keys_in[src] : make_key(total[src], (unsigned)(start + i));
        }
        keys[i] = key;
    }
    __syncthreads();
    bitonic_desc(keys, sort_n);
    for (int j = threadIdx.x; j < k; j += blockDim.x) {
        const u64 key = j < sort_n ? keys[j] : 0ull;
        if (FINAL) {
            decode(key, total, sim, (long long)b * C, (long long)b * k + j, out_pos, out_score, out_sim);
        } else {
            keys_out[(long long)b * gridDim.x * k + (long long)blockIdx.x * k + j] = key;
        }
    }
}

#define TOPK_KERNEL(FROM_KEYS, FINAL, NAME)                                                          \
extern "C" __global__ void NAME(                                                                   \
    const float* __restrict__ total, const float* __restrict__ sim, const u64* __restrict__ keys_in, \
    int C, int width, int tile, int sort_n, int k, u64* __restrict__ keys_out,                     \
    long long* __restrict__ out_pos, float* __restrict__ out_score, float* __restrict__ out_sim) {  \
    topk_impl<FROM_KEYS, FINAL>(total, sim, keys_in, C, width, tile, sort_n, k, keys_out,          \
                                out_pos, out_score, out_sim);                                      \
}
TOPK_KERNEL(false, true, topk_scores)
TOPK_KERNEL(false, false, topk_scores_to_keys)
TOPK_KERNEL(true, true, topk_keys)
TOPK_KERNEL(true, false, topk_keys_to_keys)

extern "C" __global__ void make_keys(const float* __restrict__ total, int C, long long n,
                                     u64* __restrict__ keys) {
    const long long step = (long long)gridDim.x * blockDim.x;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += step)
        keys[i] = make_key(total[i], (unsigned)(i % C));
}

// sorted: (B, C) keys ascending per request; writes the last k of each row, reversed.
extern "C" __global__ void decode_keys(const u64* __restrict__ sorted, const float* __restrict__ total,
                                       const float* __restrict__ sim, int C, int k, long long n,
                                       long long* __restrict__ out_pos, float* __restrict__ out_score,
                                       float* __restrict__ out_sim) {
    const long long step = (long long)gridDim.x * blockDim.x;
    for (long long o = blockIdx.x * (long long)blockDim.x + threadIdx.x; o < n; o += step) {
        const long long b = o / k;
        const int j = (int)(o % k);
        const u64 key = j < C ? sorted[b * C + (C - 1 - j)] : 0ull;
        decode(key, total, sim, b * C, o, out_pos, out_score, out_sim);
    }
}

// Writes n rows of `src` (n, dim) half bits to the table rows `rows`, or zeros them when src is null.
extern "C" __global__ void scatter_rows(f16bits* const* __restrict__ chunks, int chunk_shift, int dim,
                                        const long long* __restrict__ rows, const f16bits* __restrict__ src,
                                        int n) {
    const long long chunk_mask = (1LL << chunk_shift) - 1;
    for (int r = blockIdx.x; r < n; r += gridDim.x) {
        const long long row = rows[r];
        f16bits* dst = chunks[row >> chunk_shift] + (row & chunk_mask) * (long long)dim;
        if ((dim & 7) == 0) {
            uint4* d = reinterpret_cast<uint4*>(dst);
            const uint4* s = reinterpret_cast<const uint4*>(src + (long long)r * dim);
            for (int v = threadIdx.x; v < (dim >> 3); v += blockDim.x)
                d[v] = src ? s[v] : make_uint4(0u, 0u, 0u, 0u);
        } else {
            for (int i = threadIdx.x; i < dim; i += blockDim.x)
                dst[i] = src ? src[(long long)r * dim + i] : (f16bits)0;
        }
    }
}

extern "C" __global__ void set_pointer(u64* pointers, long long index, u64 value) {
    pointers[index] = value;
}

extern "C" __global__ void spin(long long cycles) {
    const long long start = clock64();
    while (clock64() - start < cycles) {
    }
}
"""

KERNEL_NAMES = (
    *(f"score_tpc{t}_{kind}" for t in SCORE_TPCS for kind in ("vec", "scalar")),
    "topk_small_scores",
    "topk_small_keys",
    "topk_scores",
    "topk_scores_to_keys",
    "topk_keys",
    "topk_keys_to_keys",
    "make_keys",
    "decode_keys",
    "scatter_rows",
    "set_pointer",
    "spin",
)
