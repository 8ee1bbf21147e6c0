// engine.cpp: see engine.h. The engine thread is the only one that touches the runner, the
// scheduler and the live requests; other threads talk to it through the inbox under `mutex`.
#include "engine/engine.h"

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <optional>
#include <thread>
#include <unordered_map>

#include "core/error.h"
#include "core/log.h"
#include "core/system_memory.h"
#include "gpu/gpu_memory_plan.h"
#include "engine/gpu_tensor_parallel_runner.h"
#include "engine/model_runner.h"
#include "engine/scheduler.h"
#include "engine/tensor_parallel_runner.h"
#include "gpu/gpu_collectives.h"
#include "parallel/tp_memory_plan.h"

namespace freekv {

namespace {
using Clock = std::chrono::steady_clock;
double ms_between(Clock::time_point a, Clock::time_point b) { return std::chrono::duration<double, std::milli>(b - a).count(); }
}  // namespace

const char* finish_reason_name(FinishReason reason) {
    switch (reason) {
        case FinishReason::kStop: return "stop";
        case FinishReason::kLength: return "length";
        case FinishReason::kCancelled: return "cancelled";
        case FinishReason::kError: return "error";
        case FinishReason::kTimeout: return "timeout";
    }
    return "?";
}

struct Engine::Impl {
    const LoadedModel& model;
    EngineConfig config;
    std::unique_ptr<ModelRunner> runner;
    Scheduler scheduler;

    // ---- shared with the submitting threads, under `mutex` ----
    mutable std::mutex mutex;
    std::condition_variable wake;
    struct Incoming {
        int64_t id;
        EngineRequest request;
        Clock::time_point submitted;
    };
    std::deque<Incoming> inbox;
    std::vector<int64_t> cancels;
    bool stopping = false;
    int64_t next_id = 1;
    int64_t n_queued = 0;   // submitted, not yet admitted into a slot (nor ended)
    int64_t n_running = 0;  // holding a slot
    EngineMetrics counters;
    std::string memory_plan;  // set once at start-up

    // ---- the engine thread's ----
    struct Live {
        EngineRequest request;
        Sampler sampler;
        int64_t n_predict = 0, n_generated = 0;
        int32_t slot = -1;  // -1 while waiting
        int32_t last_token = -1;
        Clock::time_point submitted, admitted, first_token;
        bool has_token = false;
    };
    std::unordered_map<int64_t, Live> live;
    std::mutex step_mutex;  // held while a step runs; kv_stats() takes it
    std::thread thread;

    Impl(const LoadedModel& m, EngineConfig c)
        : model(m), config(std::move(c)),
          scheduler(SchedulerConfig{}) {}  // the Engine's constructor sets the real one

    void finish(int64_t id, FinishReason reason, std::string error = {});
    void finish_expired();
    void step();
    void loop();
};

void Engine::Impl::finish(int64_t id, FinishReason reason, std::string error) {
    auto it = live.find(id);
    if (it == live.end()) return;
    Live& s = it->second;
    const auto now = Clock::now();
    scheduler.remove(id);
    if (s.slot >= 0) runner->remove_sequence(s.slot);
    RequestOutcome out;
    out.reason = reason;
    out.error = std::move(error);
    out.n_prompt = static_cast<int64_t>(s.request.prompt.size());
    out.n_generated = s.n_generated;
    out.queue_ms = s.slot >= 0 ? ms_between(s.submitted, s.admitted) : ms_between(s.submitted, now);
    out.ttft_ms = s.has_token ? ms_between(s.submitted, s.first_token) : 0;
    out.total_ms = ms_between(s.submitted, now);
    {
        std::lock_guard lock(mutex);
        if (s.slot < 0) --n_queued;
        else --n_running;
        ++counters.finished[static_cast<int>(reason)];
        counters.generated_tokens += s.n_generated;
        counters.queue_seconds += out.queue_ms / 1000;
        counters.ttft_seconds += out.ttft_ms / 1000;
    }
    auto on_done = std::move(s.request.on_done);
    live.erase(it);
    if (on_done) on_done(out);
}

// Ends every request whose timeout_s has passed since it was submitted (waiting or running): its
// slot and KV go at once, like a cancel.
void Engine::Impl::finish_expired() {
    const auto now = Clock::now();
    std::vector<int64_t> expired;
    for (const auto& [id, s] : live)
        if (s.request.timeout_s > 0 && ms_between(s.submitted, now) > s.request.timeout_s * 1000) expired.push_back(id);
    std::sort(expired.begin(), expired.end());
    for (int64_t id : expired) {
        const double limit = live.at(id).request.timeout_s;
        finish(id, FinishReason::kTimeout, fmt::format("the request ran longer than its time limit of {} s", limit));
    }
}

void Engine::Impl::step() {
    // A sequence whose memory cannot be had ends with kError; the others are admitted as usual.
    for (int64_t id : scheduler.admit(runner->n_free())) {
        Live& s = live.at(id);
        try {
            s.slot = runner->add_sequence();
        } catch (const std::exception& e) {
            finish(id, FinishReason::kError, e.what());  // still counted as waiting: it never held a slot
            continue;
        }
        s.admitted = Clock::now();
        {
            std::lock_guard lock(mutex);
            --n_queued;
            ++n_running;
        }
        try {
            runner->begin_prompt(s.slot, static_cast<int64_t>(s.request.prompt.size()));
        } catch (const std::exception& e) {
            finish(id, FinishReason::kError, e.what());
        }
    }
    const std::vector<StepWork> work = scheduler.plan();
    if (work.empty()) return;
    const auto t0 = Clock::now();
    std::vector<int32_t> tokens;
    std::vector<SequenceSpan> spans;
    std::vector<int64_t> out_rows;
    std::vector<int64_t> emitting;  // ids, in out_rows order
    int32_t k = 1;
    int64_t n_decode = 0;
    for (const StepWork& w : work) {
        Live& s = live.at(w.id);
        const auto offset = static_cast<int64_t>(tokens.size());
        if (w.decode) {
            tokens.push_back(s.last_token);
            ++n_decode;
        } else {
            tokens.insert(tokens.end(), s.request.prompt.begin() + w.pos0, s.request.prompt.begin() + w.pos0 + w.n_tok);
        }
        spans.push_back({s.slot, w.pos0, w.n_tok, offset});
        if (w.emits) {
            out_rows.push_back(offset + w.n_tok - 1);
            emitting.push_back(w.id);
            k = std::max(k, s.sampler.candidates_needed(model.config.n_vocab));
        }
    }
    k = static_cast<int32_t>(std::min<int64_t>(k, model.config.n_vocab));
    std::vector<int32_t> ids;
    std::vector<float> values;
    std::vector<FailedSpan> failed;
    try {
        failed = runner->forward_top(tokens, spans, out_rows, k, ids, values);
    } catch (const std::exception& e) {
        // The step's sequences cannot go on (their KV is incomplete); the others are untouched.
        for (const StepWork& w : work) finish(w.id, FinishReason::kError, e.what());
        return;
    }
    // Spans that failed alone end their requests; the rest of the step stands.
    std::vector<StepWork> done;
    std::vector<std::pair<int64_t, std::string>> failed_ids;
    for (const StepWork& w : work) {
        const int32_t slot = live.at(w.id).slot;
        const auto f = std::find_if(failed.begin(), failed.end(), [&](const FailedSpan& x) { return x.seq == slot; });
        if (f == failed.end()) done.push_back(w);
        else failed_ids.emplace_back(w.id, f->error);
    }
    scheduler.commit(done);
    for (auto& [id, error] : failed_ids) finish(id, FinishReason::kError, std::move(error));
    const auto t1 = Clock::now();
    {
        std::lock_guard lock(mutex);
        ++counters.steps;
        counters.decode_rows += n_decode;
        counters.step_seconds += std::chrono::duration<double>(t1 - t0).count();
    }
    for (const StepWork& w : done) {
        if (w.decode) continue;
        Live& s = live.at(w.id);
        if (!s.request.on_prefill) continue;
        try {
            s.request.on_prefill(w.pos0 + w.n_tok);
        } catch (const std::exception& e) {
            finish(w.id, FinishReason::kError, fmt::format("the prefill callback failed: {}", e.what()));
        }
    }
    for (size_t r = 0; r < emitting.size(); ++r) {
        const int64_t id = emitting[r];
        auto it = live.find(id);
        if (it == live.end()) continue;  // failed, or ended by its prefill callback
        Live& s = it->second;
        const auto row = static_cast<size_t>(k) * r;
        const int32_t token = s.sampler.pick(std::span(ids).subspan(row, static_cast<size_t>(k)),
                                             std::span(values).subspan(row, static_cast<size_t>(k)));
        if (!s.has_token) {
            s.has_token = true;
            s.first_token = Clock::now();
        }
        ++s.n_generated;
        if (std::find(s.request.stop_ids.begin(), s.request.stop_ids.end(), token) != s.request.stop_ids.end()) {
            finish(id, FinishReason::kStop);
            continue;
        }
        bool go = true;
        try {
            if (s.request.on_token) go = s.request.on_token(token);
        } catch (const std::exception& e) {
            finish(id, FinishReason::kError, fmt::format("the token callback failed: {}", e.what()));
            continue;
        }
        if (!go) {
            finish(id, FinishReason::kCancelled);
            continue;
        }
        if (s.n_generated >= s.n_predict) {
            finish(id, FinishReason::kLength);
            continue;
        }
        s.last_token = token;
    }
}

void Engine::Impl::loop() {
    for (;;) {
        std::deque<Incoming> arrived;
        std::vector<int64_t> cancelled;
        {
            std::unique_lock lock(mutex);
            wake.wait(lock, [&] { return stopping || !inbox.empty() || !cancels.empty() || !live.empty(); });
            if (stopping) break;
            arrived.swap(inbox);
            cancelled.swap(cancels);
        }
        std::lock_guard step_lock(step_mutex);  // runner and scheduler changes below
        for (Incoming& in : arrived) {
            const int64_t n_prompt = static_cast<int64_t>(in.request.prompt.size());
            const int64_t room = runner->max_tokens() - n_prompt;
            const int64_t n_predict = in.request.max_tokens < 0 ? room : std::min(in.request.max_tokens, room);
            Sampler sampler(in.request.sampling);
            live.emplace(in.id, Live{std::move(in.request), sampler, n_predict, 0, -1, -1, in.submitted, {}, {}, false});
            scheduler.enqueue(in.id, n_prompt);
            if (n_predict == 0) finish(in.id, FinishReason::kLength);
        }
        for (int64_t id : cancelled) finish(id, FinishReason::kCancelled);
        finish_expired();
        try {
            step();
        } catch (const std::exception& e) {
            // Not a failure of one forward (step() handles those): the engine's own bookkeeping
            // failed. End what was admitted rather than the process; waiting requests go on.
            FREEKV_LOG_WARN("engine step failed: {}", e.what());
            std::vector<int64_t> running;
            for (const auto& [id, s] : live)
                if (s.slot >= 0) running.push_back(id);
            std::sort(running.begin(), running.end());
            for (int64_t id : running) finish(id, FinishReason::kError, fmt::format("internal error: {}", e.what()));
        }
    }
    std::vector<int64_t> ids;
    for (const auto& [id, s] : live) ids.push_back(id);
    std::sort(ids.begin(), ids.end());
    for (int64_t id : ids) finish(id, FinishReason::kCancelled, "the engine stopped");
    std::deque<Incoming> never_taken;
    {
        std::lock_guard lock(mutex);
        never_taken.swap(inbox);
        counters.finished[static_cast<int>(FinishReason::kCancelled)] += static_cast<int64_t>(never_taken.size());
        n_queued -= static_cast<int64_t>(never_taken.size());
    }
    for (Incoming& in : never_taken) {
        RequestOutcome out;
        out.reason = FinishReason::kCancelled;
        out.error = "the engine stopped";
        out.n_prompt = static_cast<int64_t>(in.request.prompt.size());
        if (in.request.on_done) in.request.on_done(out);
    }
}

namespace {

constexpr int64_t kGiB = int64_t{1} << 30;
// Default prompt chunks: the GPU's are larger because its per-forward cost is mostly fixed below
// ~2K rows (GEMM efficiency, launches); each still bounds how long one step stalls the decoders.
constexpr int64_t kCpuPrefillChunk = 512, kGpuPrefillChunk = 2048;
constexpr int64_t kDeviceReserve = kGiB;  // left free for cuBLAS workspaces and the CUDA context's growth

double gib(int64_t b) { return static_cast<double>(b) / static_cast<double>(kGiB); }

// Lowers c.max_batch to the sequences of c.n_ctx tokens the GPU memory plan fits under the caps;
// returns the plan in words. Error naming the flags when not one sequence fits.
std::string size_gpu_batch(const ModelConfig& model, EngineConfig& c) {
    const int elem_bytes = c.gpu->dtype() == gpu::GpuDtype::kF32 ? 4 : 2;
    const int64_t chunk = gpu::prefill_can_chunk(elem_bytes, model.head_dim) ? c.prefill_chunk : 0;
    const gpu::GpuMemoryPlan plan = gpu::plan_gpu_memory(model, c.kv_mode, elem_bytes, c.gpu->bytes(), c.n_ctx, chunk);
    const gpu::DeviceMemory dev = gpu::device_memory();
    // The weights are on the device already: what it could still give is free + weights.
    const int64_t device_room = c.gpu->bytes() + dev.free - kDeviceReserve;
    int64_t device_cap = device_room;
    std::string device_why = fmt::format("{:.1f} GiB free on the GPU", gib(dev.free));
    if (c.gpu_memory_gib > 0) {
        device_cap = std::min(device_room, static_cast<int64_t>(c.gpu_memory_gib * static_cast<double>(kGiB)));
        device_why = device_cap < device_room ? fmt::format("--gpu-memory-gib {}", c.gpu_memory_gib)
                                              : fmt::format("{} (--gpu-memory-gib {} is more than the GPU has)", device_why,
                                                            c.gpu_memory_gib);
    }
    const SystemMemory sys = system_memory();
    const int64_t host_cap = c.cpu_kv_gib > 0 ? static_cast<int64_t>(c.cpu_kv_gib * static_cast<double>(kGiB)) : sys.total / 2;
    const std::string host_why = c.cpu_kv_gib > 0 ? fmt::format("--cpu-kv-gib {}", c.cpu_kv_gib)
                                                  : fmt::format("half of the {:.0f} GiB of system RAM", gib(sys.total));
    const int64_t by_device = plan.max_sequences(device_cap, 0);
    const int64_t by_host = plan.host_per_sequence > 0 ? host_cap / plan.host_per_sequence : by_device;
    const int64_t fits = std::min(by_device, by_host);
    if (fits < 1) {
        if (by_device < 1)
            FREEKV_FAIL("{}; not one sequence of {} tokens fits in {:.1f} GiB ({}); lower -c/--ctx-size, raise "
                        "--gpu-memory-gib, or use a mode that keeps the KV in CPU memory (--kv-mode freekv)",
                        plan.describe(), c.n_ctx, gib(device_cap), device_why);
        FREEKV_FAIL("{}; not one sequence of {} tokens fits in a pinned CPU store (system RAM) of {:.1f} GiB ({}); lower "
                    "-c/--ctx-size or raise --cpu-kv-gib",
                    plan.describe(), c.n_ctx, gib(host_cap), host_why);
    }
    std::string words = plan.describe();
    if (fits < c.max_batch) {
        words += fmt::format("; only {} of --max-batch {} sequences fit ({}): the others wait in the queue", fits,
                             c.max_batch, by_device <= by_host ? device_why : host_why);
        c.max_batch = fits;
    } else {
        words += fmt::format("; {} sequences use {:.2f} GiB of the GPU's {:.1f} ({})", c.max_batch,
                             gib(plan.weight_bytes + plan.device_bytes(c.max_batch)), gib(device_cap), device_why);
        if (plan.host_per_sequence > 0)
            words += fmt::format(" and {:.2f} GiB pinned of {:.1f} ({})", gib(plan.host_bytes(c.max_batch)), gib(host_cap),
                                 host_why);
    }
    return words;
}

// The same for tensor-parallel ranks on c.gpu_devices: every GPU must hold the weights, fixed and
// prefill bytes and max_batch sequences of each of its ranks (tests put several ranks on one GPU),
// and the pinned host memory every rank's store.
std::string size_gpu_ranks_batch(const ModelConfig& model, EngineConfig& c) {
    const int elem_bytes = c.gpu_dtype == gpu::GpuDtype::kF32 ? 4 : 2;
    const int64_t chunk = gpu::prefill_can_chunk(elem_bytes, model.head_dim) ? c.prefill_chunk : 0;
    const TpMemoryPlan plan = plan_tp_memory(model, c.kv_mode, elem_bytes, c.tensor_parallel, c.n_ctx, chunk);
    int64_t fits = INT64_MAX;
    std::string limit;
    std::vector<int> devices = c.gpu_devices;
    std::sort(devices.begin(), devices.end());
    devices.erase(std::unique(devices.begin(), devices.end()), devices.end());
    for (int d : devices) {
        gpu::set_device(d);
        const gpu::DeviceMemory dev = gpu::device_memory();
        int64_t cap = dev.free - kDeviceReserve;
        if (c.gpu_memory_gib > 0) cap = std::min(cap, static_cast<int64_t>(c.gpu_memory_gib * static_cast<double>(kGiB)));
        int64_t fixed = 0, per_sequence = 0;
        for (size_t r = 0; r < c.gpu_devices.size(); ++r)
            if (c.gpu_devices[r] == d) {
                const gpu::GpuMemoryPlan& p = plan.ranks[r];
                fixed += p.weight_bytes + p.device_fixed + p.prefill_bytes;
                per_sequence += p.device_per_sequence;
            }
        const int64_t n = cap > fixed && per_sequence > 0 ? (cap - fixed) / per_sequence : 0;
        if (n < fits) {
            fits = n;
            limit = fmt::format("GPU {}: {:.1f} GiB{}", d, gib(cap), c.gpu_memory_gib > 0 ? " (--gpu-memory-gib)" : " free");
        }
    }
    gpu::set_device(c.gpu_devices[0]);
    const int64_t host_cap =
        c.cpu_kv_gib > 0 ? static_cast<int64_t>(c.cpu_kv_gib * static_cast<double>(kGiB)) : system_memory().total / 2;
    const int64_t host = plan.host_per_sequence();
    if (host > 0 && host_cap / host < fits) {
        fits = host_cap / host;
        limit = fmt::format("{:.1f} GiB of pinned CPU memory{}", gib(host_cap), c.cpu_kv_gib > 0 ? " (--cpu-kv-gib)" : "");
    }
    if (fits < 1)
        FREEKV_FAIL("{}; not one sequence of {} tokens fits on every rank ({}); lower -c/--ctx-size, raise --gpu-memory-gib or "
                    "--cpu-kv-gib, or split over more GPUs (--tensor-parallel)",
                    plan.describe(), c.n_ctx, limit);
    std::string words = plan.describe();
    if (fits < c.max_batch) {
        words += fmt::format("\nonly {} of --max-batch {} sequences fit ({}): the others wait in the queue", fits, c.max_batch, limit);
        c.max_batch = fits;
    }
    return words;
}

}  // namespace

Engine::Engine(const LoadedModel& model, EngineConfig config) : impl_(std::make_unique<Impl>(model, std::move(config))) {
    Impl& m = *impl_;
    EngineConfig& c = m.config;
    if (c.n_ctx <= 0) c.n_ctx = model.config.n_ctx_train;
    const bool gpu_ranks = c.tensor_parallel > 1 && !c.gpu_devices.empty();
    if (c.prefill_chunk <= 0) c.prefill_chunk = c.gpu || gpu_ranks ? kGpuPrefillChunk : kCpuPrefillChunk;
    FREEKV_CHECK(c.max_batch >= 1, "the engine needs at least one sequence slot (--max-batch), got {}", c.max_batch);
    FREEKV_CHECK(c.max_waiting >= 0, "the queue length (--max-queue) must be >= 0, got {}", c.max_waiting);
    check_tensor_parallel(c.tensor_parallel, c.gpu != nullptr, c.gpu_devices.size());
    if (gpu_ranks) {
        m.memory_plan = size_gpu_ranks_batch(model.config, c);
        m.runner = make_gpu_tensor_parallel_runner(model, c.kv_mode, c.max_batch, c.n_ctx, c.gpu_dtype, c.gpu_tuning, c.gpu_devices);
    } else {
        if (c.gpu) m.memory_plan = size_gpu_batch(model.config, c);
        m.runner = make_model_runner(model, c.kv_mode, c.max_batch, c.n_ctx, c.gpu, c.gpu_tuning, c.faults, c.tensor_parallel);
    }
    SchedulerConfig sc{c.step_tokens, c.prefill_chunk, m.runner->whole_prompt_prefill()};
    if (m.runner->on_gpu()) sc.max_prefilling = 1;  // the GPU engine stages one prompt's K/V at a time
    m.scheduler = Scheduler(sc);
    m.counters.max_batch = c.max_batch;
    m.counters.n_ctx = c.n_ctx;
    m.thread = std::thread([&m] { m.loop(); });
}

Engine::~Engine() {
    {
        std::lock_guard lock(impl_->mutex);
        impl_->stopping = true;
    }
    impl_->wake.notify_all();
    impl_->thread.join();
}

int64_t Engine::submit(EngineRequest request) {
    Impl& m = *impl_;
    const ModelConfig& c = m.model.config;
    const auto n_prompt = static_cast<int64_t>(request.prompt.size());
    if (n_prompt == 0) FREEKV_FAIL("the prompt is empty");
    if (n_prompt >= m.config.n_ctx)
        FREEKV_FAIL("the prompt has {} tokens but the context is {} (-c/--ctx-size); shorten the prompt or raise -c "
                    "(the model was trained for {})", n_prompt, m.config.n_ctx, c.n_ctx_train);
    for (int32_t id : request.prompt)
        if (id < 0 || id >= c.n_vocab) FREEKV_FAIL("prompt token {} is outside the vocabulary of {}", id, c.n_vocab);
    std::lock_guard lock(m.mutex);
    if (m.stopping) throw EngineBusy("the engine is stopping");
    // Requests beyond the slots wait; at most max_waiting of them.
    if (m.n_queued + m.n_running >= m.config.max_batch + m.config.max_waiting) {
        ++m.counters.rejected;
        throw EngineBusy(fmt::format("{} requests are waiting already (the queue holds {}, --max-queue); retry later",
                                     m.n_queued, m.config.max_waiting));
    }
    const int64_t id = m.next_id++;
    ++m.counters.submitted;
    ++m.n_queued;
    m.counters.prompt_tokens += n_prompt;
    m.inbox.push_back({id, std::move(request), Clock::now()});
    m.wake.notify_one();
    return id;
}

void Engine::cancel(int64_t id) {
    {
        std::lock_guard lock(impl_->mutex);
        impl_->cancels.push_back(id);
    }
    impl_->wake.notify_one();
}

EngineMetrics Engine::metrics() const {
    std::lock_guard lock(impl_->mutex);
    EngineMetrics out = impl_->counters;
    out.waiting = impl_->n_queued;
    out.running = impl_->n_running;
    return out;
}

KvStats Engine::kv_stats() {
    std::lock_guard lock(impl_->step_mutex);
    return impl_->runner->stats();
}

const EngineConfig& Engine::config() const { return impl_->config; }
bool Engine::on_gpu() const { return impl_->runner->on_gpu(); }
const std::string& Engine::memory_plan() const { return impl_->memory_plan; }

}  // namespace freekv
