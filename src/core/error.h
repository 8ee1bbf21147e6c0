// error.h: freekv::Error and the always-on check macros.
// Why: every failure (bad model file, bad flag, broken invariant) reaches the user as one exception
// carrying what went wrong, what to do, and where in the source it was detected.
// Invariants:
//   - FREEKV_CHECK is compiled and evaluated in every build; library code never calls assert/abort.
//   - FREEKV_DCHECK compiles its condition in every build but evaluates it only when
//     FREEKV_DEBUG_CHECKS is set (so typos inside it cannot hide).
#pragma once

#include <fmt/format.h>

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
// NOTE: the location is passed as __FILE__/__LINE__/__func__ rather than std::source_location:
// clang 14 (our libFuzzer compiler) with gcc 12's libstdc++ has no <source_location>.
[[noreturn]] void throw_check_failure(const char* condition, const std::string& message, const char* file,
                                      int line, const char* function);
}  // namespace detail

}  // namespace freekv

#define FREEKV_CHECK(cond, ...)                                                              \
    do {                                                                                     \
        if (!(cond)) [[unlikely]] {                                                          \
            ::freekv::detail::throw_check_failure(#cond, ::fmt::format(__VA_ARGS__), __FILE__, \
                                                  __LINE__, __func__);                       \
        }                                                                                    \
    } while (0)

#define FREEKV_DCHECK(cond, ...)                                           \
    do {                                                                   \
        if constexpr (::freekv::kDebugChecks) FREEKV_CHECK(cond, __VA_ARGS__); \
    } while (0)

/// Throws freekv::Error with a formatted message and no condition text (for input errors).
#define FREEKV_FAIL(...) throw ::freekv::Error(::fmt::format(__VA_ARGS__))
