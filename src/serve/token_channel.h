// token_channel.h: one request's tokens on their way from the engine thread (push, finish) to the
// HTTP thread that answers it (next). Shared by both through a shared_ptr, so either may go first.
// Invariants: tokens come out in the order they went in; after finish() next() drains what is
// left, then returns the outcome; abandon() makes push() tell the engine to stop (returns false).
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <optional>
#include <variant>

#include "engine/engine.h"

namespace freekv::serve {

class TokenChannel {
public:
    /// Engine thread: a generated token; false once the HTTP side has abandoned the request.
    bool push(int32_t token) {
        {
            std::lock_guard lock(mutex_);
            tokens_.push_back(token);
        }
        ready_.notify_one();
        return !abandoned_.load();
    }
    /// Engine thread: the request has ended.
    void finish(const RequestOutcome& outcome) {
        {
            std::lock_guard lock(mutex_);
            outcome_ = outcome;
        }
        ready_.notify_one();
    }
    /// HTTP thread: the next token, or the outcome once every token has been taken.
    std::variant<int32_t, RequestOutcome> next() {
        std::unique_lock lock(mutex_);
        ready_.wait(lock, [&] { return !tokens_.empty() || outcome_.has_value(); });
        if (!tokens_.empty()) {
            const int32_t t = tokens_.front();
            tokens_.pop_front();
            return t;
        }
        return *outcome_;
    }
    void abandon() { abandoned_.store(true); }

private:
    std::mutex mutex_;
    std::condition_variable ready_;
    std::deque<int32_t> tokens_;
    std::optional<RequestOutcome> outcome_;
    std::atomic<bool> abandoned_{false};
};

}  // namespace freekv::serve
