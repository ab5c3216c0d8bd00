// Reference dumper for realm's golden tests, written against llama.cpp's public
// llama.h / gguf.h API (llama-cpp-python 0.3.36, vendored llama.cpp 0c1e570).
//
//   reference sysinfo                            llama_print_system_info()
//   reference meta     -m MODEL                  model metadata + vocab facts as JSON
//   reference tokenize -m MODEL -i STRINGS.json  STRINGS.json: array of strings
//   reference greedy   -m MODEL -i PROMPTS.json  PROMPTS.json: array of {"prompt": s, "n": k}
//
// Greedy options: -n N (default 32), -t THREADS (2), -c N_CTX (2048),
// --fa on|off|auto (off), --logits-dir DIR (write the first prompt's
// first-step logits to DIR/greedy_0.f32, little-endian f32).
// Output is JSON on stdout: arrays with one element per line.

#include "gguf.h"
#include "llama.h"

#include <nlohmann/json.hpp>

#include <cinttypes>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <map>
#include <numeric>
#include <string>
#include <vector>
#include <algorithm>

using json = nlohmann::json;

[[noreturn]] static void die(const std::string & msg) {
    fprintf(stderr, "reference: %s\n", msg.c_str());
    exit(1);
}

// Replace invalid UTF-8 like Rust's String::from_utf8_lossy (one U+FFFD per
// maximal invalid subpart).
static std::string utf8_lossy(const std::string & s) {
    std::string out;
    const auto * b = (const unsigned char *) s.data();
    const size_t n = s.size();
    size_t i = 0;
    while (i < n) {
        const unsigned char c = b[i];
        if (c < 0x80) { out += (char) c; i++; continue; }
        size_t len = 0;
        unsigned char lo = 0x80, hi = 0xBF;
        if      (c >= 0xC2 && c <= 0xDF) { len = 2; }
        else if (c == 0xE0)              { len = 3; lo = 0xA0; }
        else if (c >= 0xE1 && c <= 0xEC) { len = 3; }
        else if (c == 0xED)              { len = 3; hi = 0x9F; }
        else if (c >= 0xEE && c <= 0xEF) { len = 3; }
        else if (c == 0xF0)              { len = 4; lo = 0x90; }
        else if (c >= 0xF1 && c <= 0xF3) { len = 4; }
        else if (c == 0xF4)              { len = 4; hi = 0x8F; }
        size_t k = 1; // bytes of a valid prefix consumed so far
        if (len) {
            for (; k < len && i + k < n; k++) {
                const unsigned char cc = b[i + k];
                const unsigned char l = k == 1 ? lo : 0x80, h = k == 1 ? hi : 0xBF;
                if (cc < l || cc > h) break;
            }
        }
        if (len && k == len) {
            out.append(s, i, len);
        } else {
            out += "\xEF\xBF\xBD";
        }
        i += k;
    }
    return out;
}

static bool utf8_valid(const std::string & s) { return utf8_lossy(s) == s; }

// JSON string literal; invalid UTF-8 is replaced lossily first.
static std::string jstr(const std::string & raw) {
    const std::string s = utf8_lossy(raw);
    std::string o = "\"";
    for (unsigned char c : s) {
        switch (c) {
            case '"':  o += "\\\""; break;
            case '\\': o += "\\\\"; break;
            case '\n': o += "\\n";  break;
            case '\r': o += "\\r";  break;
            case '\t': o += "\\t";  break;
            default:
                if (c < 0x20 || c == 0x7F) {
                    char buf[8];
                    snprintf(buf, sizeof(buf), "\\u%04x", c);
                    o += buf;
                } else {
                    o += (char) c;
                }
        }
    }
    return o + "\"";
}

static std::string jfloat(double v) {
    if (!std::isfinite(v)) return "null";
    char buf[32];
    snprintf(buf, sizeof(buf), "%.9g", v); // round-trips f32
    return buf;
}

static std::string jids(const std::vector<llama_token> & ids) {
    std::string o = "[";
    for (size_t i = 0; i < ids.size(); i++) {
        if (i) o += ",";
        o += std::to_string(ids[i]);
    }
    return o + "]";
}

static std::string hex(const std::string & s) {
    std::string o;
    char buf[4];
    for (unsigned char c : s) { snprintf(buf, sizeof(buf), "%02x", c); o += buf; }
    return o;
}

static std::vector<llama_token> tokenize(const llama_vocab * vocab, const std::string & text, bool add_special, bool parse_special) {
    int n = -llama_tokenize(vocab, text.data(), (int32_t) text.size(), nullptr, 0, add_special, parse_special);
    if (n < 0) n = -n; // zero-length result returns 0
    std::vector<llama_token> ids(n);
    const int got = llama_tokenize(vocab, text.data(), (int32_t) text.size(), ids.data(), n, add_special, parse_special);
    if (got != n) die("tokenize size mismatch");
    return ids;
}

static std::string piece(const llama_vocab * vocab, llama_token id, bool special) {
    std::string buf(64, '\0');
    int n = llama_token_to_piece(vocab, id, buf.data(), (int32_t) buf.size(), 0, special);
    if (n < 0) {
        buf.resize(-n);
        n = llama_token_to_piece(vocab, id, buf.data(), (int32_t) buf.size(), 0, special);
    }
    buf.resize(n);
    return buf;
}

// Pieces of all tokens concatenated as raw bytes (special tokens not rendered).
static std::string detok(const llama_vocab * vocab, const std::vector<llama_token> & ids) {
    std::string s;
    for (auto id : ids) s += piece(vocab, id, false);
    return s;
}

static json read_json(const std::string & path) {
    std::ifstream f(path);
    if (!f) die("cannot open " + path);
    return json::parse(f);
}

static void quiet_log(ggml_log_level level, const char * text, void *) {
    if (level >= GGML_LOG_LEVEL_WARN && level != GGML_LOG_LEVEL_CONT) fputs(text, stderr);
}

static llama_model * load_model(const std::string & path, bool vocab_only) {
    llama_model_params mp = llama_model_default_params();
    mp.n_gpu_layers = 0;
    mp.vocab_only   = vocab_only;
    llama_model * model = llama_model_load_from_file(path.c_str(), mp);
    if (!model) die("cannot load model " + path);
    return model;
}

// ---------------------------------------------------------------- tokenize

static void run_tokenize(const llama_vocab * vocab, const json & input) {
    // llama-tokenize's defaults: add_special only if the model wants BOS, parse_special = true.
    const bool add_special = llama_vocab_get_add_bos(vocab);
    printf("[\n");
    for (size_t i = 0; i < input.size(); i++) {
        const std::string text = input[i].get<std::string>();
        const auto ids    = tokenize(vocab, text, add_special, true);
        const auto ids_ns = tokenize(vocab, text, add_special, false);
        printf("{\"text\":%s,\"ids\":%s,\"ids_no_parse_special\":%s,\"decoded\":%s}%s\n",
               jstr(text).c_str(), jids(ids).c_str(), jids(ids_ns).c_str(),
               jstr(detok(vocab, ids)).c_str(), i + 1 < input.size() ? "," : "");
    }
    printf("]\n");
}

// ---------------------------------------------------------------- greedy

struct greedy_opts {
    int n_predict = 32;
    int n_threads = 2;
    int n_ctx     = 2048;
    llama_flash_attn_type fa = LLAMA_FLASH_ATTN_TYPE_DISABLED;
    std::string logits_dir;
};

static int argmax(const float * v, int n) {
    int best = 0; // first maximum wins, like llama_sampler_init_greedy
    for (int i = 1; i < n; i++) if (v[i] > v[best]) best = i;
    return best;
}

static void decode_or_die(llama_context * ctx, const std::vector<llama_token> & toks, llama_pos pos0) {
    llama_batch batch = llama_batch_init((int32_t) toks.size(), 0, 1);
    for (size_t i = 0; i < toks.size(); i++) {
        batch.token[i]     = toks[i];
        batch.pos[i]       = pos0 + (llama_pos) i;
        batch.n_seq_id[i]  = 1;
        batch.seq_id[i][0] = 0;
        batch.logits[i]    = i + 1 == toks.size();
    }
    batch.n_tokens = (int32_t) toks.size();
    const int rc = llama_decode(ctx, batch);
    llama_batch_free(batch);
    if (rc != 0) die("llama_decode failed: " + std::to_string(rc));
}

static void run_greedy(llama_model * model, const json & input, const greedy_opts & o) {
    const llama_vocab * vocab = llama_model_get_vocab(model);
    const int n_vocab = llama_vocab_n_tokens(vocab);
    const bool add_special = llama_vocab_get_add_bos(vocab);

    printf("[\n");
    for (size_t pi = 0; pi < input.size(); pi++) {
        const json & job = input[pi];
        const std::string prompt = job.is_string() ? job.get<std::string>() : job.at("prompt").get<std::string>();
        const int n_predict = job.is_object() && job.contains("n") ? job["n"].get<int>() : o.n_predict;

        const auto prompt_ids = tokenize(vocab, prompt, add_special, true);
        if (prompt_ids.empty()) die("empty prompt");

        llama_context_params cp = llama_context_default_params();
        cp.n_ctx           = o.n_ctx;
        cp.n_batch         = o.n_ctx;
        cp.n_threads       = o.n_threads;
        cp.n_threads_batch = o.n_threads;
        cp.flash_attn_type = o.fa;
        cp.no_perf         = true;
        llama_context * ctx = llama_init_from_model(model, cp);
        if (!ctx) die("cannot create context");

        std::vector<llama_token> out;
        std::vector<float> margins;
        std::vector<std::pair<int, float>> top20;
        int first_eos = -1;

        decode_or_die(ctx, prompt_ids, 0);
        for (int step = 0; step < n_predict; step++) {
            const float * logits = llama_get_logits_ith(ctx, -1);
            if (!logits) die("no logits");
            if (step == 0) {
                std::vector<int> idx(n_vocab);
                std::iota(idx.begin(), idx.end(), 0);
                std::partial_sort(idx.begin(), idx.begin() + 20, idx.end(), [&](int a, int b) {
                    return logits[a] > logits[b] || (logits[a] == logits[b] && a < b);
                });
                for (int k = 0; k < 20; k++) top20.emplace_back(idx[k], logits[idx[k]]);
                if (!o.logits_dir.empty() && pi == 0) {
                    const std::string path = o.logits_dir + "/greedy_" + std::to_string(pi) + ".f32";
                    FILE * f = fopen(path.c_str(), "wb");
                    if (!f) die("cannot write " + path);
                    fwrite(logits, sizeof(float), n_vocab, f); // host is little-endian (x86_64/aarch64)
                    fclose(f);
                }
            }
            const int id = argmax(logits, n_vocab);
            float second = -INFINITY;
            for (int i = 0; i < n_vocab; i++) if (i != id && logits[i] > second) second = logits[i];
            margins.push_back(logits[id] - second);
            out.push_back(id);
            if (first_eos < 0 && llama_vocab_is_eog(vocab, id)) first_eos = step;
            if (step + 1 < n_predict) decode_or_die(ctx, {id}, (llama_pos) (prompt_ids.size() + step));
        }
        llama_free(ctx);

        const std::string text = detok(vocab, out);
        const std::string text_until_eos = first_eos < 0 ? text :
            detok(vocab, std::vector<llama_token>(out.begin(), out.begin() + first_eos));
        std::string top = "[";
        for (size_t k = 0; k < top20.size(); k++) {
            top += (k ? ",[" : "[") + std::to_string(top20[k].first) + "," + jfloat(top20[k].second) + "]";
        }
        top += "]";
        std::string marg = "[";
        for (size_t k = 0; k < margins.size(); k++) marg += (k ? "," : "") + jfloat(margins[k]);
        marg += "]";

        printf("{\"prompt\":%s,\"prompt_ids\":%s,\"n\":%d,\"ids\":%s,\"text\":%s,%s\"first_eos\":%s,\"text_until_eos\":%s,\"top20\":%s,\"margins\":%s%s}%s\n",
               jstr(prompt).c_str(), jids(prompt_ids).c_str(), n_predict, jids(out).c_str(), jstr(text).c_str(),
               utf8_valid(text) ? "" : ("\"text_hex\":\"" + hex(text) + "\",").c_str(),
               first_eos < 0 ? "null" : std::to_string(first_eos).c_str(), jstr(text_until_eos).c_str(),
               top.c_str(), marg.c_str(),
               o.logits_dir.empty() || pi != 0 ? "" : ",\"logits_file\":\"greedy_0.f32\"",
               pi + 1 < input.size() ? "," : "");
        fflush(stdout);
    }
    printf("]\n");
}

// ---------------------------------------------------------------- meta

static std::string gguf_scalar(const gguf_context * g, int64_t k, gguf_type t) {
    char buf[64];
    switch (t) {
        case GGUF_TYPE_UINT8:   return std::to_string(gguf_get_val_u8(g, k));
        case GGUF_TYPE_INT8:    return std::to_string(gguf_get_val_i8(g, k));
        case GGUF_TYPE_UINT16:  return std::to_string(gguf_get_val_u16(g, k));
        case GGUF_TYPE_INT16:   return std::to_string(gguf_get_val_i16(g, k));
        case GGUF_TYPE_UINT32:  return std::to_string(gguf_get_val_u32(g, k));
        case GGUF_TYPE_INT32:   return std::to_string(gguf_get_val_i32(g, k));
        case GGUF_TYPE_UINT64:  return std::to_string(gguf_get_val_u64(g, k));
        case GGUF_TYPE_INT64:   return std::to_string(gguf_get_val_i64(g, k));
        case GGUF_TYPE_FLOAT32: return jfloat(gguf_get_val_f32(g, k));
        case GGUF_TYPE_FLOAT64: snprintf(buf, sizeof(buf), "%.17g", gguf_get_val_f64(g, k)); return buf;
        case GGUF_TYPE_BOOL:    return gguf_get_val_bool(g, k) ? "true" : "false";
        case GGUF_TYPE_STRING:  return jstr(gguf_get_val_str(g, k));
        default:                return "null";
    }
}

static void run_meta(const std::string & path) {
    gguf_init_params gp = { /*no_alloc =*/ true, /*ctx =*/ nullptr };
    gguf_context * g = gguf_init_from_file(path.c_str(), gp);
    if (!g) die("cannot read gguf " + path);

    printf("{\n\"gguf_version\":%u,\n\"kv\":[\n", gguf_get_version(g));
    const int64_t n_kv = gguf_get_n_kv(g);
    for (int64_t k = 0; k < n_kv; k++) {
        const gguf_type t = gguf_get_kv_type(g, k);
        std::string v;
        if (t == GGUF_TYPE_ARRAY) {
            const gguf_type at = gguf_get_arr_type(g, k);
            const size_t n = gguf_get_arr_n(g, k);
            v = std::string("\"type\":\"array\",\"elem\":\"") + gguf_type_name(at) + "\",\"len\":" + std::to_string(n);
            if (at == GGUF_TYPE_STRING && n > 0) {
                v += ",\"first\":" + jstr(gguf_get_arr_str(g, k, 0)) + ",\"last\":" + jstr(gguf_get_arr_str(g, k, n - 1));
            } else if (at == GGUF_TYPE_INT32 && n > 0) {
                // e.g. token_type: histogram of values
                const auto * d = (const int32_t *) gguf_get_arr_data(g, k);
                std::map<int32_t, size_t> hist;
                for (size_t i = 0; i < n; i++) hist[d[i]]++;
                v += ",\"histogram\":{";
                bool first = true;
                for (auto & [val, cnt] : hist) {
                    v += (first ? "\"" : ",\"") + std::to_string(val) + "\":" + std::to_string(cnt);
                    first = false;
                }
                v += "}";
            }
        } else {
            v = std::string("\"type\":\"") + gguf_type_name(t) + "\",\"value\":" + gguf_scalar(g, k, t);
        }
        printf("{\"key\":%s,%s}%s\n", jstr(gguf_get_key(g, k)).c_str(), v.c_str(), k + 1 < n_kv ? "," : "");
    }
    printf("],\n\"tensors\":[\n");
    const int64_t n_t = gguf_get_n_tensors(g);
    for (int64_t i = 0; i < n_t; i++) {
        const int64_t * ne = gguf_get_tensor_ne(g, i);
        int nd = GGML_MAX_DIMS;
        while (nd > 1 && ne[nd - 1] == 1) nd--;
        std::string shape = "[";
        for (int d = 0; d < nd; d++) shape += (d ? "," : "") + std::to_string(ne[d]);
        shape += "]";
        printf("{\"name\":%s,\"type\":\"%s\",\"ne\":%s,\"offset\":%zu}%s\n", jstr(gguf_get_tensor_name(g, i)).c_str(),
               ggml_type_name(gguf_get_tensor_type(g, i)), shape.c_str(), gguf_get_tensor_offset(g, i),
               i + 1 < n_t ? "," : "");
    }
    printf("],\n");
    gguf_free(g);

    // llama.cpp's interpretation of the vocab metadata
    llama_model * model = load_model(path, true);
    const llama_vocab * vocab = llama_model_get_vocab(model);
    const int n_vocab = llama_vocab_n_tokens(vocab);
    auto tok = [&](llama_token t) { return t < 0 ? std::string("null") : std::to_string(t); };
    printf("\"llama\":{\"n_vocab\":%d,\"vocab_type\":%d,\"add_bos\":%s,\"add_eos\":%s,\"bos\":%s,\"eos\":%s,\"eot\":%s,\"nl\":%s,\"pad\":%s,\n",
           n_vocab, (int) llama_vocab_type(vocab),
           llama_vocab_get_add_bos(vocab) ? "true" : "false", llama_vocab_get_add_eos(vocab) ? "true" : "false",
           tok(llama_vocab_bos(vocab)).c_str(), tok(llama_vocab_eos(vocab)).c_str(), tok(llama_vocab_eot(vocab)).c_str(),
           tok(llama_vocab_nl(vocab)).c_str(), tok(llama_vocab_pad(vocab)).c_str());
    // tokens that are not plain NORMAL: [id, text, attr bits, is_eog]
    printf("\"non_normal_tokens\":[");
    bool first = true;
    for (llama_token t = 0; t < n_vocab; t++) {
        const int attr = llama_vocab_get_attr(vocab, t);
        if (attr == LLAMA_TOKEN_ATTR_NORMAL) continue;
        printf("%s\n[%d,%s,%d,%s]", first ? "" : ",", t, jstr(llama_vocab_get_text(vocab, t)).c_str(), attr,
               llama_vocab_is_eog(vocab, t) ? "true" : "false");
        first = false;
    }
    printf("]}\n}\n");
    llama_model_free(model);
}

// ---------------------------------------------------------------- main

int main(int argc, char ** argv) {
    if (argc < 2) die("usage: reference meta|tokenize|greedy -m MODEL [-i INPUT.json] [options]");
    const std::string mode = argv[1];
    std::string model_path, input_path;
    greedy_opts o;
    for (int i = 2; i < argc; i++) {
        const std::string a = argv[i];
        auto next = [&]() -> std::string { if (i + 1 >= argc) die("missing value for " + a); return argv[++i]; };
        if      (a == "-m") model_path = next();
        else if (a == "-i") input_path = next();
        else if (a == "-n") o.n_predict = std::stoi(next());
        else if (a == "-t") o.n_threads = std::stoi(next());
        else if (a == "-c") o.n_ctx = std::stoi(next());
        else if (a == "--logits-dir") o.logits_dir = next();
        else if (a == "--fa") {
            const std::string v = next();
            o.fa = v == "on" ? LLAMA_FLASH_ATTN_TYPE_ENABLED : v == "auto" ? LLAMA_FLASH_ATTN_TYPE_AUTO : LLAMA_FLASH_ATTN_TYPE_DISABLED;
        } else die("unknown argument " + a);
    }
    if (model_path.empty() && mode != "sysinfo") die("-m MODEL is required");

    llama_log_set(quiet_log, nullptr);
    llama_backend_init();

    if (mode == "sysinfo") {
        printf("%s\n", llama_print_system_info());
    } else if (mode == "meta") {
        run_meta(model_path);
    } else if (mode == "tokenize" || mode == "greedy") {
        if (input_path.empty()) die("-i INPUT.json is required");
        const json input = read_json(input_path);
        if (!input.is_array()) die("input must be a JSON array");
        llama_model * model = load_model(model_path, mode == "tokenize");
        if (mode == "tokenize") run_tokenize(llama_model_get_vocab(model), input);
        else                    run_greedy(model, input, o);
        llama_model_free(model);
    } else {
        die("unknown mode " + mode);
    }
    llama_backend_free();
    return 0;
}
