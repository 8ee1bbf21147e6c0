// progress.cpp: TTY-aware progress line (see progress.h).
#include "core/progress.h"

#include <fmt/format.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>

namespace freekv {

namespace {
std::atomic<bool> g_progress_enabled{true};
}

void ProgressLine::set_enabled(bool enabled) { g_progress_enabled.store(enabled); }

ProgressLine::ProgressLine(std::string label, int64_t total, std::string unit, bool enabled)
    : label_(std::move(label)),
      unit_(std::move(unit)),
      total_(total),
      enabled_(enabled && g_progress_enabled.load() && total > 0),
      tty_(isatty(fileno(stderr)) != 0),
      start_(std::chrono::steady_clock::now()),
      last_print_(start_) {}

ProgressLine::~ProgressLine() { finish(); }

void ProgressLine::update(int64_t done) {
    if (!enabled_ || finished_) return;
    const auto now = std::chrono::steady_clock::now();
    const double elapsed = std::chrono::duration<double>(now - start_).count();
    const double rate = elapsed > 0 ? static_cast<double>(done) / elapsed : 0.0;
    const double fraction = static_cast<double>(done) / static_cast<double>(total_);
    if (tty_) {
        if (now - last_print_ < std::chrono::milliseconds(100) && done < total_) return;
        const double eta = rate > 0 ? static_cast<double>(total_ - done) / rate : 0.0;
        fmt::print(stderr, "\r{} {}/{} ({:.0f}%) {:.0f} {}/s ETA {:.0f}s   ", label_, done, total_,
                   100.0 * fraction, rate, unit_, eta);
        std::fflush(stderr);
        last_print_ = now;
        return;
    }
    const int decile = static_cast<int>(fraction * 10.0);
    if (decile > last_decile_ || now - last_print_ >= std::chrono::seconds(5)) {
        fmt::print(stderr, "{} progress, n_{} = {}, progress = {:.2f}\n", label_, unit_, done,
                   fraction);
        last_decile_ = decile;
        last_print_ = now;
    }
}

void ProgressLine::finish() {
    if (!enabled_ || finished_) return;
    finished_ = true;
    if (tty_) {
        fmt::print(stderr, "\r\033[K");
        std::fflush(stderr);
    }
}

}  // namespace freekv
