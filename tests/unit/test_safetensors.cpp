// test_safetensors.cpp: the safetensors reader accepts well-formed files and rejects every kind of
// malformed one with an Error that names the file or tensor and the problem (never a crash).
#include <gtest/gtest.h>

#include <cstring>

#include "core/error.h"
#include "core/mapped_file.h"
#include "model/llama_weights.h"
#include "model/loader/tensor_source.h"
#include "test_util.h"

namespace freekv {
namespace {

std::string safetensors_bytes(const std::string& header, const std::string& data) {
    std::string out(8, '\0');
    const uint64_t n = header.size();
    std::memcpy(out.data(), &n, 8);
    return out + header + data;
}

// Expects loading `bytes` as model.safetensors to throw an Error containing every `needle`.
void expect_rejected(const std::string& bytes, std::initializer_list<std::string> needles) {
    test::TempDir dir("freekv-st");
    test::write_file(dir.path / "model.safetensors", bytes);
    try {
        open_safetensors_folder(dir.path.string());
        ADD_FAILURE() << "expected an error";
    } catch (const Error& e) {
        const std::string msg = e.what();
        for (const auto& n : needles) EXPECT_NE(msg.find(n), std::string::npos) << "message: " << msg << "\nmissing: " << n;
    }
}

TEST(Safetensors, ReadsTensors) {
    test::TempDir dir("freekv-st");
    std::string data(12, '\0');
    const float v[3] = {1.0f, -2.0f, 3.5f};
    std::memcpy(data.data(), v, 12);
    test::write_file(dir.path / "model.safetensors",
                     safetensors_bytes(R"({"__metadata__":{"a":"b"},"w":{"dtype":"F32","shape":[3],"data_offsets":[0,12]}})", data));
    auto src = open_safetensors_folder(dir.path.string());
    auto w = src->find("w");
    ASSERT_TRUE(w);
    EXPECT_EQ(w->shape, std::vector<int64_t>{3});
    EXPECT_EQ(static_cast<const float*>(w->data)[2], 3.5f);
}

TEST(Safetensors, RejectsTruncatedLength) { expect_rejected("abc", {"too short"}); }

TEST(Safetensors, RejectsHeaderLongerThanFile) {
    std::string bytes = safetensors_bytes("{}", "");
    const uint64_t lie = 1 << 20;
    std::memcpy(bytes.data(), &lie, 8);
    expect_rejected(bytes, {"model.safetensors", "header claims 1048576 bytes"});
}

TEST(Safetensors, RejectsBadJson) { expect_rejected(safetensors_bytes("{not json", ""), {"not valid JSON"}); }

TEST(Safetensors, RejectsOffsetsPastEnd) {
    expect_rejected(safetensors_bytes(R"({"w":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}})", std::string(8, '\0')),
                    {"'w'", "outside the 8 data bytes"});
}

TEST(Safetensors, RejectsSizeThatDisagreesWithShape) {
    expect_rejected(safetensors_bytes(R"({"w":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", std::string(8, '\0')),
                    {"'w'", "spans 8 bytes", "needs 12"});
}

TEST(Safetensors, RejectsUnknownDtype) {
    expect_rejected(safetensors_bytes(R"({"w":{"dtype":"F8_E4M3","shape":[2],"data_offsets":[0,2]}})", std::string(2, '\0')),
                    {"'w'", "F8_E4M3", "not support"});
}

TEST(Safetensors, RejectsNegativeDimension) {
    expect_rejected(safetensors_bytes(R"({"w":{"dtype":"F32","shape":[-1],"data_offsets":[0,0]}})", ""),
                    {"'w'", "invalid dimension"});
}

TEST(Safetensors, RejectsMissingFields) {
    expect_rejected(safetensors_bytes(R"({"w":{"dtype":"F32"}})", ""), {"'w'", "lacks"});
}

TEST(Safetensors, MissingFolderFilesNameTheFlag) {
    test::TempDir dir("freekv-st");
    try {
        open_safetensors_folder(dir.path.string());
        ADD_FAILURE() << "expected an error";
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("-m"), std::string::npos) << e.what();
    }
}

TEST(Safetensors, IndexNamingAMissingShardFails) {
    test::TempDir dir("freekv-st");
    test::write_file(dir.path / "model.safetensors.index.json", R"({"weight_map":{"w":"model-00001-of-00002.safetensors"}})");
    EXPECT_THROW(open_safetensors_folder(dir.path.string()), Error);
}

TEST(Safetensors, RequireReportsMissingAndMisshapedTensors) {
    test::TempDir dir("freekv-st");
    test::write_file(dir.path / "model.safetensors",
                     safetensors_bytes(R"({"w":{"dtype":"F32","shape":[3],"data_offsets":[0,12]}})", std::string(12, '\0')));
    auto src = open_safetensors_folder(dir.path.string());
    try {
        src->require("w", {4});
        ADD_FAILURE();
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("has shape [3], expected [4]"), std::string::npos) << e.what();
    }
    try {
        src->require("model.norm.weight", {3});
        ADD_FAILURE();
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("'model.norm.weight' is missing"), std::string::npos) << e.what();
    }
}

TEST(MappedFile, PrefetchReportsEveryByteOnce) {
    test::TempDir dir("freekv-st");
    const std::string bytes((size_t{64} << 20) + 12345, 'x');  // two chunks, the second partial
    test::write_file(dir.path / "f.bin", bytes);
    MappedFile f((dir.path / "f.bin").string());
    size_t seen = 0, calls = 0;
    f.prefetch(0, f.size(), [&](size_t n) {
        seen += n;
        ++calls;
    });
    EXPECT_EQ(seen, bytes.size());
    EXPECT_EQ(calls, 2u);
}

}  // namespace
}  // namespace freekv
