// numa_node.cpp: see numa_node.h.
#include "core/numa_node.h"

#include <linux/mempolicy.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <filesystem>
#include <fstream>

namespace freekv {

int numa_node_of_pci(const std::string& bus_id, const std::string& sysfs_root) {
    std::string id = bus_id;
    std::transform(id.begin(), id.end(), id.begin(), [](unsigned char ch) { return static_cast<char>(std::tolower(ch)); });
    std::ifstream in(std::filesystem::path(sysfs_root) / "bus/pci/devices" / id / "numa_node");
    int node = -1;
    if (!(in >> node)) return -1;
    return node >= 0 ? node : -1;
}

int numa_node_count(const std::string& sysfs_root) {
    std::error_code ec;
    const std::filesystem::path dir = std::filesystem::path(sysfs_root) / "devices/system/node";
    int n = 0;
    for (const auto& e : std::filesystem::directory_iterator(dir, ec)) {
        const std::string name = e.path().filename().string();
        if (name.size() > 4 && name.compare(0, 4, "node") == 0 &&
            std::all_of(name.begin() + 4, name.end(), [](unsigned char ch) { return std::isdigit(ch) != 0; }))
            ++n;
    }
    return n;
}

bool prefer_numa_node(int node) {
    constexpr int kMaskBits = 8 * static_cast<int>(sizeof(unsigned long));
    if (node < 0 || node >= kMaskBits) return false;
    const unsigned long mask = 1UL << node;
    return syscall(SYS_set_mempolicy, MPOL_PREFERRED, &mask, static_cast<unsigned long>(kMaskBits) + 1) == 0;
}

int preferred_numa_node() {
    int mode = -1;
    unsigned long mask = 0;
    constexpr unsigned long kMaskBits = 8 * sizeof(unsigned long);
    if (syscall(SYS_get_mempolicy, &mode, &mask, kMaskBits + 1, nullptr, 0UL) != 0 || mode != MPOL_PREFERRED || mask == 0)
        return -1;
    return __builtin_ctzl(mask);
}

}  // namespace freekv
