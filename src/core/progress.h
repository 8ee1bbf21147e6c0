// progress.h: a progress line for loading and prefill, so that long work never looks like a hang.
// On a TTY (stderr) one line is redrawn in place; otherwise a log line every 5 s or 10%.
// Invariant: update() is cheap enough to call per chunk; finish() ends the line exactly once.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>

namespace freekv {

class ProgressLine {
public:
    /// label: "load", "prefill"; total: units of work; unit: "tensors", "tok".
    ProgressLine(std::string label, int64_t total, std::string unit, bool enabled = true);
    ~ProgressLine();
    ProgressLine(const ProgressLine&) = delete;
    ProgressLine& operator=(const ProgressLine&) = delete;

    void update(int64_t done);
    void finish();

    /// Globally silences progress output (--no-progress).
    static void set_enabled(bool enabled);

private:
    std::string label_, unit_;
    int64_t total_;
    bool enabled_, tty_, finished_ = false;
    int last_decile_ = 0;
    std::chrono::steady_clock::time_point start_, last_print_;
};

}  // namespace freekv
