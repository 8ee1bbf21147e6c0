// bench_args.h: the micro-benchmarks' argument parsing: a comma-separated list of integers.
// Invariant: "4096,8192" -> {4096, 8192}; an empty string -> {}.
#pragma once

#include <cstdlib>
#include <vector>

inline std::vector<int> parse_list(const char* s) {
    std::vector<int> out;
    for (const char* p = s; *p;) {
        out.push_back(std::atoi(p));
        while (*p && *p != ',') ++p;
        if (*p == ',') ++p;
    }
    return out;
}
