// safetensors.cpp: reader for the safetensors format (8-byte little-endian header length, a JSON
// header mapping names to {dtype, shape, data_offsets}, then the raw bytes), and for sharded
// Hugging Face folders. Every offset and size in the header is checked against the file before
// a view is handed out, so a lying header gives an error, never an out-of-bounds read.
#include <nlohmann/json.hpp>

#include <cstring>
#include <filesystem>
#include <set>

#include "core/error.h"
#include "model/loader/tensor_source.h"

namespace freekv {

namespace {

DType parse_safetensors_dtype(const std::string& s, const std::string& tensor, const std::string& path) {
    if (s == "F32") return DType::kF32;
    if (s == "F16") return DType::kF16;
    if (s == "BF16") return DType::kBF16;
    FREEKV_FAIL("{}: tensor '{}' has dtype {}, which freekv does not support (supported: F32, F16, BF16)",
                path, tensor, s);
}

}  // namespace

std::optional<WeightView> TensorSource::find(const std::string& name) const {
    auto it = tensors_.find(name);
    if (it == tensors_.end()) return std::nullopt;
    return it->second;
}

std::string TensorSource::file_of(const std::string& name) const {
    auto it = file_of_tensor_.find(name);
    if (it == file_of_tensor_.end()) return "(synthetic)";
    return files_.at(static_cast<size_t>(it->second))->path();
}

WeightView TensorSource::require(const std::string& name, const std::vector<int64_t>& shape) const {
    auto it = tensors_.find(name);
    if (it == tensors_.end()) {
        std::string where = files_.empty() ? "(no files)" : files_.front()->path();
        if (files_.size() > 1) where += fmt::format(" and {} other files", files_.size() - 1);
        FREEKV_FAIL("tensor '{}' is missing from {}; the checkpoint is incomplete or of another architecture",
                    name, where);
    }
    if (it->second.shape != shape) {
        FREEKV_FAIL("tensor '{}' in {} has shape [{}], expected [{}] from the model config", name,
                    file_of(name), fmt::join(it->second.shape, ", "), fmt::join(shape, ", "));
    }
    return it->second;
}

int64_t TensorSource::total_bytes() const {
    int64_t total = 0;
    for (const auto& [name, view] : tensors_) total += view.rows() * view.row_bytes();
    return total;
}

int TensorSource::add_file(MappedFile file) {
    files_.push_back(std::make_unique<MappedFile>(std::move(file)));
    return static_cast<int>(files_.size()) - 1;
}

WeightView TensorSource::add_owned(const std::string& name, DType dtype, std::vector<int64_t> shape,
                                   std::vector<uint8_t> bytes) {
    FREEKV_CHECK(!tensors_.count(name), "tensor '{}' added twice", name);
    owned_.push_back(std::move(bytes));
    WeightView view{name, dtype, std::move(shape), owned_.back().data()};
    FREEKV_CHECK(static_cast<int64_t>(owned_.back().size()) == view.rows() * view.row_bytes(),
                 "tensor '{}': {} bytes for shape of {}", name, owned_.back().size(), view.rows() * view.row_bytes());
    tensors_[name] = view;
    return view;
}

void TensorSource::add(WeightView view, int file_index) {
    FREEKV_CHECK(!tensors_.count(view.name), "tensor '{}' appears twice (in {} and {})", view.name,
                 file_of(view.name), files_.at(static_cast<size_t>(file_index))->path());
    file_of_tensor_[view.name] = file_index;
    tensors_[view.name] = std::move(view);
}

void TensorSource::add_safetensors_file(const std::string& path) {
    const int index = add_file(MappedFile(path));
    const MappedFile& f = *files_.back();
    if (f.size() < 8) FREEKV_FAIL("{}: file of {} bytes is too short to be safetensors (truncated?)", path, f.size());
    uint64_t header_len = 0;
    std::memcpy(&header_len, f.data(), 8);
    if (header_len > f.size() - 8) {
        FREEKV_FAIL("{}: header claims {} bytes but the file has only {} after the length field "
                    "(truncated or not safetensors)", path, header_len, f.size() - 8);
    }
    nlohmann::json header;
    try {
        header = nlohmann::json::parse(f.data() + 8, f.data() + 8 + header_len);
    } catch (const nlohmann::json::exception& e) {
        FREEKV_FAIL("{}: header is not valid JSON ({})", path, e.what());
    }
    if (!header.is_object()) FREEKV_FAIL("{}: header is not a JSON object", path);
    const uint64_t data_start = 8 + header_len;
    const uint64_t data_size = f.size() - data_start;
    for (const auto& [name, entry] : header.items()) {
        if (name == "__metadata__") continue;
        if (!entry.is_object() || !entry.contains("dtype") || !entry.contains("shape") ||
            !entry.contains("data_offsets") || !entry["dtype"].is_string() || !entry["shape"].is_array() ||
            !entry["data_offsets"].is_array() || entry["data_offsets"].size() != 2) {
            FREEKV_FAIL("{}: header entry for tensor '{}' lacks dtype, shape or data_offsets", path, name);
        }
        WeightView view;
        view.name = name;
        view.dtype = parse_safetensors_dtype(entry["dtype"].get<std::string>(), name, path);
        int64_t numel = 1;
        for (const auto& d : entry["shape"]) {
            if (!d.is_number_integer() || d.get<int64_t>() < 0 || d.get<int64_t>() > (int64_t{1} << 40))
                FREEKV_FAIL("{}: tensor '{}' has an invalid dimension {}", path, name, d.dump());
            view.shape.push_back(d.get<int64_t>());
            numel *= view.shape.back();
            if (numel > (int64_t{1} << 42)) FREEKV_FAIL("{}: tensor '{}' is absurdly large", path, name);
        }
        const auto& off = entry["data_offsets"];
        if (!off[0].is_number_unsigned() || !off[1].is_number_unsigned())
            FREEKV_FAIL("{}: tensor '{}' has non-integer data_offsets", path, name);
        const uint64_t begin = off[0].get<uint64_t>(), end = off[1].get<uint64_t>();
        if (begin > end || end > data_size) {
            FREEKV_FAIL("{}: tensor '{}' has data_offsets [{}, {}] outside the {} data bytes "
                        "(truncated or corrupt file)", path, name, begin, end, data_size);
        }
        const uint64_t expected = static_cast<uint64_t>(numel) * dtype_size(view.dtype);
        if (end - begin != expected) {
            FREEKV_FAIL("{}: tensor '{}' spans {} bytes but shape [{}] of {} needs {}", path, name,
                        end - begin, fmt::join(view.shape, ", "), dtype_name(view.dtype), expected);
        }
        view.data = f.data() + data_start + begin;
        add(std::move(view), index);
    }
}

std::unique_ptr<TensorSource> open_safetensors_folder(const std::string& folder) {
    namespace fs = std::filesystem;
    auto source = std::make_unique<TensorSource>();
    const fs::path dir(folder);
    const fs::path index_path = dir / "model.safetensors.index.json";
    if (fs::exists(index_path)) {
        nlohmann::json index;
        try {
            index = nlohmann::json::parse(read_text_file(index_path.string()));
        } catch (const nlohmann::json::exception& e) {
            FREEKV_FAIL("{}: not valid JSON ({})", index_path.string(), e.what());
        }
        if (!index.contains("weight_map") || !index["weight_map"].is_object())
            FREEKV_FAIL("{}: has no weight_map object", index_path.string());
        std::set<std::string> shards;
        for (const auto& [name, shard] : index["weight_map"].items()) {
            if (!shard.is_string()) FREEKV_FAIL("{}: weight_map entry '{}' is not a file name", index_path.string(), name);
            const std::string s = shard.get<std::string>();
            if (s.find('/') != std::string::npos || s.find("..") != std::string::npos)
                FREEKV_FAIL("{}: shard name '{}' must be a plain file name", index_path.string(), s);
            shards.insert(s);
        }
        for (const auto& s : shards) {
            const fs::path p = dir / s;
            if (!fs::exists(p)) FREEKV_FAIL("{}: shard {} listed in the index is missing", folder, s);
            source->add_safetensors_file(p.string());
        }
        for (const auto& [name, shard] : index["weight_map"].items()) {
            if (!source->contains(name))
                FREEKV_FAIL("tensor '{}' is listed in {} for shard {} but is not in that shard", name,
                            index_path.string(), shard.get<std::string>());
        }
        return source;
    }
    const fs::path single = dir / "model.safetensors";
    if (!fs::exists(single))
        FREEKV_FAIL("{} has neither model.safetensors nor model.safetensors.index.json; pass a Hugging Face "
                    "model folder or a .gguf file to -m", folder);
    source->add_safetensors_file(single.string());
    return source;
}

}  // namespace freekv
