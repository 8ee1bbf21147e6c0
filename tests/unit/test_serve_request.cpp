// test_serve_request.cpp: `freekv serve`'s request checks (every field, every malformed form gets a
// BadRequest that names the field) and the stop-string matcher (text is cut at the first stop
// string even when it arrives split across tokens, and nothing that may start one is sent early);
// chat requests and the Llama 3 / ChatML chat formats.
#include <gtest/gtest.h>

#include <algorithm>
#include <string>
#include <vector>

#include "serve/chat_template.h"
#include "serve/completion_request.h"
#include "serve/stop_matcher.h"
#include "tokenizer/byte_level.h"

namespace freekv::serve {
namespace {

std::string error_of(const std::string& body) {
    try {
        parse_completion_request(body);
    } catch (const BadRequest& e) {
        return e.what();
    }
    return "";
}

TEST(CompletionRequest, ParsesEveryField) {
    const auto r = parse_completion_request(
        R"({"model":"x","prompt":"Hello","max_tokens":7,"temperature":0.5,"top_p":0.9,"top_k":12,"seed":3,"stream":true,"ignore_eos":true,"stop":["a","bc"],"n":1,"user":"u"})");
    ASSERT_TRUE(r.prompt_text.has_value());
    EXPECT_EQ(*r.prompt_text, "Hello");
    EXPECT_EQ(r.max_tokens, 7);
    EXPECT_FLOAT_EQ(*r.temperature, 0.5f);
    EXPECT_FLOAT_EQ(*r.top_p, 0.9f);
    EXPECT_EQ(*r.top_k, 12);
    EXPECT_EQ(*r.seed, 3u);
    EXPECT_TRUE(r.stream);
    EXPECT_TRUE(r.ignore_eos);
    EXPECT_EQ(r.stop, (std::vector<std::string>{"a", "bc"}));
    const auto ids = parse_completion_request(R"({"prompt":[5,0,17],"stop":"x"})");
    EXPECT_FALSE(ids.prompt_text.has_value());
    EXPECT_EQ(ids.prompt_ids, (std::vector<int32_t>{5, 0, 17}));
    EXPECT_EQ(ids.max_tokens, 16);  // the OpenAI default
    EXPECT_FALSE(ids.ignore_eos);
    EXPECT_FALSE(ids.temperature.has_value());
    EXPECT_EQ(ids.stop, std::vector<std::string>{"x"});
}

TEST(CompletionRequest, RejectsMalformedBodiesNamingTheField) {
    const std::pair<const char*, const char*> cases[] = {
        {"{not json", "not valid JSON"},
        {R"({"prompt":"a","max_tokens":9E999})", "not valid JSON"},  // a number past a double (found by fuzzing)
        {"[1,2]", "JSON object"},
        {"{}", "'prompt' is missing"},
        {R"({"prompt":null})", "'prompt' is missing"},
        {R"({"prompt":""})", "'prompt' is empty"},
        {R"({"prompt":[]})", "empty array"},
        {R"({"prompt":["a","b"]})", "one request per prompt"},
        {R"({"prompt":[1,-2]})", "'prompt[]' must be in"},
        {R"({"prompt":[1,2.5]})", "'prompt[]' must be an integer"},
        {R"({"prompt":7})", "string or an array"},
        {R"({"prompt":"a","max_tokens":-1})", "'max_tokens' must be in"},
        {R"({"prompt":"a","max_tokens":"9"})", "'max_tokens' must be an integer"},
        {R"({"prompt":"a","temperature":-0.1})", "'temperature' must be in"},
        {R"({"prompt":"a","top_p":1.5})", "'top_p' must be in"},
        {R"({"prompt":"a","top_k":-3})", "'top_k' must be in"},
        {R"({"prompt":"a","seed":-1})", "'seed' must be in"},
        {R"({"prompt":"a","stream":"yes"})", "'stream' must be true or false"},
        {R"({"prompt":"a","ignore_eos":1})", "'ignore_eos' must be true or false"},
        {R"({"prompt":"a","n":2})", "'n' must be 1"},
        {R"({"prompt":"a","stop":5})", "'stop' must be"},
        {R"({"prompt":"a","stop":["a",3]})", "'stop' must be"},
        {R"({"prompt":"a","stop":["a","b","c","d","e"]})", "at most 4"},
        {R"({"prompt":"a","stop":[""]})", "must not be empty"},
    };
    for (const auto& [body, want] : cases) {
        const std::string got = error_of(body);
        EXPECT_NE(got.find(want), std::string::npos) << body << " -> '" << got << "'";
    }
}

// Feeds pieces and returns what was sent, the pieces' concatenation cut at the first stop.
std::string through(StopMatcher& m, const std::vector<std::string>& pieces, std::vector<std::string>* sent = nullptr) {
    std::string out;
    for (const auto& p : pieces) {
        const std::string s = m.push(p);
        if (sent) sent->push_back(s);
        out += s;
    }
    return out + m.flush();
}

TEST(StopMatcher, CutsAtTheFirstStopStringAcrossPieces) {
    StopMatcher a({"END"});
    EXPECT_EQ(through(a, {"hello E", "N", "D and more"}), "hello ");
    EXPECT_TRUE(a.stopped());
    StopMatcher b({"xyz", "lo w"});
    EXPECT_EQ(through(b, {"hel", "lo", " world"}), "hel");  // "lo w" comes first
    StopMatcher none({"zzz"});
    EXPECT_EQ(through(none, {"a", "bz", "z", "c"}), "abzzc");
    EXPECT_FALSE(none.stopped());
    StopMatcher empty({});
    EXPECT_EQ(through(empty, {"a", "b"}), "ab");
}

TEST(StopMatcher, HoldsBackOnlyWhatMayStartAStopString) {
    StopMatcher m({"STOP"});
    std::vector<std::string> sent;
    through(m, {"abc S", "T", "x"}, &sent);
    ASSERT_EQ(sent.size(), 3u);
    EXPECT_EQ(sent[0], "abc ");  // "S" may start STOP
    EXPECT_EQ(sent[1], "");      // "ST" still may
    EXPECT_EQ(sent[2], "STx");   // it did not
    StopMatcher after({"!"});
    EXPECT_EQ(after.push("a!b"), "a");
    EXPECT_EQ(after.push("more"), "");
    EXPECT_EQ(after.flush(), "");
}

// A byte-level vocabulary (ids 0..255) plus the given added special tokens (ids 256...).
Tokenizer tokenizer_with(const std::vector<std::string>& specials) {
    TokenizerSpec spec;
    for (int i = 0; i < 256; ++i) {
        std::string s;
        append_utf8(s, byte_to_unicode(static_cast<uint8_t>(i)));
        spec.vocab.emplace_back(s, i);
    }
    int32_t id = 256;
    for (const auto& t : specials) {
        AddedToken a;
        a.id = id++;
        a.content = t;
        a.special = true;
        spec.added_tokens.push_back(a);
        spec.vocab.emplace_back(t, a.id);
    }
    PreTokenizerStep bl;
    bl.kind = PreTokenizerStep::Kind::kByteLevel;
    spec.pre_tokenizer.push_back(bl);
    return Tokenizer(spec);
}

TEST(ChatTemplate, RendersChatMLAndStopsAtImEnd) {
    const Tokenizer tok = tokenizer_with({"<|im_start|>", "<|im_end|>"});
    const auto t = ChatTemplate::from_template_text("{% for m in messages %}<|im_start|>{{ m.role }}...", tok);
    ASSERT_TRUE(t);
    EXPECT_EQ(t->format(), ChatFormat::kChatML);
    const std::string text = t->render({{"system", "Be brief."}, {"user", "Hi"}});
    EXPECT_EQ(text, "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
    const auto ids = tok.encode(text);
    EXPECT_EQ(std::count(ids.begin(), ids.end(), 256), 3) << "the markers encode as their special tokens";
    EXPECT_EQ(t->end_token_ids(), std::vector<int32_t>{257});
}

TEST(ChatTemplate, RendersLlama3AndStopsAtEotId) {
    const Tokenizer tok = tokenizer_with({"<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"});
    const auto t = ChatTemplate::from_template_text("{{ bos_token }}<|start_header_id|>...", tok);
    ASSERT_TRUE(t);
    EXPECT_EQ(t->format(), ChatFormat::kLlama3);
    EXPECT_EQ(t->render({{"user", "  Hi there \n"}}),
              "<|start_header_id|>user<|end_header_id|>\n\nHi there<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n");
    EXPECT_EQ(t->end_token_ids(), std::vector<int32_t>{259});
    // No template text: the special tokens alone decide.
    EXPECT_TRUE(ChatTemplate::from_template_text("", tok));
}

TEST(ChatTemplate, UnknownFormatsAndMissingTokensAreRefused) {
    const Tokenizer plain = tokenizer_with({});
    EXPECT_FALSE(ChatTemplate::from_template_text("", plain));
    EXPECT_FALSE(ChatTemplate::from_template_text("<|im_start|>", plain)) << "the template names tokens the tokenizer lacks";
    const Tokenizer chatml = tokenizer_with({"<|im_start|>", "<|im_end|>"});
    EXPECT_FALSE(ChatTemplate::from_template_text("[INST] {{ content }} [/INST]", chatml)) << "a template of another format";
}

TEST(ChatRequest, ParsesMessagesAndRejectsBadOnes) {
    const CompletionRequest r = parse_chat_request(
        R"({"messages":[{"role":"system","content":"s"},{"role":"user","content":"u"}],"max_completion_tokens":7,"stream":true})");
    ASSERT_EQ(r.messages.size(), 2u);
    EXPECT_EQ(r.messages[1].role, "user");
    EXPECT_EQ(r.max_tokens, 7);
    EXPECT_TRUE(r.stream);
    auto chat_error = [](const std::string& body) {
        try {
            parse_chat_request(body);
        } catch (const BadRequest& e) {
            return std::string(e.what());
        }
        return std::string("accepted");
    };
    EXPECT_NE(chat_error(R"({"messages":[]})").find("'messages' must be a non-empty array"), std::string::npos);
    EXPECT_NE(chat_error(R"({"messages":[{"role":"tool","content":"x"}]})").find("role 'tool'"), std::string::npos);
    EXPECT_NE(chat_error(R"({"messages":[{"role":"user","content":[{"type":"text"}]}]})").find("'content' must be a string"),
              std::string::npos);
    EXPECT_NE(chat_error(R"({"prompt":"x"})").find("'messages'"), std::string::npos);
}

}  // namespace
}  // namespace freekv::serve
