// system_memory.cpp: reads MemTotal and MemAvailable (kB) from /proc/meminfo.
#include "core/system_memory.h"

#include <fstream>
#include <string>

namespace freekv {

SystemMemory system_memory() {
    std::ifstream in("/proc/meminfo");
    std::string key, unit;
    int64_t value = 0;
    SystemMemory m;
    while (in >> key >> value >> unit) {
        if (key == "MemTotal:") m.total = value * 1024;
        if (key == "MemAvailable:") m.available = value * 1024;
    }
    return m;
}

}  // namespace freekv
