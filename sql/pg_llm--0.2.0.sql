-- pg_llm: GPT-2 inside PostgreSQL
\echo Use "CREATE EXTENSION pg_llm" to load this file. \quit

-- ===========================================================================
-- Tensor ops and their gradients.
-- Tensors are float32 bytea (little-endian, row-major) with explicit shapes.
-- Inputs of arithmetic ops must be finite: NaN or Infinity raises 22P01.
-- ===========================================================================

CREATE FUNCTION pg_llm_info() RETURNS text
AS 'MODULE_PATHNAME', 'pg_llm_info' LANGUAGE C VOLATILE STRICT;

CREATE FUNCTION pg_llm_matmul(a bytea, b bytea, m int, k int, n int) RETURNS bytea
AS 'MODULE_PATHNAME', 'pg_llm_matmul' LANGUAGE C IMMUTABLE PARALLEL SAFE STRICT;
COMMENT ON FUNCTION pg_llm_matmul(bytea, bytea, int, int, int) IS '(m,k) @ (k,n) -> (m,n)';

CREATE FUNCTION pg_llm_matmul_backward(a bytea, b bytea, dy bytea, m int, k int, n int,
                                       OUT da bytea, OUT db bytea)
AS 'MODULE_PATHNAME', 'pg_llm_matmul_backward' LANGUAGE C IMMUTABLE PARALLEL SAFE STRICT;

CREATE FUNCTION pg_llm_add(a bytea, b bytea) RETURNS bytea
AS 'MODULE_PATHNAME', 'pg_llm_add' LANGUAGE C IMMUTABLE PARALLEL SAFE STRICT;

CREATE FUNCTION pg_llm_gelu(x bytea) RETURNS bytea
AS 'MODULE_PATHNAME', 'pg_llm_gelu' LANGUAGE C IMMUTABLE PARALLEL SAFE STRICT;
COMMENT ON FUNCTION pg_llm_gelu(bytea) IS 'GPT-2''s GELU: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))';

CREATE FUNCTION pg_llm_gelu_backward(x bytea, dy bytea) RETURNS bytea
AS 'MODULE_PATHNAME', 'pg_llm_gelu_backward' LANGUAGE C IMMUTABLE PARALLEL SAFE STRICT;

CREATE FUNCTION pg_llm_softmax(x bytea) RETURNS bytea
AS 'MODULE_PATHNAME', 'pg_llm_softmax' LANGUAGE C IMMUTABLE PARALLEL SAFE STRICT;
CREATE FUNCTION pg_llm_softmax(x bytea, rows int, cols int) RETURNS bytea
AS 'MODULE_PATHNAME', 'pg_llm_softmax' LANGUAGE C IMMUTABLE PARALLEL SAFE STRICT;

CREATE FUNCTION pg_llm_softmax_backward(y bytea, dy bytea) RETURNS bytea
AS 'MODULE_PATHNAME', 'pg_llm_softmax_backward' LANGUAGE C IMMUTABLE PARALLEL SAFE STRICT;
CREATE FUNCTION pg_llm_softmax_backward(y bytea, dy bytea, rows int, cols int) RETURNS bytea
AS 'MODULE_PATHNAME', 'pg_llm_softmax_backward' LANGUAGE C IMMUTABLE PARALLEL SAFE STRICT;

CREATE FUNCTION pg_llm_layernorm(x bytea, gamma bytea, beta bytea, eps float4 DEFAULT 1e-5)
RETURNS bytea
AS 'MODULE_PATHNAME', 'pg_llm_layernorm' LANGUAGE C IMMUTABLE PARALLEL SAFE STRICT;
COMMENT ON FUNCTION pg_llm_layernorm(bytea, bytea, bytea, float4)
    IS 'layernorm over the last dimension; rows = len(x) / len(gamma)';

CREATE FUNCTION pg_llm_layernorm_backward(x bytea, dy bytea, gamma bytea, eps float4 DEFAULT 1e-5,
                                          OUT dx bytea, OUT dgamma bytea, OUT dbeta bytea)
AS 'MODULE_PATHNAME', 'pg_llm_layernorm_backward' LANGUAGE C IMMUTABLE PARALLEL SAFE STRICT;

CREATE FUNCTION pg_llm_cross_entropy(logits bytea, target int) RETURNS float4
AS 'MODULE_PATHNAME', 'pg_llm_cross_entropy' LANGUAGE C IMMUTABLE PARALLEL SAFE STRICT;
CREATE FUNCTION pg_llm_cross_entropy(logits bytea, targets int[]) RETURNS float4
AS 'MODULE_PATHNAME', 'pg_llm_cross_entropy_rows' LANGUAGE C IMMUTABLE PARALLEL SAFE STRICT;
COMMENT ON FUNCTION pg_llm_cross_entropy(bytea, int[])
    IS 'mean cross-entropy of rows = len(targets) rows of logits';

CREATE FUNCTION pg_llm_cross_entropy_backward(logits bytea, target int) RETURNS bytea
AS 'MODULE_PATHNAME', 'pg_llm_cross_entropy_backward' LANGUAGE C IMMUTABLE PARALLEL SAFE STRICT;
CREATE FUNCTION pg_llm_cross_entropy_backward(logits bytea, targets int[]) RETURNS bytea
AS 'MODULE_PATHNAME', 'pg_llm_cross_entropy_backward_rows' LANGUAGE C IMMUTABLE PARALLEL SAFE STRICT;

CREATE FUNCTION pg_llm_attention(x bytea, w_qkv bytea, b_qkv bytea, w_o bytea, b_o bytea,
                                 n_head int, T int, D int) RETURNS bytea
AS 'MODULE_PATHNAME', 'pg_llm_attention' LANGUAGE C IMMUTABLE PARALLEL SAFE STRICT;
COMMENT ON FUNCTION pg_llm_attention(bytea, bytea, bytea, bytea, bytea, int, int, int)
    IS 'causal multi-head self-attention of one sequence x (T,D) with fused QKV (D,3D)';

CREATE FUNCTION pg_llm_attention_backward(x bytea, w_qkv bytea, b_qkv bytea, w_o bytea, b_o bytea,
                                          grad_output bytea, n_head int, T int, D int,
                                          OUT dx bytea, OUT dw_qkv bytea, OUT db_qkv bytea,
                                          OUT dw_o bytea, OUT db_o bytea)
AS 'MODULE_PATHNAME', 'pg_llm_attention_backward' LANGUAGE C IMMUTABLE PARALLEL SAFE STRICT;

CREATE FUNCTION pg_llm_dropout(x bytea, p float4, training bool, seed int) RETURNS bytea
AS 'MODULE_PATHNAME', 'pg_llm_dropout' LANGUAGE C IMMUTABLE PARALLEL SAFE STRICT;
CREATE FUNCTION pg_llm_dropout(x bytea, p float4, training bool DEFAULT true) RETURNS bytea
AS 'MODULE_PATHNAME', 'pg_llm_dropout' LANGUAGE C VOLATILE PARALLEL SAFE STRICT;
COMMENT ON FUNCTION pg_llm_dropout(bytea, float4, bool)
    IS 'inverted dropout with a random mask; give a seed for a reproducible one';

CREATE FUNCTION pg_llm_dropout_backward(x bytea, y bytea, dy bytea, p float4, training bool)
RETURNS bytea
AS 'MODULE_PATHNAME', 'pg_llm_dropout_backward' LANGUAGE C IMMUTABLE PARALLEL SAFE STRICT;
COMMENT ON FUNCTION pg_llm_dropout_backward(bytea, bytea, bytea, float4, bool)
    IS 'mask read off the forward''s output y (an element with x = 0 counts as kept); the seeded form is exact';
CREATE FUNCTION pg_llm_dropout_backward(dy bytea, p float4, training bool, seed int) RETURNS bytea
AS 'MODULE_PATHNAME', 'pg_llm_dropout_backward_seeded' LANGUAGE C IMMUTABLE PARALLEL SAFE STRICT;

CREATE FUNCTION pg_llm_transpose(x bytea, rows int, cols int) RETURNS bytea
AS 'MODULE_PATHNAME', 'pg_llm_transpose' LANGUAGE C IMMUTABLE PARALLEL SAFE STRICT;

CREATE FUNCTION pg_llm_zeros_like(x bytea) RETURNS bytea
AS 'MODULE_PATHNAME', 'pg_llm_zeros_like' LANGUAGE C IMMUTABLE PARALLEL SAFE STRICT;
CREATE FUNCTION pg_llm_ones_like(x bytea) RETURNS bytea
AS 'MODULE_PATHNAME', 'pg_llm_ones_like' LANGUAGE C IMMUTABLE PARALLEL SAFE STRICT;

CREATE FUNCTION pg_llm_adamw_step(weight bytea, grad bytea, m bytea, v bytea,
                                  lr float4, beta1 float4 DEFAULT 0.9, beta2 float4 DEFAULT 0.999,
                                  eps float4 DEFAULT 1e-8, weight_decay float4 DEFAULT 0.01,
                                  step int DEFAULT 1,
                                  OUT weight bytea, OUT m bytea, OUT v bytea)
AS 'MODULE_PATHNAME', 'pg_llm_adamw_step' LANGUAGE C IMMUTABLE PARALLEL SAFE STRICT;
COMMENT ON FUNCTION pg_llm_adamw_step(bytea, bytea, bytea, bytea, float4, float4, float4, float4, float4, int)
    IS 'one AdamW step (bias-corrected, decoupled weight decay), as torch.optim.AdamW; step counts from 1';

CREATE FUNCTION pg_llm_grad_clip(grad bytea, max_norm float4) RETURNS bytea
AS 'MODULE_PATHNAME', 'pg_llm_grad_clip' LANGUAGE C IMMUTABLE PARALLEL SAFE STRICT;

CREATE FUNCTION pg_llm_lr_schedule(step int, warmup int, total int, lr_max float4,
                                   lr_min float4 DEFAULT 0) RETURNS float4
AS 'MODULE_PATHNAME', 'pg_llm_lr_schedule' LANGUAGE C IMMUTABLE PARALLEL SAFE STRICT;
COMMENT ON FUNCTION pg_llm_lr_schedule(int, int, int, float4, float4)
    IS 'nanoGPT''s schedule: lr_max*(step+1)/(warmup+1) while step < warmup, then cosine to lr_min at step total';

CREATE FUNCTION pg_llm_tensor(float4[]) RETURNS bytea
AS 'MODULE_PATHNAME', 'pg_llm_tensor' LANGUAGE C IMMUTABLE PARALLEL SAFE STRICT;
CREATE FUNCTION pg_llm_tensor_array(bytea) RETURNS float4[]
AS 'MODULE_PATHNAME', 'pg_llm_tensor_array' LANGUAGE C IMMUTABLE PARALLEL SAFE STRICT;

-- ===========================================================================
-- Models: configuration, parameters (one row per tensor, HuggingFace GPT-2
-- names and shapes, float32 bytea), AdamW state beside them.
-- Every write of a model's parameters takes a new version from
-- llm_model_version_seq (never reused, even after a rollback): backends
-- cache a model by (model, version).
-- ===========================================================================

CREATE SEQUENCE llm_model_version_seq;

CREATE TABLE llm_model_config (
    model          text PRIMARY KEY CHECK (model <> '' AND length(model) <= 200),
    n_layer        int  NOT NULL CHECK (n_layer BETWEEN 1 AND 256),
    n_head         int  NOT NULL CHECK (n_head >= 1),
    d_model        int  NOT NULL CHECK (d_model BETWEEN 1 AND 65536 AND d_model % n_head = 0),
    n_positions    int  NOT NULL CHECK (n_positions BETWEEN 1 AND 1048576),
    vocab          int  NOT NULL CHECK (vocab BETWEEN 1 AND 16777216),
    layer_norm_eps float4 NOT NULL DEFAULT 1e-5 CHECK (layer_norm_eps > 0),
    version        bigint NOT NULL DEFAULT nextval('llm_model_version_seq'),
    tokenizer_version bigint,
    train_step     int NOT NULL DEFAULT 0,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE llm_model_config IS 'GPT-2 model configurations (d_model is n_embd)';

INSERT INTO llm_model_config (model, n_layer, n_head, d_model, n_positions, vocab) VALUES
    ('gpt2-small', 12, 12, 768, 1024, 50257),
    ('gpt2-medium', 24, 16, 1024, 1024, 50257),
    ('gpt2-large', 36, 20, 1280, 1024, 50257),
    ('gpt2-xl', 48, 25, 1600, 1024, 50257);

CREATE TABLE llm_param (
    model  text NOT NULL REFERENCES llm_model_config (model) ON DELETE CASCADE ON UPDATE CASCADE,
    name   text NOT NULL,
    shape  int[] NOT NULL,
    data   bytea NOT NULL,
    m      bytea,            -- AdamW first moment (NULL before training)
    v      bytea,            -- AdamW second moment
    PRIMARY KEY (model, name)
);
COMMENT ON TABLE llm_param IS 'model parameters, one row per tensor, HuggingFace GPT-2 names and shapes, float32 little-endian';
-- floats do not compress: skip pglz, so that loading a model is a copy
ALTER TABLE llm_param ALTER COLUMN data SET STORAGE EXTERNAL,
                      ALTER COLUMN m SET STORAGE EXTERNAL,
                      ALTER COLUMN v SET STORAGE EXTERNAL;

-- ===========================================================================
-- Tokenizer: GPT-2's byte-level BPE, per model
-- ===========================================================================
CREATE TABLE llm_vocab (
    model    text NOT NULL REFERENCES llm_model_config (model) ON DELETE CASCADE ON UPDATE CASCADE,
    token_id int  NOT NULL CHECK (token_id >= 0),
    token    bytea NOT NULL,          -- the token's bytes (vocab.json keys decoded)
    special  bool NOT NULL DEFAULT false,   -- <|endoftext|> and the like: never merged
    PRIMARY KEY (model, token_id)
);

CREATE TABLE llm_merges (
    model     text NOT NULL REFERENCES llm_model_config (model) ON DELETE CASCADE ON UPDATE CASCADE,
    rank      int  NOT NULL CHECK (rank >= 0),
    left_id   int  NOT NULL,
    right_id  int  NOT NULL,
    merged_id int  NOT NULL,
    PRIMARY KEY (model, rank)
);

CREATE VIEW llm_models AS
SELECT c.model,
       jsonb_build_object('n_layer', c.n_layer, 'n_head', c.n_head, 'd_model', c.d_model,
                          'n_positions', c.n_positions, 'vocab', c.vocab,
                          'layer_norm_eps', c.layer_norm_eps) AS config,
       coalesce(p.bytes / 4, 0)::bigint AS n_params,
       coalesce(p.bytes, 0)::bigint AS bytes,
       c.version,
       coalesce(p.n_tensors, 0) > 0 AS has_weights,
       EXISTS (SELECT 1 FROM @extschema@.llm_merges g WHERE g.model = c.model) AS has_tokenizer,
       c.train_step,
       c.updated_at
  FROM @extschema@.llm_model_config c
  LEFT JOIN (SELECT model, sum(octet_length(data)) AS bytes, count(*) AS n_tensors
               FROM @extschema@.llm_param GROUP BY model) p USING (model);

CREATE FUNCTION llm_create_model(model text, n_layer int DEFAULT NULL, n_head int DEFAULT NULL,
                                 d_model int DEFAULT NULL, n_positions int DEFAULT NULL,
                                 vocab int DEFAULT NULL, seed int DEFAULT 1337)
RETURNS bigint
AS 'MODULE_PATHNAME', 'pg_llm_create_model' LANGUAGE C VOLATILE;
COMMENT ON FUNCTION llm_create_model(text, int, int, int, int, int, int)
    IS 'new model with GPT-2''s initialisation; NULL sizes come from the registered configuration; returns the number of parameters';

CREATE FUNCTION llm_drop_model(model text) RETURNS void
AS 'MODULE_PATHNAME', 'pg_llm_drop_model' LANGUAGE C VOLATILE STRICT;

CREATE FUNCTION pg_llm_cache_stats(OUT model text, OUT version bigint, OUT mb float8,
                                   OUT pins int, OUT hits bigint)
RETURNS SETOF record
AS 'MODULE_PATHNAME', 'pg_llm_cache_stats' LANGUAGE C VOLATILE STRICT;
COMMENT ON FUNCTION pg_llm_cache_stats() IS 'this backend''s model cache: one row per cached model version';

-- ===========================================================================
-- Inference
-- ===========================================================================
CREATE FUNCTION llm_logits(token_ids int[], model_name text DEFAULT NULL) RETURNS bytea
AS 'MODULE_PATHNAME', 'pg_llm_logits' LANGUAGE C STABLE;
COMMENT ON FUNCTION llm_logits(int[], text) IS 'logits (T, vocab) of every position, float32 bytea';

CREATE FUNCTION llm_loss(model text, tokens int[], targets int[]) RETURNS float4
AS 'MODULE_PATHNAME', 'pg_llm_loss' LANGUAGE C STABLE;
COMMENT ON FUNCTION llm_loss(text, int[], int[]) IS 'mean cross-entropy of targets[t] after tokens[1..t]';

-- ===========================================================================
-- Tokenizer
-- ===========================================================================
CREATE FUNCTION pg_llm_load_bpe_vocab(path text, model text) RETURNS bigint
AS 'MODULE_PATHNAME', 'pg_llm_load_bpe_vocab' LANGUAGE C VOLATILE STRICT;
COMMENT ON FUNCTION pg_llm_load_bpe_vocab(text, text) IS 'load GPT-2''s vocab.json from a server file (needs pg_read_server_files); returns the number of tokens';

CREATE FUNCTION pg_llm_load_bpe_merges(path text, model text) RETURNS bigint
AS 'MODULE_PATHNAME', 'pg_llm_load_bpe_merges' LANGUAGE C VOLATILE STRICT;
COMMENT ON FUNCTION pg_llm_load_bpe_merges(text, text) IS 'load GPT-2''s merges.txt from a server file (after the vocabulary); returns the number of merges';

CREATE FUNCTION pg_llm_load_bpe_vocab_text(content text, model text) RETURNS bigint
AS 'MODULE_PATHNAME', 'pg_llm_load_bpe_vocab_text' LANGUAGE C VOLATILE STRICT;
COMMENT ON FUNCTION pg_llm_load_bpe_vocab_text(text, text) IS 'load vocab.json sent by a client (scripts/ingest_tokenizer.py)';

CREATE FUNCTION pg_llm_load_bpe_merges_text(content text, model text) RETURNS bigint
AS 'MODULE_PATHNAME', 'pg_llm_load_bpe_merges_text' LANGUAGE C VOLATILE STRICT;
COMMENT ON FUNCTION pg_llm_load_bpe_merges_text(text, text) IS 'load merges.txt sent by a client (scripts/ingest_tokenizer.py)';

CREATE FUNCTION llm_encode(text text, model text DEFAULT NULL) RETURNS int[]
AS 'MODULE_PATHNAME', 'pg_llm_encode' LANGUAGE C STABLE;
COMMENT ON FUNCTION llm_encode(text, text) IS 'GPT-2 token ids of text (byte-level BPE; <|endoftext|> in text is plain text)';

CREATE FUNCTION llm_decode(ids int[], model text DEFAULT NULL) RETURNS text
AS 'MODULE_PATHNAME', 'pg_llm_decode' LANGUAGE C STABLE;
COMMENT ON FUNCTION llm_decode(int[], text) IS 'text of token ids; bytes that are not valid UTF-8, and NUL (which text cannot hold), become U+FFFD';

-- ===========================================================================
-- Generation
-- ===========================================================================
CREATE FUNCTION llm_generate(prompt text, max_tokens int DEFAULT 64, temperature float8 DEFAULT 1.0,
                             topk int DEFAULT 50, topp float8 DEFAULT 0.95,
                             model_name text DEFAULT NULL, eos_token int DEFAULT NULL,
                             seed int DEFAULT NULL, repetition_penalty float8 DEFAULT 1.0,
                             stop text[] DEFAULT NULL)
RETURNS text
AS 'MODULE_PATHNAME', 'pg_llm_generate' LANGUAGE C VOLATILE;
COMMENT ON FUNCTION llm_generate(text, int, float8, int, float8, text, int, int, float8, text[])
    IS 'the text generated after prompt: temperature 0 is greedy; topk 0 and topp 1 turn those filters off; the same seed gives the same text; stops at eos_token (NULL: the tokenizer''s <|endoftext|>; -1: none) or before a stop string';

CREATE FUNCTION llm_generate_stream(prompt text, max_tokens int DEFAULT 64, temperature float8 DEFAULT 1.0,
                                    topk int DEFAULT 50, topp float8 DEFAULT 0.95,
                                    model_name text DEFAULT NULL, eos_token int DEFAULT NULL,
                                    seed int DEFAULT NULL, repetition_penalty float8 DEFAULT 1.0,
                                    stop text[] DEFAULT NULL)
RETURNS TABLE (step int, token_id int, token text, text text, is_complete bool)
AS 'MODULE_PATHNAME', 'pg_llm_generate_stream' LANGUAGE C VOLATILE ROWS 64;
COMMENT ON FUNCTION llm_generate_stream(text, int, float8, int, float8, text, int, int, float8, text[])
    IS 'llm_generate one row per token, each computed when fetched: call it in the SELECT list and read through a cursor to stream';

CREATE FUNCTION llm_beam_search(prompt text, beam_width int DEFAULT 4, max_tokens int DEFAULT 32,
                                model_name text DEFAULT NULL, length_penalty float8 DEFAULT 1.0,
                                eos_token int DEFAULT NULL)
RETURNS TABLE (rank int, score float8, token_ids int[], text text)
AS 'MODULE_PATHNAME', 'pg_llm_beam_search' LANGUAGE C VOLATILE ROWS 4;
COMMENT ON FUNCTION llm_beam_search(text, int, int, text, float8, int)
    IS 'the beam_width best continuations by sum of log-probabilities / length^length_penalty';

CREATE FUNCTION llm_perplexity(text text, model text DEFAULT NULL) RETURNS float8
AS 'MODULE_PATHNAME', 'pg_llm_perplexity' LANGUAGE C STABLE;
COMMENT ON FUNCTION llm_perplexity(text, text) IS 'exp of the mean next-token loss (sliding windows of the context length for long texts)';

-- ===========================================================================
-- Weights files
-- ===========================================================================
CREATE FUNCTION pg_llm_import_npz(path text, model text, n_head int DEFAULT NULL) RETURNS bigint
AS 'MODULE_PATHNAME', 'pg_llm_import_npz' LANGUAGE C VOLATILE;
COMMENT ON FUNCTION pg_llm_import_npz(text, text, int)
    IS 'GPT-2 weights from a server .npz (np.savez / np.savez_compressed) or .safetensors file with HuggingFace names; replaces the model''s parameters; returns their number';

CREATE FUNCTION pg_llm_export_npz(path text, model text) RETURNS bigint
AS 'MODULE_PATHNAME', 'pg_llm_export_npz' LANGUAGE C VOLATILE STRICT;
COMMENT ON FUNCTION pg_llm_export_npz(text, text)
    IS 'the model''s parameters to a server file, .npz or .safetensors by the extension, HuggingFace names and shapes; returns the bytes written';

CREATE FUNCTION pg_llm_backend_stats(OUT tokens_sampled bigint, OUT model_loads bigint,
                                     OUT cache_hits bigint, OUT cache_mb float8, OUT working_mb float8)
AS 'MODULE_PATHNAME', 'pg_llm_backend_stats' LANGUAGE C VOLATILE STRICT;
COMMENT ON FUNCTION pg_llm_backend_stats() IS 'this backend: tokens generated, models loaded from tables, model cache hits, MB in the model cache (bounded by pg_llm.model_cache_mb), MB of other pg_llm buffers (bounded by pg_llm.max_memory_mb)';

-- ===========================================================================
-- Training
-- ===========================================================================
CREATE TABLE llm_dataset (
    id       bigserial PRIMARY KEY,
    dataset  text NOT NULL DEFAULT 'default',
    tokens   int[] NOT NULL,
    target   int[] NOT NULL,
    split    text NOT NULL DEFAULT 'train' CHECK (split IN ('train', 'val')),
    CHECK (cardinality(tokens) > 0 AND cardinality(tokens) = cardinality(target))
);
CREATE INDEX llm_dataset_dataset_split ON llm_dataset (dataset, split);
COMMENT ON TABLE llm_dataset IS 'training data: blocks of token ids and their next-token targets';

CREATE TABLE llm_train_log (
    id           bigserial PRIMARY KEY,
    model        text NOT NULL REFERENCES llm_model_config (model) ON DELETE CASCADE ON UPDATE CASCADE,
    step         int NOT NULL,
    lr           float8,
    loss         float8,
    grad_norm    float8,
    val_loss     float8,
    tokens_per_s float8,
    created_at   timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX llm_train_log_model_step ON llm_train_log (model, step);

CREATE TABLE llm_checkpoint (
    id         bigserial PRIMARY KEY,
    model      text NOT NULL REFERENCES llm_model_config (model) ON DELETE CASCADE ON UPDATE CASCADE,
    step       int NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    note       text,
    n_params   bigint NOT NULL,
    file_path  text,
    config     jsonb NOT NULL
);

CREATE TABLE llm_checkpoint_param (
    checkpoint_id bigint NOT NULL REFERENCES llm_checkpoint (id) ON DELETE CASCADE,
    name   text NOT NULL,
    shape  int[] NOT NULL,
    data   bytea NOT NULL,
    m      bytea,
    v      bytea,
    PRIMARY KEY (checkpoint_id, name)
);
ALTER TABLE llm_checkpoint_param ALTER COLUMN data SET STORAGE EXTERNAL,
                                 ALTER COLUMN m SET STORAGE EXTERNAL,
                                 ALTER COLUMN v SET STORAGE EXTERNAL;

CREATE FUNCTION llm_dataset_from_text(model text, text text, block_size int DEFAULT 64,
                                      val_fraction float8 DEFAULT 0.1,
                                      dataset text DEFAULT 'default')
RETURNS int
AS 'MODULE_PATHNAME', 'pg_llm_dataset_from_text' LANGUAGE C VOLATILE STRICT;
COMMENT ON FUNCTION llm_dataset_from_text(text, text, int, float8, text)
    IS 'tokenize text with the model''s tokenizer into blocks of block_size (tokens, targets): the last val_fraction of the tokens is the val split; returns the rows added';

-- the steps of a training run, in this backend (state kept between calls)
CREATE FUNCTION pg_llm_train_begin(model text, n_steps int, batch_size int, block_size int,
                                   learning_rate float8, min_lr float8, warmup_iters int,
                                   lr_decay_iters int, weight_decay float8, beta1 float8,
                                   beta2 float8, grad_clip float8, gradient_accumulation_steps int,
                                   dropout float8, eval_interval int, eval_iters int, seed int,
                                   max_seconds float8, dataset text, log_interval int, eps float8)
RETURNS int
AS 'MODULE_PATHNAME', 'pg_llm_train_begin' LANGUAGE C VOLATILE;
CREATE FUNCTION pg_llm_train_steps(model text, n int) RETURNS int
AS 'MODULE_PATHNAME', 'pg_llm_train_steps' LANGUAGE C VOLATILE STRICT;
CREATE FUNCTION pg_llm_train_writeback(model text) RETURNS bigint
AS 'MODULE_PATHNAME', 'pg_llm_train_writeback' LANGUAGE C VOLATILE STRICT;
CREATE FUNCTION pg_llm_train_end(model text) RETURNS void
AS 'MODULE_PATHNAME', 'pg_llm_train_end' LANGUAGE C VOLATILE STRICT;

CREATE FUNCTION llm_train(model text, n_steps int, batch_size int DEFAULT 8, block_size int DEFAULT NULL,
                          learning_rate float8 DEFAULT 6e-4, min_lr float8 DEFAULT NULL,
                          warmup_iters int DEFAULT 100, lr_decay_iters int DEFAULT NULL,
                          weight_decay float8 DEFAULT 0.1, beta1 float8 DEFAULT 0.9,
                          beta2 float8 DEFAULT 0.95, grad_clip float8 DEFAULT 1.0,
                          gradient_accumulation_steps int DEFAULT 1, dropout float8 DEFAULT 0.0,
                          eval_interval int DEFAULT 100, eval_iters int DEFAULT 20,
                          seed int DEFAULT 1337, max_seconds float8 DEFAULT NULL,
                          dataset text DEFAULT 'default', log_interval int DEFAULT 10,
                          eps float8 DEFAULT 1e-8)
RETURNS float8
LANGUAGE plpgsql VOLATILE
SET search_path FROM CURRENT
AS $$
DECLARE
    done int := 0;
    k int;
    last float8;
BEGIN
    PERFORM @extschema@.pg_llm_train_begin(model, n_steps, batch_size, block_size, learning_rate,
        min_lr, warmup_iters, lr_decay_iters, weight_decay, beta1, beta2, grad_clip,
        gradient_accumulation_steps, dropout, eval_interval, eval_iters, seed, max_seconds,
        dataset, log_interval, eps);
    WHILE done < n_steps LOOP
        k := @extschema@.pg_llm_train_steps(model, n_steps - done);
        done := done + k;
        EXIT WHEN k = 0;
    END LOOP;
    PERFORM @extschema@.pg_llm_train_writeback(model);
    PERFORM @extschema@.pg_llm_train_end(model);
    SELECT l.loss INTO last FROM @extschema@.llm_train_log l
     WHERE l.model = llm_train.model ORDER BY l.id DESC LIMIT 1;
    RETURN last;
END
$$;
COMMENT ON FUNCTION llm_train(text, int, int, int, float8, float8, int, int, float8, float8, float8, float8, int, float8, int, int, int, float8, text, int, float8)
    IS 'train n_steps AdamW steps on llm_dataset in one transaction (llm_train_run commits as it goes); returns the last training loss';

-- pg_gpt2's form, llm_train(model, n_steps, n_layer, n_head, D, vocab,
-- dropout_p, beta1, beta2, eps, wd, lr_max, warmup, grad_clip, grad_workers,
-- prune_workers), so that its callers keep working: the shape arguments
-- must name the model's own shape; the workers arguments are accepted and
-- have no effect (pg_llm.num_threads sets the threads)
CREATE FUNCTION llm_train(model text, n_steps int, n_layer int, n_head int, d int, vocab int,
                          dropout_p float4 DEFAULT 0.1, beta1 float4 DEFAULT 0.9,
                          beta2 float4 DEFAULT 0.999, eps float4 DEFAULT 1e-8,
                          wd float4 DEFAULT 0.01, lr_max float4 DEFAULT 2.5e-4,
                          warmup int DEFAULT 2000, grad_clip float4 DEFAULT NULL,
                          grad_workers int DEFAULT 1, prune_workers int DEFAULT 1)
RETURNS float8
LANGUAGE plpgsql VOLATILE
SET search_path FROM CURRENT
AS $$
DECLARE
    cfg record;
BEGIN
    SELECT c.n_layer, c.n_head, c.d_model, c.vocab INTO cfg
      FROM @extschema@.llm_model_config c WHERE c.model = llm_train.model;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'model "%" does not exist', model USING ERRCODE = 'undefined_object';
    END IF;
    IF (cfg.n_layer, cfg.n_head, cfg.d_model, cfg.vocab) IS DISTINCT FROM (n_layer, n_head, d, vocab) THEN
        RAISE EXCEPTION 'llm_train: model "%" has n_layer %, n_head %, d_model %, vocab %, not %, %, %, %',
              model, cfg.n_layer, cfg.n_head, cfg.d_model, cfg.vocab, n_layer, n_head, d, vocab
              USING ERRCODE = 'invalid_parameter_value',
                    HINT = 'The shape arguments of pg_gpt2''s llm_train must match llm_model_config; or call llm_train(model, n_steps, batch_size => ...).';
    END IF;
    RETURN @extschema@.llm_train(model, n_steps, learning_rate => lr_max::float8,
                                 warmup_iters => warmup, weight_decay => wd::float8,
                                 beta1 => beta1::float8, beta2 => beta2::float8,
                                 grad_clip => coalesce(grad_clip, 0)::float8,
                                 dropout => dropout_p::float8, eps => eps::float8);
END
$$;
COMMENT ON FUNCTION llm_train(text, int, int, int, int, int, float4, float4, float4, float4, float4, float4, int, float4, int, int)
    IS 'pg_gpt2''s llm_train form (shape arguments checked against the model; grad_workers and prune_workers have no effect): calls llm_train with learning_rate => lr_max, warmup_iters => warmup, weight_decay => wd, dropout => dropout_p';

CREATE PROCEDURE llm_train_run(model text, n_steps int, batch_size int DEFAULT 8, block_size int DEFAULT NULL,
                               learning_rate float8 DEFAULT 6e-4, min_lr float8 DEFAULT NULL,
                               warmup_iters int DEFAULT 100, lr_decay_iters int DEFAULT NULL,
                               weight_decay float8 DEFAULT 0.1, beta1 float8 DEFAULT 0.9,
                               beta2 float8 DEFAULT 0.95, grad_clip float8 DEFAULT 1.0,
                               gradient_accumulation_steps int DEFAULT 1, dropout float8 DEFAULT 0.0,
                               eval_interval int DEFAULT 100, eval_iters int DEFAULT 20,
                               seed int DEFAULT 1337, max_seconds float8 DEFAULT NULL,
                               checkpoint_interval int DEFAULT 100, dataset text DEFAULT 'default',
                               log_interval int DEFAULT 10, eps float8 DEFAULT 1e-8)
LANGUAGE plpgsql
AS $$
DECLARE
    done int := 0;
    k int;
BEGIN
    IF checkpoint_interval IS NULL OR checkpoint_interval < 1 THEN
        RAISE EXCEPTION 'llm_train_run: checkpoint_interval must be positive'
              USING ERRCODE = 'invalid_parameter_value';
    END IF;
    -- fails at once inside a transaction block, before any work
    COMMIT;
    PERFORM @extschema@.pg_llm_train_begin(model, n_steps, batch_size, block_size, learning_rate,
        min_lr, warmup_iters, lr_decay_iters, weight_decay, beta1, beta2, grad_clip,
        gradient_accumulation_steps, dropout, eval_interval, eval_iters, seed, max_seconds,
        dataset, log_interval, eps);
    COMMIT;
    WHILE done < n_steps LOOP
        -- one step per transaction: its log row is visible at once
        k := @extschema@.pg_llm_train_steps(model, 1);
        done := done + k;
        IF k = 0 OR done >= n_steps OR done % checkpoint_interval = 0 THEN
            PERFORM @extschema@.pg_llm_train_writeback(model);
        END IF;
        COMMIT;
        EXIT WHEN k = 0;
    END LOOP;
    PERFORM @extschema@.pg_llm_train_end(model);
END
$$;
COMMENT ON PROCEDURE llm_train_run(text, int, int, int, float8, float8, int, int, float8, float8, float8, float8, int, float8, int, int, int, float8, int, text, int, float8)
    IS 'train n_steps, committing every step (llm_train_log) and writing parameters and AdamW state back every checkpoint_interval steps and at the end; CALL it outside a transaction block';

CREATE FUNCTION llm_train_step(model text, tokens int[], targets int[], learning_rate float8 DEFAULT 1e-4,
                               weight_decay float8 DEFAULT 0.0, beta1 float8 DEFAULT 0.9,
                               beta2 float8 DEFAULT 0.999, eps float8 DEFAULT 1e-8,
                               grad_clip float8 DEFAULT 0.0)
RETURNS float4
AS 'MODULE_PATHNAME', 'pg_llm_train_step' LANGUAGE C VOLATILE;
COMMENT ON FUNCTION llm_train_step(text, int[], int[], float8, float8, float8, float8, float8, float8)
    IS 'one AdamW step on the batch given (tokens and targets: one sequence, or a 2-D array of them); writes the model back; returns the loss before the step';

CREATE FUNCTION llm_gradients(model text, tokens int[], targets int[])
RETURNS TABLE (name text, shape int[], grad bytea)
AS 'MODULE_PATHNAME', 'pg_llm_gradients' LANGUAGE C STABLE;
COMMENT ON FUNCTION llm_gradients(text, int[], int[])
    IS 'gradient of the mean loss on a batch, per parameter tensor (llm_param''s layout)';

CREATE FUNCTION llm_evaluate(model text, split text DEFAULT 'val', dataset text DEFAULT 'default',
                             OUT loss float8, OUT perplexity float8)
AS 'MODULE_PATHNAME', 'pg_llm_evaluate' LANGUAGE C STABLE;
COMMENT ON FUNCTION llm_evaluate(text, text, text) IS 'mean loss and perplexity over every block of a split';

-- ===========================================================================
-- Checkpoints: parameters and AdamW state, inside the database
-- ===========================================================================
CREATE FUNCTION llm_checkpoint_save(model text, note text DEFAULT NULL, file_path text DEFAULT NULL)
RETURNS bigint
LANGUAGE plpgsql VOLATILE
SET search_path FROM CURRENT
AS $$
DECLARE
    cid bigint;
    n bigint;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM @extschema@.llm_param p WHERE p.model = llm_checkpoint_save.model) THEN
        RAISE EXCEPTION 'model "%" has no parameters to save', llm_checkpoint_save.model
              USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
    INSERT INTO @extschema@.llm_checkpoint (model, step, note, n_params, file_path, config)
    SELECT c.model, c.train_step, llm_checkpoint_save.note, 0, llm_checkpoint_save.file_path,
           jsonb_build_object('n_layer', c.n_layer, 'n_head', c.n_head, 'd_model', c.d_model,
                              'n_positions', c.n_positions, 'vocab', c.vocab)
      FROM @extschema@.llm_model_config c WHERE c.model = llm_checkpoint_save.model
    RETURNING id INTO cid;
    INSERT INTO @extschema@.llm_checkpoint_param (checkpoint_id, name, shape, data, m, v)
    SELECT cid, p.name, p.shape, p.data, p.m, p.v FROM @extschema@.llm_param p
     WHERE p.model = llm_checkpoint_save.model;
    SELECT sum(octet_length(cp.data)) / 4 INTO n FROM @extschema@.llm_checkpoint_param cp
     WHERE cp.checkpoint_id = cid;
    UPDATE @extschema@.llm_checkpoint SET n_params = n WHERE id = cid;
    IF file_path IS NOT NULL THEN
        PERFORM @extschema@.pg_llm_export_npz(file_path, model);
    END IF;
    RETURN cid;
END
$$;
COMMENT ON FUNCTION llm_checkpoint_save(text, text, text)
    IS 'snapshot the model''s parameters and AdamW state (as last written back) in the database, and to a .npz/.safetensors file if a path is given; returns the checkpoint id';

CREATE FUNCTION llm_checkpoint_load(model text, checkpoint_id bigint) RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path FROM CURRENT
AS $$
DECLARE
    ck record;
BEGIN
    SELECT * INTO ck FROM @extschema@.llm_checkpoint k WHERE k.id = llm_checkpoint_load.checkpoint_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'checkpoint % does not exist', checkpoint_id USING ERRCODE = 'undefined_object';
    END IF;
    IF ck.model <> llm_checkpoint_load.model THEN
        RAISE EXCEPTION 'checkpoint % belongs to model "%", not "%"', checkpoint_id, ck.model, model
              USING ERRCODE = 'invalid_parameter_value';
    END IF;
    -- the configuration may have changed since: restore it with the tensors
    UPDATE @extschema@.llm_model_config c
       SET n_layer = (ck.config->>'n_layer')::int, n_head = (ck.config->>'n_head')::int,
           d_model = (ck.config->>'d_model')::int, n_positions = (ck.config->>'n_positions')::int,
           vocab = (ck.config->>'vocab')::int, train_step = ck.step,
           version = nextval('@extschema@.llm_model_version_seq'), updated_at = now()
     WHERE c.model = llm_checkpoint_load.model;
    DELETE FROM @extschema@.llm_param p WHERE p.model = llm_checkpoint_load.model;
    INSERT INTO @extschema@.llm_param (model, name, shape, data, m, v)
    SELECT llm_checkpoint_load.model, cp.name, cp.shape, cp.data, cp.m, cp.v
      FROM @extschema@.llm_checkpoint_param cp WHERE cp.checkpoint_id = llm_checkpoint_load.checkpoint_id;
END
$$;
COMMENT ON FUNCTION llm_checkpoint_load(text, bigint) IS 'restore the parameters, AdamW state, step and configuration of a checkpoint';

-- ===========================================================================
-- Privileges
--
-- Everybody may run the tensor ops, read models and tokenizers, encode,
-- decode, generate, score and evaluate.  Whatever writes a model, a
-- tokenizer, a dataset or a checkpoint is revoked from PUBLIC and granted to
-- the role pgllm_admin (GRANT pgllm_admin TO alice; "pg_llm_admin" cannot be:
-- role names starting with pg_ are reserved).  Reading or writing
-- server files further needs pg_read_server_files / pg_write_server_files
-- (or superuser): the C functions check it themselves.
-- ===========================================================================
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'pgllm_admin') THEN
        CREATE ROLE pgllm_admin NOLOGIN;
    END IF;
END
$$;
COMMENT ON ROLE pgllm_admin IS 'may create, import, export, train and drop pg_llm models and load tokenizers';

DO $$
DECLARE
    routine regprocedure;
BEGIN
    FOREACH routine IN ARRAY ARRAY[
        'llm_create_model(text, int, int, int, int, int, int)',
        'llm_drop_model(text)',
        'pg_llm_import_npz(text, text, int)',
        'pg_llm_export_npz(text, text)',
        'pg_llm_load_bpe_vocab(text, text)',
        'pg_llm_load_bpe_merges(text, text)',
        'pg_llm_load_bpe_vocab_text(text, text)',
        'pg_llm_load_bpe_merges_text(text, text)',
        'llm_dataset_from_text(text, text, int, float8, text)',
        'pg_llm_train_begin(text, int, int, int, float8, float8, int, int, float8, float8, float8, float8, int, float8, int, int, int, float8, text, int, float8)',
        'pg_llm_train_steps(text, int)',
        'pg_llm_train_writeback(text)',
        'pg_llm_train_end(text)',
        'llm_train(text, int, int, int, float8, float8, int, int, float8, float8, float8, float8, int, float8, int, int, int, float8, text, int, float8)',
        'llm_train(text, int, int, int, int, int, float4, float4, float4, float4, float4, float4, int, float4, int, int)',
        'llm_train_step(text, int[], int[], float8, float8, float8, float8, float8, float8)',
        'llm_checkpoint_save(text, text, text)',
        'llm_checkpoint_load(text, bigint)',
        'llm_train_run(text, int, int, int, float8, float8, int, int, float8, float8, float8, float8, int, float8, int, int, int, float8, int, text, int, float8)'
    ]::regprocedure[]
    LOOP
        EXECUTE format('REVOKE EXECUTE ON ROUTINE %s FROM PUBLIC', routine);
        EXECUTE format('GRANT EXECUTE ON ROUTINE %s TO pgllm_admin', routine);
    END LOOP;
END
$$;

-- the tables: models, tokenizers, the training log and the checkpoint list
-- are readable by all (generation reads them as the calling role); training
-- data and checkpoint contents only by pgllm_admin
GRANT SELECT ON llm_model_config, llm_param, llm_vocab, llm_merges, llm_models,
                llm_train_log, llm_checkpoint TO PUBLIC;
GRANT SELECT, INSERT, UPDATE, DELETE ON llm_model_config, llm_param, llm_vocab, llm_merges,
                llm_dataset, llm_train_log, llm_checkpoint, llm_checkpoint_param TO pgllm_admin;
GRANT USAGE, SELECT, UPDATE ON SEQUENCE llm_model_version_seq, llm_dataset_id_seq,
                llm_train_log_id_seq, llm_checkpoint_id_seq TO pgllm_admin;
