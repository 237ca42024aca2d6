// clawmesh-stage: one link of the chain engine, built on libllama's public API only.
//
// A *stage* model is a GGUF that holds a contiguous slice of a model's layers, renumbered from 0
// (runtime/engine/stage-gguf.ts writes it): it takes hidden states in and gives the hidden states
// after its last layer out, keeping its own KV cache per sequence. The *ends* model is the head's
// part: the real vocabulary, token embeddings, output norm and output matrix around one identity
// layer (all-zero weights, so each residual adds exactly 0): it turns tokens into the first hidden
// states and the last hidden states into sampled tokens, so logits never leave the head.
//
// Hidden states are read with the scheduler's eval callback on the tensor "l_out-<last layer>"
// (the name every llama-family graph gives a layer's output), with every row marked as an output
// so that the last layer keeps all rows. No patch to llama.cpp is needed.
//
// Wire (stdin/stdout, little-endian): request  = u32 length, u8 op, payload
//                                      response = u32 length, u8 status (0 ok, 1 error), payload
// Only the parent process can talk to it: there is no socket for another local process to reach.
#include "llama.h"

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <unordered_map>
#include <vector>

namespace {

enum Op : uint8_t {
    OP_INFO = 1,       // -> json text
    OP_EVAL = 2,       // u32 n, n*i32 seq, n*i32 pos, n*n_embd f32 -> n*n_embd f32 (stage)
    OP_SEQ_RM = 3,     // i32 seq, i32 p0, i32 p1 -> empty
    OP_EMBED = 4,      // u32 n, n*i32 token -> n*n_embd f32 (ends)
    OP_SAMPLE = 5,     // u32 n, n*u32 sampler, n*n_embd f32 -> n*i32 token (ends)
    OP_SAMPLER = 6,    // u32 id, f32 temp, i32 top_k, f32 top_p, f32 min_p, u32 seed, u32 n_bias, n*(i32 tok, f32 bias) -> empty
    OP_SAMPLER_FREE = 7, // u32 id -> empty
    OP_TOKENIZE = 8,   // u8 add_special, u8 parse_special, text -> n*i32
    OP_PIECES = 9,     // n*i32 -> n*(u8 eog, u32 len, bytes)
    OP_TEMPLATE = 10,  // u8 add_assistant, u32 n, n*(u32 len role, role, u32 len content, content) -> text
    OP_SAMPLE_EMBED = 11, // as OP_SAMPLE -> n*n_embd f32 (the sampled tokens' embeddings), n*i32 token, n*u8 eog (ends)
};

struct Reader {
    const uint8_t * p;
    const uint8_t * end;
    bool ok = true;
    template <typename T> T get() {
        T v{};
        if (end - p < (ptrdiff_t) sizeof(T)) { ok = false; return v; }
        std::memcpy(&v, p, sizeof(T));
        p += sizeof(T);
        return v;
    }
    const uint8_t * take(size_t n) {
        if ((size_t) (end - p) < n) { ok = false; return nullptr; }
        const uint8_t * at = p;
        p += n;
        return at;
    }
};

struct Out {
    std::vector<uint8_t> buf;
    template <typename T> void put(T v) {
        const uint8_t * b = reinterpret_cast<const uint8_t *>(&v);
        buf.insert(buf.end(), b, b + sizeof(T));
    }
    void bytes(const void * data, size_t n) {
        const uint8_t * b = static_cast<const uint8_t *>(data);
        buf.insert(buf.end(), b, b + n);
    }
};

bool read_all(void * dst, size_t n) {
    uint8_t * d = static_cast<uint8_t *>(dst);
    while (n > 0) {
        size_t got = fread(d, 1, n, stdin);
        if (got == 0) return false;
        d += got;
        n -= got;
    }
    return true;
}

void reply(uint8_t status, const std::vector<uint8_t> & payload) {
    uint32_t len = (uint32_t) payload.size() + 1;
    fwrite(&len, 4, 1, stdout);
    fwrite(&status, 1, 1, stdout);
    if (!payload.empty()) fwrite(payload.data(), 1, payload.size(), stdout);
    fflush(stdout);
}

void fail(const std::string & why) {
    reply(1, std::vector<uint8_t>(why.begin(), why.end()));
}

// The capture target and where its rows go; the callback may fire once per micro-batch.
struct Capture {
    std::string name;
    std::vector<float> rows;
    size_t filled = 0; // floats written so far in this decode
    // Stop the graph once the rows are captured: embedding tokens needs nothing past the identity
    // layer, and the output matrix after it (n_vocab × n_embd, the ends' biggest matmul) would be
    // computed for nothing.
    bool stop = false;
};

bool on_eval(struct ggml_tensor * t, bool ask, void * user) {
    auto * cap = static_cast<Capture *>(user);
    if (std::strcmp(ggml_get_name(t), cap->name.c_str()) != 0) return ask ? false : true;
    if (ask) return true;
    const size_t n = ggml_nelements(t);
    if (t->type != GGML_TYPE_F32 || cap->filled + n > cap->rows.size()) {
        fprintf(stderr, "clawmesh-stage: captured %s has %zu floats of type %d, room for %zu\n", cap->name.c_str(), n, (int) t->type,
                cap->rows.size() - cap->filled);
        return false; // aborts the decode: the caller reports it
    }
    ggml_backend_tensor_get(t, cap->rows.data() + cap->filled, 0, n * sizeof(float));
    cap->filled += n;
    return !cap->stop; // false ends this graph split here (ggml_backend_sched_compute_splits)
}

struct Args {
    std::string model;
    std::string role = "stage";
    int ctx = 4096;
    int batch = 512;
    int seqs = 8;
    int threads = 1;
    bool repack = false;
};

void usage() {
    fprintf(stderr, "usage: clawmesh-stage --model FILE [--role stage|ends] [--ctx N] [--batch N] [--seqs N] [--threads N] [--repack]\n");
}

} // namespace

int main(int argc, char ** argv) {
    Args a;
    for (int i = 1; i < argc; i++) {
        std::string k = argv[i];
        auto next = [&]() -> const char * {
            if (i + 1 >= argc) { usage(); exit(2); }
            return argv[++i];
        };
        if (k == "--model") a.model = next();
        else if (k == "--role") a.role = next();
        else if (k == "--ctx") a.ctx = atoi(next());
        else if (k == "--batch") a.batch = atoi(next());
        else if (k == "--seqs") a.seqs = atoi(next());
        else if (k == "--threads") a.threads = atoi(next());
        else if (k == "--repack") a.repack = true;
        else { usage(); return 2; }
    }
    if (a.model.empty() || (a.role != "stage" && a.role != "ends") || a.batch <= 0 || a.seqs <= 0 || a.ctx <= 0) { usage(); return 2; }
    const bool ends = a.role == "ends";

    llama_log_set([](enum ggml_log_level level, const char * text, void *) {
        if (level >= GGML_LOG_LEVEL_WARN) fputs(text, stderr);
    }, nullptr);
    llama_backend_init();

    llama_model_params mp = llama_model_default_params();
    mp.use_extra_bufts = a.repack; // off by default: the same kernels as a reference run with --no-repack
    llama_model * model = llama_model_load_from_file(a.model.c_str(), mp);
    if (!model) { fprintf(stderr, "clawmesh-stage: cannot load %s\n", a.model.c_str()); return 1; }
    const llama_vocab * vocab = llama_model_get_vocab(model);
    const int n_embd = llama_model_n_embd(model);
    const int n_layer = llama_model_n_layer(model);
    const int n_vocab = llama_vocab_n_tokens(vocab);

    Capture cap;
    cap.name = "l_out-" + std::to_string(n_layer - 1);
    cap.rows.resize((size_t) a.batch * n_embd);

    llama_context_params cp = llama_context_default_params();
    cp.n_ctx = ends ? (uint32_t) a.batch : (uint32_t) a.ctx; // the ends keep no state between calls
    cp.n_batch = a.batch;
    cp.n_ubatch = a.batch; // one micro-batch per call: captured rows stay in batch order
    cp.n_seq_max = ends ? 1 : a.seqs;
    cp.kv_unified = true;
    cp.n_threads = a.threads;
    cp.n_threads_batch = a.threads;
    cp.cb_eval = on_eval;
    cp.cb_eval_user_data = &cap;
    cp.no_perf = true;
    llama_context * ctx = llama_init_from_model(model, cp);
    if (!ctx) { fprintf(stderr, "clawmesh-stage: cannot create a context\n"); return 1; }
    llama_memory_t mem = llama_get_memory(ctx);

    llama_batch tok_batch = llama_batch_init(a.batch, 0, 1);
    llama_batch emb_batch = llama_batch_init(a.batch, n_embd, 1);
    std::unordered_map<uint32_t, llama_sampler *> samplers;

    // Runs one batch; fills cap.rows with l_out of the last layer for every row.
    auto decode = [&](llama_batch & b, int n, bool only_hidden = false) -> std::string {
        b.n_tokens = n;
        for (int i = 0; i < n; i++) b.logits[i] = 1; // every row an output: the last layer keeps all rows
        cap.filled = 0;
        cap.stop = only_hidden;
        int rc = llama_decode(ctx, b);
        cap.stop = false;
        if (rc != 0) return "llama_decode returned " + std::to_string(rc) + (rc == 1 ? " (no KV slot: context full)" : "");
        if (cap.filled != (size_t) n * n_embd) return "captured " + std::to_string(cap.filled) + " floats, expected " + std::to_string((size_t) n * n_embd);
        return "";
    };

    std::vector<uint8_t> req;
    for (;;) {
        uint32_t len = 0;
        if (!read_all(&len, 4)) break; // parent closed stdin: exit quietly
        if (len == 0 || len > (64u << 20)) { fprintf(stderr, "clawmesh-stage: bad frame length %u\n", len); return 1; }
        req.resize(len);
        if (!read_all(req.data(), len)) break;
        Reader r{req.data() + 1, req.data() + len};
        Out out;
        const uint8_t op = req[0];

        if (op == OP_INFO) {
            std::string j = "{\"role\":\"" + a.role + "\",\"n_embd\":" + std::to_string(n_embd) + ",\"n_layer\":" + std::to_string(n_layer) +
                            ",\"n_vocab\":" + std::to_string(n_vocab) + ",\"n_ctx\":" + std::to_string(llama_n_ctx(ctx)) +
                            ",\"n_batch\":" + std::to_string(a.batch) + ",\"n_seq\":" + std::to_string(cp.n_seq_max) + "}";
            reply(0, std::vector<uint8_t>(j.begin(), j.end()));
        } else if (op == OP_EVAL && !ends) {
            uint32_t n = r.get<uint32_t>();
            if (!r.ok || n == 0 || n > (uint32_t) a.batch) { fail("eval: " + std::to_string(n) + " rows, allowed 1.." + std::to_string(a.batch)); continue; }
            const uint8_t * seqs = r.take(4 * n);
            const uint8_t * poss = r.take(4 * n);
            const uint8_t * embd = r.take((size_t) 4 * n * n_embd);
            if (!r.ok || r.p != r.end) { fail("eval: payload does not match " + std::to_string(n) + " rows of " + std::to_string(n_embd)); continue; }
            std::string bad;
            for (uint32_t i = 0; i < n && bad.empty(); i++) {
                int32_t s, p;
                std::memcpy(&s, seqs + 4 * i, 4);
                std::memcpy(&p, poss + 4 * i, 4);
                if (s < 0 || s >= a.seqs) bad = "sequence " + std::to_string(s) + " outside 0.." + std::to_string(a.seqs - 1);
                else if (p < 0 || p >= a.ctx) bad = "position " + std::to_string(p) + " outside the context of " + std::to_string(a.ctx);
                emb_batch.seq_id[i][0] = s;
                emb_batch.n_seq_id[i] = 1;
                emb_batch.pos[i] = p;
            }
            if (!bad.empty()) { fail("eval: " + bad); continue; }
            std::memcpy(emb_batch.embd, embd, (size_t) 4 * n * n_embd);
            std::string err = decode(emb_batch, (int) n);
            if (!err.empty()) { fail("eval: " + err); continue; }
            out.bytes(cap.rows.data(), (size_t) 4 * n * n_embd);
            reply(0, out.buf);
        } else if (op == OP_SEQ_RM && !ends) {
            int32_t s = r.get<int32_t>(), p0 = r.get<int32_t>(), p1 = r.get<int32_t>();
            if (!r.ok || s < 0 || s >= a.seqs) { fail("seq_rm: bad sequence"); continue; }
            llama_memory_seq_rm(mem, s, p0, p1);
            reply(0, {});
        } else if (op == OP_EMBED && ends) {
            uint32_t n = r.get<uint32_t>();
            if (!r.ok || n == 0 || n > (uint32_t) a.batch) { fail("embed: " + std::to_string(n) + " tokens, allowed 1.." + std::to_string(a.batch)); continue; }
            const uint8_t * toks = r.take(4 * n);
            if (!r.ok) { fail("embed: short payload"); continue; }
            std::string bad;
            for (uint32_t i = 0; i < n; i++) {
                int32_t t;
                std::memcpy(&t, toks + 4 * i, 4);
                if (t < 0 || t >= n_vocab) bad = "token " + std::to_string(t) + " outside the vocabulary";
                tok_batch.token[i] = t;
                tok_batch.pos[i] = (llama_pos) i;
                tok_batch.seq_id[i][0] = 0;
                tok_batch.n_seq_id[i] = 1;
            }
            if (!bad.empty()) { fail("embed: " + bad); continue; }
            llama_memory_clear(mem, false);
            std::string err = decode(tok_batch, (int) n, true);
            if (!err.empty()) { fail("embed: " + err); continue; }
            out.bytes(cap.rows.data(), (size_t) 4 * n * n_embd);
            reply(0, out.buf);
        } else if ((op == OP_SAMPLE || op == OP_SAMPLE_EMBED) && ends) {
            uint32_t n = r.get<uint32_t>();
            if (!r.ok || n == 0 || n > (uint32_t) a.batch) { fail("sample: bad row count"); continue; }
            const uint8_t * ids = r.take(4 * n);
            const uint8_t * embd = r.take((size_t) 4 * n * n_embd);
            if (!r.ok || r.p != r.end) { fail("sample: payload does not match " + std::to_string(n) + " rows"); continue; }
            std::vector<llama_sampler *> use(n);
            std::string bad;
            for (uint32_t i = 0; i < n; i++) {
                uint32_t id;
                std::memcpy(&id, ids + 4 * i, 4);
                auto it = samplers.find(id);
                if (it == samplers.end()) { bad = "no sampler " + std::to_string(id); break; }
                use[i] = it->second;
                emb_batch.pos[i] = (llama_pos) i;
                emb_batch.seq_id[i][0] = 0;
                emb_batch.n_seq_id[i] = 1;
            }
            if (!bad.empty()) { fail("sample: " + bad); continue; }
            std::memcpy(emb_batch.embd, embd, (size_t) 4 * n * n_embd);
            llama_memory_clear(mem, false);
            std::string err = decode(emb_batch, (int) n);
            if (!err.empty()) { fail("sample: " + err); continue; }
            std::vector<llama_token> picked(n);
            for (uint32_t i = 0; i < n; i++) picked[i] = llama_sampler_sample(use[i], ctx, (int32_t) i); // also accepts t into the chain's state
            if (op == OP_SAMPLE_EMBED) {
                // The next step's input in the same call: the head saves a round trip to this process per step.
                for (uint32_t i = 0; i < n; i++) {
                    tok_batch.token[i] = picked[i];
                    tok_batch.pos[i] = (llama_pos) i;
                    tok_batch.seq_id[i][0] = 0;
                    tok_batch.n_seq_id[i] = 1;
                }
                llama_memory_clear(mem, false);
                err = decode(tok_batch, (int) n, true);
                if (!err.empty()) { fail("sample: embed: " + err); continue; }
                out.bytes(cap.rows.data(), (size_t) 4 * n * n_embd);
            }
            for (uint32_t i = 0; i < n; i++) out.put<int32_t>(picked[i]);
            if (op == OP_SAMPLE_EMBED) for (uint32_t i = 0; i < n; i++) out.put<uint8_t>(llama_vocab_is_eog(vocab, picked[i]) ? 1 : 0);
            reply(0, out.buf);
        } else if (op == OP_SAMPLER && ends) {
            uint32_t id = r.get<uint32_t>();
            float temp = r.get<float>();
            int32_t top_k = r.get<int32_t>();
            float top_p = r.get<float>(), min_p = r.get<float>();
            uint32_t seed = r.get<uint32_t>(), n_bias = r.get<uint32_t>();
            std::vector<llama_logit_bias> biases;
            for (uint32_t i = 0; r.ok && i < n_bias && i < 4096; i++) {
                int32_t tok = r.get<int32_t>();
                float b = r.get<float>();
                if (tok >= 0 && tok < n_vocab) biases.push_back({tok, b});
            }
            if (!r.ok) { fail("sampler: short payload"); continue; }
            auto found = samplers.find(id);
            if (found != samplers.end()) { llama_sampler_free(found->second); samplers.erase(found); }
            llama_sampler * s = llama_sampler_chain_init(llama_sampler_chain_default_params());
            if (!biases.empty()) llama_sampler_chain_add(s, llama_sampler_init_logit_bias(n_vocab, (int32_t) biases.size(), biases.data()));
            if (temp <= 0.0f) {
                llama_sampler_chain_add(s, llama_sampler_init_greedy());
            } else {
                if (top_k > 0) llama_sampler_chain_add(s, llama_sampler_init_top_k(top_k));
                if (top_p < 1.0f) llama_sampler_chain_add(s, llama_sampler_init_top_p(top_p, 1));
                if (min_p > 0.0f) llama_sampler_chain_add(s, llama_sampler_init_min_p(min_p, 1));
                llama_sampler_chain_add(s, llama_sampler_init_temp(temp));
                llama_sampler_chain_add(s, llama_sampler_init_dist(seed));
            }
            samplers[id] = s;
            reply(0, {});
        } else if (op == OP_SAMPLER_FREE && ends) {
            uint32_t id = r.get<uint32_t>();
            auto found = samplers.find(id);
            if (found != samplers.end()) { llama_sampler_free(found->second); samplers.erase(found); }
            reply(0, {});
        } else if (op == OP_TOKENIZE && ends) {
            uint8_t add_special = r.get<uint8_t>(), parse_special = r.get<uint8_t>();
            if (!r.ok) { fail("tokenize: short payload"); continue; }
            const int text_len = (int) (r.end - r.p);
            std::vector<llama_token> toks((size_t) text_len + 8);
            int n = llama_tokenize(vocab, reinterpret_cast<const char *>(r.p), text_len, toks.data(), (int) toks.size(), add_special, parse_special);
            if (n < 0) { toks.resize(-n); n = llama_tokenize(vocab, reinterpret_cast<const char *>(r.p), text_len, toks.data(), (int) toks.size(), add_special, parse_special); }
            if (n < 0) { fail("tokenize failed"); continue; }
            out.bytes(toks.data(), (size_t) 4 * n);
            reply(0, out.buf);
        } else if (op == OP_PIECES && ends) {
            const size_t n = (size_t) (r.end - r.p) / 4;
            char piece[256];
            for (size_t i = 0; i < n; i++) {
                int32_t t = r.get<int32_t>();
                int len = (t >= 0 && t < n_vocab) ? llama_token_to_piece(vocab, t, piece, sizeof piece, 0, false) : 0;
                if (len < 0) len = 0;
                out.put<uint8_t>(t >= 0 && t < n_vocab && llama_vocab_is_eog(vocab, t) ? 1 : 0);
                out.put<uint32_t>((uint32_t) len);
                out.bytes(piece, (size_t) len);
            }
            reply(0, out.buf);
        } else if (op == OP_TEMPLATE && ends) {
            uint8_t add_ass = r.get<uint8_t>();
            uint32_t n = r.get<uint32_t>();
            std::vector<std::string> texts;
            texts.reserve((size_t) n * 2);
            for (uint32_t i = 0; r.ok && i < n * 2 && i < 20000; i++) {
                uint32_t l = r.get<uint32_t>();
                const uint8_t * s = r.take(l);
                if (s) texts.emplace_back(reinterpret_cast<const char *>(s), l);
            }
            if (!r.ok || texts.size() != (size_t) n * 2) { fail("template: short payload"); continue; }
            std::vector<llama_chat_message> msgs(n);
            size_t total = 0;
            for (uint32_t i = 0; i < n; i++) {
                msgs[i] = {texts[2 * i].c_str(), texts[2 * i + 1].c_str()};
                total += texts[2 * i + 1].size();
            }
            const char * tmpl = llama_model_chat_template(model, nullptr);
            std::vector<char> buf(total * 2 + 1024);
            int got = llama_chat_apply_template(tmpl ? tmpl : "chatml", msgs.data(), n, add_ass != 0, buf.data(), (int32_t) buf.size());
            if (got > (int) buf.size()) { buf.resize(got); got = llama_chat_apply_template(tmpl ? tmpl : "chatml", msgs.data(), n, add_ass != 0, buf.data(), (int32_t) buf.size()); }
            if (got < 0) { fail("template: this model's chat template is not one llama.cpp knows"); continue; }
            reply(0, std::vector<uint8_t>(buf.begin(), buf.begin() + got));
        } else {
            fail("unknown op " + std::to_string(op) + " for role " + a.role);
        }
    }

    for (auto & kv : samplers) llama_sampler_free(kv.second);
    llama_batch_free(tok_batch);
    llama_batch_free(emb_batch);
    llama_free(ctx);
    llama_model_free(model);
    llama_backend_free();
    return 0;
}
