// test_serve_request.cpp: `freekv serve`'s request checks (every field, every malformed form gets a
// BadRequest that names the field) and the stop-string matcher (text is cut at the first stop
// string even when it arrives split across tokens, and nothing that may start one is sent early).
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "serve/completion_request.h"
#include "serve/stop_matcher.h"

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
        R"({"model":"x","prompt":"Hello","max_tokens":7,"temperature":0.5,"top_p":0.9,"top_k":12,"seed":3,"stream":true,"stop":["a","bc"],"n":1,"user":"u"})");
    ASSERT_TRUE(r.prompt_text.has_value());
    EXPECT_EQ(*r.prompt_text, "Hello");
    EXPECT_EQ(r.max_tokens, 7);
    EXPECT_FLOAT_EQ(*r.temperature, 0.5f);
    EXPECT_FLOAT_EQ(*r.top_p, 0.9f);
    EXPECT_EQ(*r.top_k, 12);
    EXPECT_EQ(*r.seed, 3u);
    EXPECT_TRUE(r.stream);
    EXPECT_EQ(r.stop, (std::vector<std::string>{"a", "bc"}));
    const auto ids = parse_completion_request(R"({"prompt":[5,0,17],"stop":"x"})");
    EXPECT_FALSE(ids.prompt_text.has_value());
    EXPECT_EQ(ids.prompt_ids, (std::vector<int32_t>{5, 0, 17}));
    EXPECT_EQ(ids.max_tokens, 16);  // the OpenAI default
    EXPECT_FALSE(ids.temperature.has_value());
    EXPECT_EQ(ids.stop, std::vector<std::string>{"x"});
}

TEST(CompletionRequest, RejectsMalformedBodiesNamingTheField) {
    const std::pair<const char*, const char*> cases[] = {
        {"{not json", "not valid JSON"},
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

}  // namespace
}  // namespace freekv::serve
