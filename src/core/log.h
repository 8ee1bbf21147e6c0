// log.h: a thin logger over fmt. Logs, progress and perf go to stderr; program output to stdout.
// Invariant: log calls are thread-safe (one fmt::print per line) and never throw on bad output.
#pragma once

#include <fmt/format.h>

#include <cstdio>

namespace freekv {

enum class LogLevel { kDebug, kInfo, kWarn, kError };

void set_log_level(LogLevel level);
LogLevel log_level();

template <typename... Args>
void log(LogLevel level, fmt::format_string<Args...> format, Args&&... args) {
    if (level < log_level()) return;
    fmt::print(stderr, "{}\n", fmt::format(format, std::forward<Args>(args)...));
}

#define FREEKV_LOG_INFO(...) ::freekv::log(::freekv::LogLevel::kInfo, __VA_ARGS__)
#define FREEKV_LOG_WARN(...) ::freekv::log(::freekv::LogLevel::kWarn, __VA_ARGS__)
#define FREEKV_LOG_DEBUG(...) ::freekv::log(::freekv::LogLevel::kDebug, __VA_ARGS__)

}  // namespace freekv
