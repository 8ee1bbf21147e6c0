// error.cpp: formatting of check failures. The user-facing message comes first; the source
// location follows so that bug reports point at the check.
#include "core/error.h"

namespace freekv::detail {

void throw_check_failure(const char* condition, const std::string& message, const char* file, int line,
                         const char* function) {
    throw Error(fmt::format("{} (check `{}` failed at {}:{} in {})", message, condition, file, line, function));
}

}  // namespace freekv::detail
