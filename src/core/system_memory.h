// system_memory.h: the host's RAM as /proc/meminfo reports it, for memory plans and for error
// messages about pinned memory. Invariant: never throws; fields are 0 where unknown.
#pragma once

#include <cstdint>

namespace freekv {

struct SystemMemory {
    int64_t total = 0, available = 0;  // bytes: MemTotal, MemAvailable
};
SystemMemory system_memory();

}  // namespace freekv
