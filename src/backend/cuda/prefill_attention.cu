// prefill_attention.cu: see prefill_attention.cuh. Per chunk of queries [c0, c0 + C) and group
// member g: S_h = scale * Q_(h,g) K_h^T over keys [0, c0 + C) for every KV head h at once
// (strided-batched SGEMM), the masked softmax in place, then O_(h,g) = P_h V_h (strided-batched
// SGEMM) straight into the output rows. Work per chunk: 4 * n_head * C * (c0 + C) * head_dim flops,
// scores traffic 16 bytes per (head, query, key).
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <algorithm>

#include "backend/cuda/cuda_check.h"
#include "backend/cuda/prefill_attention.cuh"
#include "core/error.h"

namespace freekv::cuda {

namespace {

cublasHandle_t handle_for_prefill() {
    thread_local cublasHandle_t handle = [] {
        cublasHandle_t h = nullptr;
        FREEKV_CHECK(cublasCreate(&h) == CUBLAS_STATUS_SUCCESS, "cublasCreate failed");
        return h;
    }();
    return handle;
}

// One block per (KV head, query of the chunk): its row of keys [0, n_keys); keys after the
// query's position get probability 0.
constexpr int kSoftmaxThreads = 256;
__global__ void __launch_bounds__(kSoftmaxThreads) masked_softmax_kernel(float* scores, int n_keys, int c0, int chunk) {
    const int t = blockIdx.x % chunk;
    float* row = scores + static_cast<long long>(blockIdx.x) * n_keys;
    const int valid = c0 + t + 1;
    __shared__ float red[kSoftmaxThreads / 32];
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    float m = -INFINITY;
    for (int j = threadIdx.x; j < valid; j += kSoftmaxThreads) m = fmaxf(m, row[j]);
    for (int o = 16; o > 0; o >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, o));
    if (lane == 0) red[warp] = m;
    __syncthreads();
    m = red[0];
    for (int w = 1; w < kSoftmaxThreads / 32; ++w) m = fmaxf(m, red[w]);
    __syncthreads();
    float sum = 0.0f;
    for (int j = threadIdx.x; j < valid; j += kSoftmaxThreads) {
        const float e = expf(row[j] - m);
        row[j] = e;
        sum += e;
    }
    for (int o = 16; o > 0; o >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, o);
    if (lane == 0) red[warp] = sum;
    __syncthreads();
    sum = 0.0f;
    for (int w = 0; w < kSoftmaxThreads / 32; ++w) sum += red[w];
    const float inv = 1.0f / sum;
    for (int j = threadIdx.x; j < n_keys; j += kSoftmaxThreads) row[j] = j < valid ? row[j] * inv : 0.0f;
}

void check(cublasStatus_t s, const char* what) {
    FREEKV_CHECK(s == CUBLAS_STATUS_SUCCESS, "prefill attention: {} failed with cuBLAS status {}", what, static_cast<int>(s));
}

}  // namespace

int32_t prefill_chunk(int64_t n, int64_t n_head_kv, int64_t max_scratch_bytes) {
    const int64_t per_query = n_head_kv * n * 4;
    return static_cast<int32_t>(std::clamp<int64_t>(max_scratch_bytes / std::max<int64_t>(per_query, 1), 16, std::max<int64_t>(n, 1)));
}

int64_t prefill_scores_floats(int64_t n, int64_t n_head_kv, int64_t chunk) { return n_head_kv * chunk * n; }

void prefill_attention(const PrefillAttentionArgs& a, void* stream) {
    FREEKV_CHECK(a.n >= 1 && a.chunk >= 1 && a.n_head % a.n_head_kv == 0, "prefill attention: bad shape (n {}, chunk {}, heads {}/{})",
                 a.n, a.chunk, a.n_head, a.n_head_kv);
    cublasHandle_t h = handle_for_prefill();
    const cudaStream_t s = static_cast<cudaStream_t>(stream);
    check(cublasSetStream(h, s), "cublasSetStream");
    const int group = a.n_head / a.n_head_kv, d = a.head_dim;
    const long long q_row = static_cast<long long>(a.n_head) * d, kv_row = static_cast<long long>(a.n_head_kv) * d;
    const float scale = 1.0f / sqrtf(static_cast<float>(d)), one = 1.0f, zero = 0.0f;
    FREEKV_CHECK(a.q_pos0 >= 0, "prefill attention: q_pos0 {} < 0", a.q_pos0);
    for (int c0 = 0; c0 < a.n; c0 += a.chunk) {
        const int rows = std::min(a.chunk, a.n - c0), keys = a.q_pos0 + c0 + rows;
        const long long per_head = static_cast<long long>(rows) * keys;
        for (int g = 0; g < group; ++g) {
            // S^T (keys x rows, column-major) = K_h (keys x d) . Q_(h,g)^T (d x rows), for every h.
            check(cublasSgemmStridedBatched(h, CUBLAS_OP_T, CUBLAS_OP_N, keys, rows, d, &scale, a.k, static_cast<int>(kv_row), d,
                                            a.q + c0 * q_row + g * d, static_cast<int>(q_row), static_cast<long long>(group) * d, &zero,
                                            a.scores, keys, per_head, a.n_head_kv),
                  "Q.K^T");
            masked_softmax_kernel<<<static_cast<unsigned>(a.n_head_kv * rows), kSoftmaxThreads, 0, s>>>(a.scores, keys,
                                                                                                 a.q_pos0 + c0, rows);
            FREEKV_CUDA_CHECK(cudaGetLastError());
            // O_(h,g)^T (d x rows) = V_h^T (d x keys) . P_h^T (keys x rows), into the output rows.
            check(cublasSgemmStridedBatched(h, CUBLAS_OP_N, CUBLAS_OP_N, d, rows, keys, &one, a.v, static_cast<int>(kv_row), d,
                                            a.scores, keys, per_head, &zero, a.out + c0 * q_row + g * d, static_cast<int>(q_row),
                                            static_cast<long long>(group) * d, a.n_head_kv),
                  "P.V");
        }
    }
}

}  // namespace freekv::cuda
