// tensor_source.h: the tensors and metadata of one model, from safetensors shards or a GGUF file.
// Why: the model code asks for tensors by their Hugging Face name and never learns the file format.
// Invariants: every WeightView handed out stays valid for the life of the TensorSource (the files
// stay mapped); names are unique; each tensor's bytes lie wholly inside its file.
#pragma once

#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "core/mapped_file.h"
#include "tensor/weight.h"

namespace freekv {

class TensorSource {
public:
    /// Finds a tensor by name, or nullopt.
    std::optional<WeightView> find(const std::string& name) const;
    /// Finds a tensor and checks its shape; throws Error naming the tensor, the file and both shapes.
    WeightView require(const std::string& name, const std::vector<int64_t>& shape) const;
    bool contains(const std::string& name) const { return tensors_.count(name) != 0; }
    const std::map<std::string, WeightView>& tensors() const { return tensors_; }
    /// The file a tensor came from (for error messages).
    std::string file_of(const std::string& name) const;
    /// Total bytes of tensor data.
    int64_t total_bytes() const;

    /// Adds the tensors of one safetensors file (validated against the file size).
    void add_safetensors_file(const std::string& path);
    /// Adds a tensor owned by another component (e.g. a GGUF reader).
    void add(WeightView view, int file_index);
    int add_file(MappedFile file);
    /// Adds a tensor whose bytes this source owns (synthetic weights); returns its view.
    WeightView add_owned(const std::string& name, DType dtype, std::vector<int64_t> shape, std::vector<uint8_t> bytes);
    const MappedFile& file(int index) const { return *files_.at(static_cast<size_t>(index)); }
    int n_files() const { return static_cast<int>(files_.size()); }

private:
    std::vector<std::unique_ptr<MappedFile>> files_;
    std::map<std::string, WeightView> tensors_;
    std::map<std::string, int> file_of_tensor_;
    std::vector<std::vector<uint8_t>> owned_;  // bytes of add_owned tensors
};

/// Opens an HF folder's weights: model.safetensors.index.json (sharded) or model.safetensors.
std::unique_ptr<TensorSource> open_safetensors_folder(const std::string& folder);

}  // namespace freekv
