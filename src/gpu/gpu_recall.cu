// gpu_recall.cu: selection and recall of the GPU engine: the select + gather launch, the
// per-copy and dma paths through the host, the background recall worker and its events.
#include "gpu/gpu_engine_impl.cuh"

namespace freekv::gpu {

// ---------------------------------------------------------------- selection + recall

// kind 0: synchronous (main stream, jobs list 0), 1: background (side stream, jobs list 1).
void GpuEngine::Impl::select_and_gather(int64_t il, int32_t n_rows, const float* q_rows, const int32_t* n_pages_rows,
                                        const uint8_t* flag_rows, uint8_t want, int kind, cudaStream_t s) {
    cuda::GatherJob* job_list = jobs.get() + (kind * c.n_layer + il) * job_capacity;
    int32_t* count = n_jobs.get() + kind * c.n_layer + il;
    cuda::SelectArgs a;
    a.batch_of = rows_batch->get();
    a.q = q_rows;
    a.summaries = layer_summaries(il);
    a.n_pages = n_pages_rows;
    a.flags = flag_rows;
    a.want_flag = want;
    a.page_of_slot = layer_page_of_slot(il);
    a.slot_of_page = layer_slot_of_page(il);
    a.jobs = job_list;
    a.n_jobs = count;
    a.scores = kind == 0 ? scores_main.get() : scores_side.get();
    a.n_seq = n_rows;
    a.n_head = static_cast<int32_t>(c.n_head);
    a.n_head_kv = static_cast<int32_t>(c.n_head_kv);
    a.head_dim = static_cast<int32_t>(c.head_dim);
    a.max_pages = static_cast<int32_t>(max_pages);
    a.n_sink_page = static_cast<int32_t>(budget.n_sink_page);
    a.n_recent_page = static_cast<int32_t>(budget.n_recent_page);
    a.n_select = static_cast<int32_t>(budget.n_select);
    a.n_slots = static_cast<int32_t>(n_slots);
    a.agg = static_cast<int32_t>(mode.aggregation());
    a.elem_bytes = g.elem_bytes;
    cuda::select_pages(a, s);
    if (kind == 1 && tuning.diag_background == DiagBackground::kSelectOnly) return;
    cuda::GatherArgs ga;
    ga.cpu_chunks = chunk_table.get();
    ga.pages_per_chunk = pages_per_chunk;
    ga.cpu_page_of = cpu_page_of.get();
    ga.budget_cache = cache.get();
    ga.jobs = job_list;
    ga.n_jobs = count;
    ga.il = static_cast<int32_t>(il);
    ga.n_layer = static_cast<int32_t>(c.n_layer);
    ga.max_batch = static_cast<int32_t>(max_batch);
    ga.max_pages = static_cast<int32_t>(max_pages);
    ga.n_slots = static_cast<int32_t>(n_slots);
    ga.page_size = g.page_size;
    ga.n_head_kv = g.n_head_kv;
    ga.head_dim = g.head_dim;
    ga.elem_bytes = g.elem_bytes;
    ga.store_code = g.store_code;
    ga.store_block_bytes = g.store_block_bytes();
    // 12 blocks already reach the PCIe rate when alone (bench_recall_overlap); the background
    // gather keeps to that, since every byte it moves beside the model slows the model's GEMMs; the
    // synchronous one (on the critical path) takes 32 (64 and 128 measured no faster).
    ga.ctas = kind == 0 ? tuning.sync_gather_ctas : tuning.bg_gather_ctas;
    ga.per_head = counters.get() + c.n_layer * 4 + (kind * c.n_layer + il) * c.n_head_kv;
    if (kind == 1 && dma) {
        // The plan goes to pinned host memory; the worker copies once it is there (sel_done).
        FREEKV_CUDA_CHECK(cudaMemcpyAsync(host_bg_count.get() + il, count, sizeof(int32_t), cudaMemcpyDeviceToHost, s));
        FREEKV_CUDA_CHECK(cudaMemcpyAsync(host_bg_jobs.get() + il * job_capacity, job_list, sz(job_capacity) * sizeof(cuda::GatherJob),
                                          cudaMemcpyDeviceToHost, s));
        FREEKV_CUDA_CHECK(cudaEventRecord(sel_done[sz(il)], s));
        ga.ctas = 32;  // the scatter reads device memory
        const int64_t step = decode_steps;
        const bool timed = timing_step;
        worker->submit(il, step, [this, il, step, timed, ga] { dma_background(il, step, timed, ga); });
        return;
    }
    const size_t mark = sz(((decode_steps % 2) * c.n_layer + il) * 2 + kind);
    const bool timed = timing_step;
    if (timed) {
        if (gather_marked[mark]) {  // still unread from two steps ago
            FREEKV_CUDA_CHECK(cudaEventSynchronize(gather_marks[2 * mark + 1]));
            collect_gather_times(false);
        }
        FREEKV_CUDA_CHECK(cudaEventRecord(gather_marks[2 * mark], s));
    }
    if (kind == 0 && (per_copy || (dma && !speculative))) {
        // ArkVale: the host reads the plan, then copies block by block (pinned source, so each is
        // a DMA of one 2 * page_size * head_dim block), then one scatter into the slots. dma: the
        // same copies, batched. (FreeKV's corrective recall with dma stays the gather kernel: a
        // host round trip per layer would put the host on the critical path.)
        FREEKV_CUDA_CHECK(cudaMemcpyAsync(host_count.get(), count, sizeof(int32_t), cudaMemcpyDeviceToHost, s));
        FREEKV_CUDA_CHECK(cudaMemcpyAsync(host_jobs.get(), job_list, sz(job_capacity) * sizeof(cuda::GatherJob), cudaMemcpyDeviceToHost, s));
        FREEKV_CUDA_CHECK(cudaStreamSynchronize(s));
        if (dma) {
            batch_copy(host_jobs.get(), *host_count.get(), il, staging.get(), 0, s);
        } else {
            const int64_t block = g.store_block_bytes();
            for (int32_t j = 0; j < *host_count.get(); ++j)
                FREEKV_CUDA_CHECK(cudaMemcpyAsync(staging.get() + j * block, host_block(host_jobs.get()[j], il), sz(block),
                                                  cudaMemcpyHostToDevice, s));
        }
        ga.staging = staging.get();
    }
    const std::string err = cuda::gather_pages(ga, s);
    FREEKV_CHECK(err.empty(), "gather kernel: {}", err);
    if (timed) {
        FREEKV_CUDA_CHECK(cudaEventRecord(gather_marks[2 * mark + 1], s));
        gather_marked[mark] = 1;
    }
}

const uint8_t* GpuEngine::Impl::host_block(const cuda::GatherJob& job, int64_t il) const {
    const int64_t cpu_page = job.seq * max_pages + job.page;  // cpu_page_of is the identity
    return host_chunks[sz(cpu_page / pages_per_chunk)] +
           (cpu_page % pages_per_chunk) * g.cpu_page_bytes() + (il * c.n_head_kv + job.ikv) * g.store_block_bytes();
}

// The blocks of a job list into consecutive staging blocks, by the copy engines: one
// cudaMemcpyBatchAsync per MiB (bench_recall: 27 GB/s for 16 KiB blocks, against 5 GB/s for one
// cudaMemcpyAsync per block). `who` picks the argument arrays of the calling thread.
void GpuEngine::Impl::batch_copy(const cuda::GatherJob* job_list, int32_t count, int64_t il, uint8_t* to, int who,
                                 cudaStream_t s) {
    if (count <= 0) return;
    const int64_t block = g.store_block_bytes();
    auto& dst = batch_dst[who];
    auto& src = batch_src[who];
    auto& size = batch_size[who];
    dst.resize(sz(count));
    src.resize(sz(count));
    size.assign(sz(count), sz(block));
    for (int32_t j = 0; j < count; ++j) {
        dst[sz(j)] = to + j * block;
        src[sz(j)] = host_block(job_list[j], il);
    }
    cudaMemcpyAttributes attr{};
    attr.srcAccessOrder = cudaMemcpySrcAccessOrderStream;
    size_t attr_index = 0;
    const int32_t per_call = static_cast<int32_t>(std::max<int64_t>(1, (int64_t{1} << 20) / block));
    for (int32_t j = 0; j < count; j += per_call)
        FREEKV_CUDA_CHECK(cudaMemcpyBatchAsync(dst.data() + j, src.data() + j, size.data() + j,
                                               sz(std::min(per_call, count - j)), &attr, &attr_index, 1, s));
}

// Worker thread: the background recall of (step, il) by the copy engines once its plan is on the
// host, then the scatter into the slots, then bg_done[il], all on the copy stream.
void GpuEngine::Impl::dma_background(int64_t il, int64_t step, bool timed, cuda::GatherArgs ga) {
    FREEKV_CUDA_CHECK(cudaSetDevice(device));  // the worker thread starts on device 0
    FREEKV_CUDA_CHECK(cudaEventSynchronize(sel_done[sz(il)]));
    const int32_t count = host_bg_count.get()[il];
    const size_t mark = sz((step % 2) * c.n_layer + il);
    if (timed) {
        if (dma_marked[mark]) {  // from two steps ago: long finished
            FREEKV_CUDA_CHECK(cudaEventSynchronize(dma_marks[2 * mark + 1]));
            float ms = 0;
            FREEKV_CUDA_CHECK(cudaEventElapsedTime(&ms, dma_marks[2 * mark], dma_marks[2 * mark + 1]));
            dma_ms += ms;
        }
        FREEKV_CUDA_CHECK(cudaEventRecord(dma_marks[2 * mark], copy));
    }
    batch_copy(host_bg_jobs.get() + il * job_capacity, count, il, bg_staging.get(), 1, copy);
    ga.staging = bg_staging.get();
    const std::string err = cuda::gather_pages(ga, copy);
    FREEKV_CHECK(err.empty(), "scatter kernel: {}", err);
    if (timed) {
        FREEKV_CUDA_CHECK(cudaEventRecord(dma_marks[2 * mark + 1], copy));
        dma_marked[mark] = 1;
    }
    FREEKV_CUDA_CHECK(cudaEventRecord(bg_done[sz(il)], copy));
}

void GpuEngine::Impl::wait_background(int64_t il) {
    if (worker) worker->wait_issued(il, bg_step[sz(il)]);
    FREEKV_CUDA_CHECK(cudaStreamWaitEvent(main, bg_done[sz(il)]));
    bg_pending[sz(il)] = false;
}

// Adds the elapsed time of every recorded gather whose end event has completed (wait: all of
// them; the caller has synchronized both streams).
void GpuEngine::Impl::collect_gather_times(bool wait) {
    for (size_t i = 0; i < gather_marked.size(); ++i) {
        if (!gather_marked[i]) continue;
        if (!wait) {
            const cudaError_t e = cudaEventQuery(gather_marks[2 * i + 1]);
            if (e == cudaErrorNotReady) continue;
            FREEKV_CUDA_CHECK(e);
        }
        float ms = 0;
        FREEKV_CUDA_CHECK(cudaEventElapsedTime(&ms, gather_marks[2 * i], gather_marks[2 * i + 1]));
        gather_ms[i % 2] += ms;
        gather_marked[i] = 0;
    }
}

}  // namespace freekv::gpu
