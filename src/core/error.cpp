// error.cpp: formatting of check failures. The user-facing message comes first; the source
// location follows so that bug reports point at the check.
#include "core/error.h"

namespace freekv::detail {

void throw_check_failure(const char* condition, const std::string& message,
                         const std::source_location& where) {
    throw Error(fmt::format("{} (check `{}` failed at {}:{} in {})", message, condition,
                            where.file_name(), where.line(), where.function_name()));
}

}  // namespace freekv::detail
