// error.h: freekv::Error and the always-on check macros.
// Why: every failure (bad model file, bad flag, broken invariant) reaches the user as one exception
// carrying what went wrong, what to do, and where in the source it was detected.
// Invariants:
//   - FREEKV_CHECK is compiled and evaluated in every build; library code never calls assert/abort.
//   - FREEKV_DCHECK compiles its condition in every build but evaluates it only when
//     FREEKV_DEBUG_CHECKS is set (so typos inside it cannot hide).
#pragma once

#include <fmt/format.h>

#include <source_location>
#include <stdexcept>
#include <string>

namespace freekv {

#ifdef FREEKV_DEBUG_CHECKS
inline constexpr bool kDebugChecks = true;
#else
inline constexpr bool kDebugChecks = false;
#endif

/// An error the user can act on: message says what was wrong and what to do.
class Error : public std::runtime_error {
public:
    explicit Error(const std::string& message) : std::runtime_error(message) {}
};

namespace detail {
[[noreturn]] void throw_check_failure(const char* condition, const std::string& message,
                                      const std::source_location& where);
}  // namespace detail

}  // namespace freekv

#define FREEKV_CHECK(cond, ...)                                                              \
    do {                                                                                     \
        if (!(cond)) [[unlikely]] {                                                          \
            ::freekv::detail::throw_check_failure(#cond, ::fmt::format(__VA_ARGS__),         \
                                                  std::source_location::current());          \
        }                                                                                    \
    } while (0)

#define FREEKV_DCHECK(cond, ...)                                           \
    do {                                                                   \
        if constexpr (::freekv::kDebugChecks) FREEKV_CHECK(cond, __VA_ARGS__); \
    } while (0)

/// Throws freekv::Error with a formatted message and no condition text (for input errors).
#define FREEKV_FAIL(...) throw ::freekv::Error(::fmt::format(__VA_ARGS__))
