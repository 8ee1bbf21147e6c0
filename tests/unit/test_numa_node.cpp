// test_numa_node.cpp: the NUMA helpers (core/numa_node.h): a PCI device's node and the node count
// read from a sysfs tree (a fake one, so that every case runs on a one-node host: a node, "-1", a
// missing file, an upper-case bus id), and a thread's preference set and read back.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <thread>

#include "core/numa_node.h"

namespace freekv {
namespace {

namespace fs = std::filesystem;

struct FakeSysfs {
    fs::path root = fs::temp_directory_path() / ("freekv-sysfs-" + std::to_string(::getpid()));
    FakeSysfs() {
        fs::remove_all(root);
        write("bus/pci/devices/0000:3b:00.0/numa_node", "1\n");
        write("bus/pci/devices/0000:86:00.0/numa_node", "-1\n");
        fs::create_directories(root / "bus/pci/devices/0000:af:00.0");  // no numa_node file
        for (const char* d : {"node0", "node1", "possible"}) fs::create_directories(root / "devices/system/node" / d);
    }
    ~FakeSysfs() { fs::remove_all(root); }
    void write(const std::string& rel, const std::string& text) {
        fs::create_directories((root / rel).parent_path());
        std::ofstream(root / rel) << text;
    }
};

TEST(NumaNode, ReadsAPciDevicesNodeFromSysfs) {
    const FakeSysfs sys;
    EXPECT_EQ(numa_node_of_pci("0000:3b:00.0", sys.root.string()), 1);
    EXPECT_EQ(numa_node_of_pci("0000:3B:00.0", sys.root.string()), 1);  // cudaDeviceGetPCIBusId writes upper case
    EXPECT_EQ(numa_node_of_pci("0000:86:00.0", sys.root.string()), -1);
    EXPECT_EQ(numa_node_of_pci("0000:af:00.0", sys.root.string()), -1);
    EXPECT_EQ(numa_node_of_pci("0000:00:00.0", sys.root.string()), -1);
    EXPECT_EQ(numa_node_count(sys.root.string()), 2);  // "possible" is not a node
    EXPECT_EQ(numa_node_count((sys.root / "nowhere").string()), 0);
}

TEST(NumaNode, AThreadPrefersTheNodeItAskedFor) {
    EXPECT_FALSE(prefer_numa_node(-1));
    std::thread t([] {
        if (!prefer_numa_node(0)) GTEST_SKIP() << "the kernel refuses set_mempolicy here (a container without the permission)";
        EXPECT_EQ(preferred_numa_node(), 0);
    });
    t.join();
    // Another thread's policy is untouched.
    EXPECT_EQ(preferred_numa_node(), -1);
}

}  // namespace
}  // namespace freekv
