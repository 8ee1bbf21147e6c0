// test_model_config.cpp: config.json parsing for every supported family and form of the rope
// settings, the Llama 3.1 frequency scaling, and rejection of absurd or unsupported configs
// (integer fields given floats or numbers past their type included).
#include <gtest/gtest.h>

#include <cmath>
#include <numbers>

#include "core/error.h"
#include "model/model_config.h"

namespace freekv {
namespace {

const char* kLlama31 = R"({"model_type":"llama","hidden_size":4096,"intermediate_size":14336,"num_hidden_layers":32,
  "num_attention_heads":32,"num_key_value_heads":8,"vocab_size":128256,"max_position_embeddings":131072,
  "rms_norm_eps":1e-5,"rope_theta":500000.0,"eos_token_id":[128001,128008,128009],"bos_token_id":128000,
  "rope_scaling":{"factor":8.0,"low_freq_factor":1.0,"high_freq_factor":4.0,"original_max_position_embeddings":8192,"rope_type":"llama3"}})";

TEST(ModelConfig, ParsesLlama31) {
    const ModelConfig c = parse_hf_config(kLlama31, "config.json");
    EXPECT_EQ(c.head_dim, 128);
    EXPECT_EQ(c.group_size(), 4);
    EXPECT_EQ(c.rope_scaling, RopeScaling::kLlama3);
    EXPECT_EQ(c.eos_token_ids, (std::vector<int32_t>{128001, 128008, 128009}));
    EXPECT_EQ(c.kv_bytes_per_token(2), 128 * 1024);  // design doc 3.11
    EXPECT_FALSE(c.qkv_bias);
}

TEST(ModelConfig, Llama3ScalingFollowsTheFormula) {
    const ModelConfig c = parse_hf_config(kLlama31, "config.json");
    const auto inv = c.rope_inv_freq();
    ASSERT_EQ(inv.size(), 64u);
    for (size_t i = 0; i < inv.size(); ++i) {
        const double base = 1.0 / std::pow(500000.0, static_cast<double>(2 * i) / 128.0);
        const double wavelen = 2 * std::numbers::pi / base;
        double want = base;
        if (wavelen > 8192.0) want = base / 8.0;                  // low frequencies: divided by the factor
        else if (wavelen >= 2048.0) {                             // smooth interpolation band
            const double smooth = (8192.0 / wavelen - 1.0) / 3.0;
            want = (1 - smooth) * base / 8.0 + smooth * base;
        }
        EXPECT_NEAR(inv[i], want, 1e-6 * want) << i;
    }
    EXPECT_FLOAT_EQ(inv[0], 1.0f);           // highest frequency unchanged
    EXPECT_LT(inv[63], 1.0 / std::pow(500000.0, 126.0 / 128.0) / 7.9);  // lowest frequency scaled
}

TEST(ModelConfig, AcceptsRopeParametersForm) {
    const ModelConfig c = parse_hf_config(R"({"model_type":"llama","hidden_size":512,"intermediate_size":1536,
      "num_hidden_layers":8,"num_attention_heads":8,"num_key_value_heads":2,"head_dim":64,"vocab_size":8192,
      "rope_parameters":{"rope_theta":500000.0,"rope_type":"default"}})", "c.json");
    EXPECT_EQ(c.rope_theta, 500000.0);
    EXPECT_EQ(c.rope_scaling, RopeScaling::kNone);
}

TEST(ModelConfig, Qwen2HasBias) {
    const ModelConfig c = parse_hf_config(R"({"model_type":"qwen2","hidden_size":3584,"intermediate_size":18944,
      "num_hidden_layers":28,"num_attention_heads":28,"num_key_value_heads":4,"vocab_size":152064,
      "rope_theta":1000000.0,"tie_word_embeddings":false})", "c.json");
    EXPECT_TRUE(c.qkv_bias);
    EXPECT_EQ(c.group_size(), 7);
    EXPECT_EQ(c.kv_bytes_per_token(2), 56 * 1024);  // design doc 3.11
}

void expect_error(const std::string& json, const std::string& needle) {
    try {
        parse_hf_config(json, "bad/config.json");
        ADD_FAILURE() << "expected an error for " << json;
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
        EXPECT_NE(std::string(e.what()).find("bad/config.json"), std::string::npos) << e.what();
    }
}

TEST(ModelConfig, RejectsBadConfigs) {
    const std::string base = R"("hidden_size":64,"intermediate_size":64,"num_hidden_layers":2,"vocab_size":10)";
    expect_error(R"({"model_type":"gpt2",)" + base + R"(,"num_attention_heads":4})", "not supported");
    expect_error(R"({"model_type":"llama",)" + base + R"(,"num_attention_heads":4,"num_key_value_heads":3})", "multiple");
    expect_error(R"({"model_type":"llama",)" + base + R"(,"num_attention_heads":0})", "num_attention_heads");
    expect_error(R"({"model_type":"llama","hidden_size":64,"intermediate_size":64,"num_hidden_layers":-3,"vocab_size":10,
      "num_attention_heads":4})", "n_layer");
    expect_error(R"({"model_type":"llama",)" + base + R"(,"num_attention_heads":"four"})", "must be an integer");
    // Floats and integers past the field's type are errors, not casts (fuzz_parsers found the
    // undefined float-to-int conversion these took through nlohmann's get<int>()).
    expect_error(R"({"model_type":"llama",)" + base + R"(,"num_attention_heads":1.27778e+32})", "must be an integer");
    expect_error(R"({"model_type":"llama",)" + base + R"(,"num_attention_heads":4.5})", "must be an integer");
    expect_error(R"({"model_type":"llama",)" + base + R"(,"num_attention_heads":4,"bos_token_id":99999999999})",
                 "bos_token_id");
    expect_error(R"({"model_type":"llama",)" + base + R"(,"num_attention_heads":4,"eos_token_id":[8.88889e+65]})",
                 "eos_token_id");
    expect_error(R"({"model_type":"llama","hidden_size":64})", "missing");
    expect_error(R"({"model_type":"llama",)" + base + R"(,"num_attention_heads":4,"rope_theta":-1})", "rope_theta");
    expect_error(R"({"model_type":"llama",)" + base + R"(,"num_attention_heads":4,"rope_scaling":{"type":"yarn","factor":4}})", "yarn");
    expect_error("[1,2", "not valid JSON");
}

}  // namespace
}  // namespace freekv
