// cpu_transfer_engine.cpp: recall worker + scatter thread with double-buffered staging and
// per-layer tickets (design doc 4.7). All shared state is guarded by one mutex; data copies run
// outside it. Ordering: a staging buffer is refilled only after the scatter thread released it;
// a layer's ticket advances only after its last chunk was scattered.
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <mutex>
#include <random>
#include <thread>
#include <vector>

#include "core/error.h"
#include "kv/kv_manager.h"
#include "transfer/transfer_engine.h"

namespace freekv {

namespace {

class CpuTransferEngine final : public TransferEngine {
public:
    CpuTransferEngine(KvManager& kv, int64_t n_layer, int64_t chunk_blocks)
        : kv_(kv),
          chunk_blocks_(chunk_blocks),
          block_floats_(kv.block_bytes() / static_cast<int64_t>(sizeof(float))),
          done_(static_cast<size_t>(n_layer), -1),
          submitted_(static_cast<size_t>(n_layer), -1) {
        if (const char* d = std::getenv("FREEKV_TRANSFER_DELAY_US")) delay_us_ = std::atoi(d);
        for (auto& b : staging_) b.data.resize(static_cast<size_t>(chunk_blocks_ * block_floats_));
        worker_ = std::thread([this] { worker_loop(); });
        scatter_ = std::thread([this] { scatter_loop(); });
    }

    ~CpuTransferEngine() override {
        {
            std::lock_guard<std::mutex> lock(mutex_);
            stop_ = true;
        }
        cv_.notify_all();
        worker_.join();
        scatter_.join();
    }

    void submit(int64_t il, int64_t step, std::function<RecallPlan()> plan_fn) override {
        std::lock_guard<std::mutex> lock(mutex_);
        FREEKV_CHECK(step > submitted_[static_cast<size_t>(il)], "layer {} step {} submitted after step {}", il, step,
                     submitted_[static_cast<size_t>(il)]);
        submitted_[static_cast<size_t>(il)] = step;
        tasks_.push_back({il, step, std::move(plan_fn)});
        cv_.notify_all();
    }

    void wait(int64_t il, int64_t step) override {
        std::unique_lock<std::mutex> lock(mutex_);
        const auto l = static_cast<size_t>(il);
        if (submitted_[l] < step) return;  // nothing was submitted for this step
        cv_.wait(lock, [&] { return done_[l] >= step || error_; });
        if (error_) FREEKV_FAIL("background recall failed: {}", error_message_);
    }

    void wait_all() override {
        std::unique_lock<std::mutex> lock(mutex_);
        cv_.wait(lock, [&] { return (tasks_.empty() && !busy_) || error_; });
        if (error_) FREEKV_FAIL("background recall failed: {}", error_message_);
    }

    void recall_sync(const RecallPlan& plan) override {
        for (const RecallJob& job : plan.jobs) kv_.recall_now(plan.il, job);
        sync_jobs_ += static_cast<int64_t>(plan.jobs.size());
        sync_bytes_ += static_cast<int64_t>(plan.jobs.size()) * kv_.stored_block_bytes();  // read from the store
    }

    TransferCounters counters() const override {
        return {sync_jobs_.load(), background_jobs_.load(), sync_bytes_.load(), background_bytes_.load()};
    }

private:
    struct Task {
        int64_t il, step;
        std::function<RecallPlan()> plan_fn;
    };
    struct Staging {
        std::vector<float> data;
        bool full = false;  // filled by the worker, not yet scattered
        int64_t il = 0;
        std::vector<RecallJob> jobs;
    };

    void jitter() {
        if (delay_us_ <= 0) return;
        thread_local std::mt19937 rng(std::random_device{}());
        std::this_thread::sleep_for(std::chrono::microseconds(rng() % static_cast<uint32_t>(delay_us_)));
    }

    void worker_loop() {
        for (;;) {
            Task task;
            {
                std::unique_lock<std::mutex> lock(mutex_);
                cv_.wait(lock, [&] { return stop_ || !tasks_.empty(); });
                if (stop_ && tasks_.empty()) return;
                task = std::move(tasks_.front());
                tasks_.pop_front();
                busy_ = true;
            }
            jitter();
            try {
                const RecallPlan plan = task.plan_fn();
                move_blocks(plan);
                background_jobs_ += static_cast<int64_t>(plan.jobs.size());
                background_bytes_ += static_cast<int64_t>(plan.jobs.size()) * kv_.stored_block_bytes();
            } catch (const std::exception& e) {
                std::lock_guard<std::mutex> lock(mutex_);
                error_ = true;
                error_message_ = e.what();
            }
            {
                std::unique_lock<std::mutex> lock(mutex_);
                // The ticket advances only once the scatter thread has emptied both buffers.
                cv_.wait(lock, [&] { return !staging_[0].full && !staging_[1].full; });
                done_[static_cast<size_t>(task.il)] = task.step;
                busy_ = false;
            }
            cv_.notify_all();
        }
    }

    // Copies the plan's blocks chunk by chunk into alternating staging buffers.
    void move_blocks(const RecallPlan& plan) {
        const auto n = static_cast<int64_t>(plan.jobs.size());
        for (int64_t first = 0, chunk = 0; first < n; first += chunk_blocks_, ++chunk) {
            Staging& buffer = staging_[static_cast<size_t>(chunk % 2)];
            {
                std::unique_lock<std::mutex> lock(mutex_);
                cv_.wait(lock, [&] { return !buffer.full; });
            }
            const int64_t count = std::min(chunk_blocks_, n - first);
            buffer.jobs.assign(plan.jobs.begin() + first, plan.jobs.begin() + first + count);
            buffer.il = plan.il;
            for (int64_t i = 0; i < count; ++i) {
                const RecallJob& job = buffer.jobs[static_cast<size_t>(i)];
                kv_.read_block(job.seq, job.page, plan.il, job.ikv, buffer.data.data() + i * block_floats_);
            }
            jitter();
            {
                std::lock_guard<std::mutex> lock(mutex_);
                buffer.full = true;
                scatter_queue_.push_back(static_cast<int>(chunk % 2));
            }
            cv_.notify_all();
        }
    }

    void scatter_loop() {
        for (;;) {
            int index = 0;
            {
                std::unique_lock<std::mutex> lock(mutex_);
                cv_.wait(lock, [&] { return stop_ || !scatter_queue_.empty(); });
                if (scatter_queue_.empty()) return;  // stopping
                index = scatter_queue_.front();
                scatter_queue_.pop_front();
            }
            Staging& buffer = staging_[static_cast<size_t>(index)];
            jitter();
            for (size_t i = 0; i < buffer.jobs.size(); ++i)
                kv_.scatter_block(buffer.il, buffer.jobs[i], buffer.data.data() + static_cast<int64_t>(i) * block_floats_);
            {
                std::lock_guard<std::mutex> lock(mutex_);
                buffer.full = false;
            }
            cv_.notify_all();
        }
    }

    KvManager& kv_;
    const int64_t chunk_blocks_, block_floats_;
    int delay_us_ = 0;
    std::mutex mutex_;
    std::condition_variable cv_;
    std::deque<Task> tasks_;
    std::deque<int> scatter_queue_;
    Staging staging_[2];
    std::vector<int64_t> done_, submitted_;
    bool stop_ = false, busy_ = false, error_ = false;
    std::string error_message_;
    std::atomic<int64_t> sync_jobs_{0}, background_jobs_{0}, sync_bytes_{0}, background_bytes_{0};
    std::thread worker_, scatter_;
};

}  // namespace

std::unique_ptr<TransferEngine> make_cpu_transfer_engine(KvManager& kv, int64_t n_layer, int64_t chunk_blocks) {
    return std::make_unique<CpuTransferEngine>(kv, n_layer, chunk_blocks);
}

}  // namespace freekv
