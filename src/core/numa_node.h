// numa_node.h: which NUMA node a PCI device (a GPU) sits on, and a thread's preference for
// allocating on a node, so that each tensor-parallel rank's pinned CPU store lies on its GPU's node
// (the store's pages are allocated by the thread that creates it). Read from sysfs; a host with one
// node, or a kernel that refuses the policy, leaves everything as it was.
// Invariants: every function answers -1 / false instead of throwing when the information or the
// permission is missing; nothing here changes another thread's policy.
#pragma once

#include <string>

namespace freekv {

/// The NUMA node of PCI device bus_id ("0000:3b:00.0"; either case), from
/// <sysfs_root>/bus/pci/devices/<bus_id>/numa_node; -1 when unknown or the host has no nodes.
int numa_node_of_pci(const std::string& bus_id, const std::string& sysfs_root = "/sys");

/// Nodes under <sysfs_root>/devices/system/node (node0, node1, ...); 0 when the folder is missing.
int numa_node_count(const std::string& sysfs_root = "/sys");

/// Makes the calling thread allocate new pages on `node` first (MPOL_PREFERRED: other nodes when it
/// is full). False when the kernel refuses (a container without the permission) or node < 0.
bool prefer_numa_node(int node);

/// The node the calling thread prefers (MPOL_PREFERRED), or -1 under any other policy.
int preferred_numa_node();

}  // namespace freekv
