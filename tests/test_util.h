// test_util.h: helpers shared by the test suites: where ../shared and the fixtures are, temp
// files, and the normalized mean squared error used to compare logits.
#pragma once

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <cstdint>
#include <optional>
#include <random>
#include <span>
#include <string>
#include <vector>
#include <unistd.h>

namespace freekv::test {

/// ../shared beside the checkout (or $FREEKV_SHARED_DIR); nullopt when it does not exist.
inline std::optional<std::filesystem::path> shared_dir() {
    if (const char* env = std::getenv("FREEKV_SHARED_DIR")) {
        if (std::filesystem::exists(env)) return std::filesystem::path(env);
        return std::nullopt;
    }
    const auto p = std::filesystem::path(FREEKV_SOURCE_DIR) / ".." / "shared";
    if (std::filesystem::exists(p)) return std::filesystem::canonical(p);
    return std::nullopt;
}

inline std::optional<std::filesystem::path> ref_model_dir() {
    auto s = shared_dir();
    if (!s) return std::nullopt;
    auto p = *s / "models" / "freekv-ref-28m";
    if (!std::filesystem::exists(p / "config.json")) return std::nullopt;
    return p;
}

inline std::filesystem::path source_dir() { return FREEKV_SOURCE_DIR; }

/// n token ids drawn uniformly from [0, n_vocab), a pure function of the seed.
inline std::vector<int32_t> random_tokens(int64_t n, int64_t n_vocab, uint32_t seed) {
    std::mt19937 rng(seed);
    std::vector<int32_t> t(static_cast<size_t>(n));
    for (auto& x : t) x = static_cast<int32_t>(rng() % static_cast<uint32_t>(n_vocab));
    return t;
}

/// A fresh, empty directory under the system temp dir, removed by the caller's TempDir.
struct TempDir {
    std::filesystem::path path;
    explicit TempDir(const std::string& name) {
        path = std::filesystem::temp_directory_path() /
               (name + "-" + std::to_string(std::rand()) + "-" + std::to_string(::getpid()));
        std::filesystem::remove_all(path);
        std::filesystem::create_directories(path);
    }
    ~TempDir() { std::filesystem::remove_all(path); }
};

inline void write_file(const std::filesystem::path& p, const std::string& bytes) {
    std::ofstream out(p, std::ios::binary);
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

/// sum((a - b)^2) / sum(b^2): 0 for identical vectors, 1 for a = 0.
inline double nmse(std::span<const float> a, std::span<const float> b) {
    double num = 0, den = 0;
    for (size_t i = 0; i < a.size(); ++i) {
        num += (static_cast<double>(a[i]) - b[i]) * (static_cast<double>(a[i]) - b[i]);
        den += static_cast<double>(b[i]) * b[i];
    }
    return den > 0 ? num / den : num;
}

}  // namespace freekv::test
