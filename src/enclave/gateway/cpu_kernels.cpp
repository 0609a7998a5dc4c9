// CPU kernels for the gateway's GPT-2 forward (fp32), compiled on the serving machine by
// cpu_kernels.py and called through ctypes: the linear layers, decode attention, the KV-cache
// store. See that file for why they exist.
//
// Each computes every output row with the same sequence of floating-point operations whatever the
// other rows are: a row's bits never depend on what else is in the batch.
//
// No torch headers: a plain C ABI keeps the build to about a second. OpenMP comes from the libgomp
// torch has already loaded (same soname), so torch.set_num_threads also sets our thread count.

#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include <vector>

typedef float v16 __attribute__((vector_size(64), aligned(4)));
typedef int v16i __attribute__((vector_size(64)));

static inline v16 load16(const float* p) { return *(const v16*)p; }
static inline void store16(float* p, v16 v) { *(v16*)p = v; }

static inline float lane_sum(v16 v) {
    float s = 0.0f;
    for (int j = 0; j < 16; j++) s += v[j];
    return s;
}

// e^x for x <= 0 (scores minus their maximum), Cephes' expf: |error| < 2 ulp. Vectorised here
// because libm's expf would be most of the kernel's arithmetic.
static inline v16 exp_nonpositive(v16 x) {
    const v16 lo = (v16){} - 87.0f;
    x = x < lo ? lo : x;
    v16 t = x * 1.44269504088896341f - 0.5f;
    v16i n = __builtin_convertvector(t, v16i);  // truncation of t - 0.5 (t <= 0) rounds x*log2(e) to nearest
    v16 fn = __builtin_convertvector(n, v16);
    x = x - fn * 0.693359375f - fn * -2.12194440e-4f;
    v16 y = 1.9875691500e-4f * x + 1.3981999507e-3f;
    y = y * x + 8.3334519073e-3f;
    y = y * x + 4.1665795894e-2f;
    y = y * x + 1.6666665459e-1f;
    y = y * x + 5.0000001201e-1f;
    y = y * x * x + x + 1.0f;
    v16i bits = (n + 127) << 23;
    v16 scale;
    memcpy(&scale, &bits, 64);
    return y * scale;
}

// GELU's tanh approximation (GPT-2's "gelu_new"), tanh(u) = sign(u) (1 - e^-2|u|) / (1 + e^-2|u|).
static inline v16 gelu_tanh(v16 x) {
    const v16 zero = (v16){};
    v16 u = 0.7978845608028654f * (x + 0.044715f * x * x * x);
    v16 e = exp_nonpositive(-2.0f * (u < zero ? -u : u));
    v16 t = (1.0f - e) / (1.0f + e);
    return 0.5f * x * (1.0f + (u < zero ? -t : t));
}


// -- linear: y = x @ W + b, W packed once into column panels [n/16][k][16] -----------------------
//
// Every output value is one chain of fused multiply-adds over k in order, starting from zero, with
// the bias added last. The tilings below differ only in how many rows and panels share a pass and
// where a chain is parked in memory between blocks of k (an exact fp32 store and load), never in
// that chain: a row's bits are the same whichever tiling its batch takes, and whatever its
// neighbours are.

// R rows (lanes of a transposed row tile, [k][16]: the values broadcast at each step of k share
// one cache line) against P panels, over k0..k1, accumulating into acc [R][P][16].
template <int R, int P>
static void tile(const float* xt, const float* panels, long k, long k0, long k1, float* acc_mem, bool first) {
    v16 acc[R][P];
    for (int r = 0; r < R; r++)
        for (int p = 0; p < P; p++) acc[r][p] = first ? (v16){} : load16(acc_mem + (r * P + p) * 16);
    for (long i = k0; i < k1; i++) {
        // A decode step reads each weight once, straight from memory: the hardware prefetcher
        // alone leaves the FMA units waiting (37 ms -> 25 ms for GPT-2 124M at 16 rows, 2 cores).
        // Near a panel's end this points past it, which is harmless: prefetches never fault.
        for (int p = 0; p < P; p++) __builtin_prefetch(panels + p * k * 16 + (i + 128) * 16, 0, 2);
        v16 w[P];
        for (int p = 0; p < P; p++) w[p] = load16(panels + p * k * 16 + i * 16);
        for (int r = 0; r < R; r++) {
            float xv = xt[i * 16 + r];
            for (int p = 0; p < P; p++) acc[r][p] += xv * w[p];
        }
    }
    for (int r = 0; r < R; r++)
        for (int p = 0; p < P; p++) memcpy(acc_mem + (r * P + p) * 16, &acc[r][p], 64);
}

typedef void (*tile_fn)(const float*, const float*, long, long, long, float*, bool);

// Few rows (decode): every weight is read once per call, so one pass per panel over all of k, with
// as few lanes as cover the rows.
static tile_fn few_rows_tile(long rows) {
    if (rows <= 1) return tile<1, 1>;
    if (rows <= 2) return tile<2, 1>;
    if (rows <= 4) return tile<4, 1>;
    if (rows <= 8) return tile<8, 1>;
    return tile<16, 1>;
}

static const long FEW_ROWS = 16;  // up to here, reading the weights is the cost
static const int GROUP = 3;       // panels per pass with many rows: 8x3 accumulators fill the registers
static const long K_BLOCK = 384;  // with many rows: a block of k of every row tile stays in L2

// What happens to a finished product before it is stored, in this order: + bias, the activation,
// + the residual (the layer's input, so `x + proj(h)` costs no pass of its own).
struct Epilogue {
    const float* bias;      // NULL or ceil(n/16)*16 floats
    int activation;         // 0 none, 1 gelu_tanh
    const float* residual;  // NULL or [m, n] with row stride ldr
    long ldr;
};

static void write_rows(const float* acc, int panels, long rows, const Epilogue& epi, long row0, long col0, long n,
                       float* y, long ldy) {
    for (long r = 0; r < rows; r++)
        for (int p = 0; p < panels; p++) {
            long col = col0 + p * 16, cols = n - col < 16 ? n - col : 16;
            v16 out = load16(acc + (r * panels + p) * 16);
            if (epi.bias) out += load16(epi.bias + col);
            if (epi.activation == 1) out = gelu_tanh(out);
            if (epi.residual) {
                v16 res = (v16){};
                memcpy(&res, epi.residual + (row0 + r) * epi.ldr + col, cols * sizeof(float));
                out += res;
            }
            memcpy(y + (row0 + r) * ldy + col, &out, cols * sizeof(float));
        }
}

extern "C" int enclave_kernels_abi(void) { return 3; }

// x: [m, k] with row stride ldx; packed: [ceil(n/16)][k][16] (zero-padded columns); y: [m, n] with
// row stride ldy (may be the residual itself: each value is read before it is written).
extern "C" void enclave_linear(const float* x, long ldx, long m, long k, const float* packed, const float* bias, long n,
                               float* y, long ldy, int activation, const float* residual, long ldr) {
    if (m <= 0) return;
    const Epilogue epi = {bias, activation, residual, ldr};
    long tiles = (m + 15) / 16, panels = (n + 15) / 16;
    // Transposed row tiles, [tiles][k][16], zero-padded: made once here, read by every panel.
    static thread_local std::vector<float> scratch;
    scratch.resize(tiles * k * 16);
    float* xt = scratch.data();
#pragma omp parallel for schedule(static) if (m > FEW_ROWS)
    for (long t = 0; t < tiles; t++) {
        long rows = m - t * 16 < 16 ? m - t * 16 : 16;
        const float* src = x + t * 16 * ldx;
        float* dst = xt + t * k * 16;
        for (long i = 0; i < k; i++) {
            for (long r = 0; r < rows; r++) dst[i * 16 + r] = src[r * ldx + i];
            for (long r = rows; r < 16; r++) dst[i * 16 + r] = 0.0f;
        }
    }
    if (m <= FEW_ROWS) {
        tile_fn run = few_rows_tile(m);
#pragma omp parallel for schedule(static)
        for (long p = 0; p < panels; p++) {
            float acc[16 * 16];
            run(xt, packed + p * k * 16, k, 0, k, acc, true);
            write_rows(acc, 1, m, epi, 0, p * 16, n, y, ldy);
        }
        return;
    }
    // Many rows (prompts): compute-bound, so reuse each loaded weight across 8 rows and each
    // broadcast row value across 3 panels, in blocks of k.
    long groups = (panels + GROUP - 1) / GROUP, eights = (m + 7) / 8;
#pragma omp parallel
    {
        std::vector<float> acc(eights * 8 * GROUP * 16);
#pragma omp for schedule(static)
        for (long g = 0; g < groups; g++) {
            long first_panel = g * GROUP;
            int width = panels - first_panel < GROUP ? (int)(panels - first_panel) : GROUP;
            const float* base = packed + first_panel * k * 16;
            for (long k0 = 0; k0 < k; k0 += K_BLOCK) {
                long k1 = k0 + K_BLOCK < k ? k0 + K_BLOCK : k;
                for (long e = 0; e < eights; e++) {
                    const float* rows = xt + (e / 2) * k * 16 + (e % 2) * 8;
                    float* slot = acc.data() + e * 8 * GROUP * 16;
                    if (width == GROUP) tile<8, GROUP>(rows, base, k, k0, k1, slot, k0 == 0);
                    else if (width == 2) tile<8, 2>(rows, base, k, k0, k1, slot, k0 == 0);
                    else tile<8, 1>(rows, base, k, k0, k1, slot, k0 == 0);
                }
            }
            for (long e = 0; e < eights; e++) {
                long rows = m - e * 8 < 8 ? m - e * 8 : 8;
                write_rows(acc.data() + e * 8 * GROUP * 16, width, rows, epi, e * 8, first_panel * 16, n, y, ldy);
            }
        }
    }
}

// -- decode attention: one query per row over its own slot's cached prefix ---------------------

// One (row, head): q [D], keys and values [length][D] -> out [D]. D = 16 * NV.
template <int NV>
static void attend_one(const float* q, const float* keys, const float* values, long length, float scale, float* out,
                       std::vector<float>& scores) {
    const long D = 16 * NV;
    scores.resize((length + 15) / 16 * 16);
    float* s = scores.data();
    v16 qv[NV];
    for (int j = 0; j < NV; j++) qv[j] = load16(q + 16 * j);
    float top = -INFINITY;
    for (long l = 0; l < length; l++) {
        v16 dot = qv[0] * load16(keys + l * D);
        for (int j = 1; j < NV; j++) dot += qv[j] * load16(keys + l * D + 16 * j);
        s[l] = lane_sum(dot) * scale;
        top = s[l] > top ? s[l] : top;
    }
    v16 total = (v16){};
    long l = 0;
    for (; l + 16 <= length; l += 16) {
        v16 e = exp_nonpositive(load16(s + l) - top);
        store16(s + l, e);
        total += e;
    }
    if (l < length) {
        v16 tail = (v16){};
        memcpy(&tail, s + l, (length - l) * sizeof(float));
        v16 e = exp_nonpositive(tail - top);
        for (long j = length - l; j < 16; j++) e[j] = 0.0f;
        memcpy(s + l, &e, (length - l) * sizeof(float));
        total += e;
    }
    float norm = 1.0f / lane_sum(total);
    v16 acc[NV];
    for (int j = 0; j < NV; j++) acc[j] = (v16){};
    for (long p = 0; p < length; p++) {
        float w = s[p];
        for (int j = 0; j < NV; j++) acc[j] += w * load16(values + p * D + 16 * j);
    }
    for (int j = 0; j < NV; j++) store16(out + 16 * j, acc[j] * norm);
}

// q: row b, head h at q + b*ldq + h*D; caches [n_slots][heads][n_positions][D] contiguous;
// slots/lengths: per row; out: [rows][heads*D] contiguous. Returns 0; -1 for an unsupported D;
// -2 (having computed nothing) if a slot or length is out of range.
extern "C" int enclave_decode_attention(const float* q, long ldq, long rows, long heads, long D, const float* k_cache,
                                        const float* v_cache, long n_slots, long n_positions, const long* slots,
                                        const long* lengths, float scale, float* out) {
    if (D != 16 && D != 32 && D != 64 && D != 128) return -1;
    for (long b = 0; b < rows; b++)
        if (slots[b] < 0 || slots[b] >= n_slots || lengths[b] < 1 || lengths[b] > n_positions) return -2;
    long head_stride = n_positions * D, slot_stride = heads * head_stride;
#pragma omp parallel
    {
        std::vector<float> scores;
#pragma omp for schedule(dynamic, 4)
        for (long item = 0; item < rows * heads; item++) {
            long b = item / heads, h = item % heads;
            const float* keys = k_cache + slots[b] * slot_stride + h * head_stride;
            const float* values = v_cache + slots[b] * slot_stride + h * head_stride;
            const float* query = q + b * ldq + h * D;
            float* dst = out + b * heads * D + h * D;
            switch (D) {  // GPT-2's sizes all have 64; small test models have less
                case 16: attend_one<1>(query, keys, values, lengths[b], scale, dst, scores); break;
                case 32: attend_one<2>(query, keys, values, lengths[b], scale, dst, scores); break;
                case 64: attend_one<4>(query, keys, values, lengths[b], scale, dst, scores); break;
                default: attend_one<8>(query, keys, values, lengths[b], scale, dst, scores);
            }
        }
    }
    return 0;
}

// Each row's new key and value into its slot at its position. qkv: [rows][3E] with row stride ldq,
// keys at E..2E, values at 2E..3E, E = heads*D; caches [n_slots][heads][n_positions][D] contiguous.
// Returns -1 (and writes nothing) if a slot or position is out of range.
extern "C" int enclave_store_kv(const float* qkv, long ldq, long rows, long heads, long D, float* k_cache,
                                float* v_cache, long n_slots, long n_positions, const long* slots,
                                const long* positions) {
    for (long r = 0; r < rows; r++)
        if (slots[r] < 0 || slots[r] >= n_slots || positions[r] < 0 || positions[r] >= n_positions) return -1;
    long E = heads * D, head_stride = n_positions * D, slot_stride = heads * head_stride;
    for (long r = 0; r < rows; r++)
        for (long h = 0; h < heads; h++) {
            long at = slots[r] * slot_stride + h * head_stride + positions[r] * D;
            memcpy(k_cache + at, qkv + r * ldq + E + h * D, D * sizeof(float));
            memcpy(v_cache + at, qkv + r * ldq + 2 * E + h * D, D * sizeof(float));
        }
    return 0;
}
