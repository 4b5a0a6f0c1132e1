-- pg_llm: GPT-2 inside PostgreSQL
\echo Use "CREATE EXTENSION pg_llm" to load this file. \quit

-- Every name this script uses resolves in pg_catalog or is qualified with
-- the extension's schema: whatever another role created in a schema on the
-- installer's search_path (an overload of a function or an operator, a type)
-- can never be picked up here (PostgreSQL's "Security Considerations for
-- Extensions").  SET LOCAL lasts until the end of this script.  Functions
-- written in SQL pin the same search_path; the training procedure, which
-- commits and so cannot, evaluates no operator and qualifies every call.
SET LOCAL search_path = pg_catalog, pg_temp;

-- ===========================================================================
-- Tensor ops and their gradients.
-- Tensors are float32 bytea (little-endian, row-major) with explicit shapes.
-- Inputs of arithmetic ops must be finite: NaN or Infinity raises 22P01.
-- ===========================================================================

CREATE FUNCTION @extschema@.pg_llm_info() RETURNS text
AS 'MODULE_PATHNAME', 'pg_llm_info' LANGUAGE C VOLATILE STRICT;

CREATE FUNCTION @extschema@.pg_llm_matmul(a bytea, b bytea, m int, k int, n int) RETURNS bytea
AS 'MODULE_PATHNAME', 'pg_llm_matmul' LANGUAGE C IMMUTABLE PARALLEL SAFE STRICT;
COMMENT ON FUNCTION @extschema@.pg_llm_matmul(bytea, bytea, int, int, int) IS '(m,k) @ (k,n) -> (m,n)';

CREATE FUNCTION @extschema@.pg_llm_matmul_backward(a bytea, b bytea, dy bytea, m int, k int, n int,
                                       OUT da bytea, OUT db bytea)
AS 'MODULE_PATHNAME', 'pg_llm_matmul_backward' LANGUAGE C IMMUTABLE PARALLEL SAFE STRICT;

CREATE FUNCTION @extschema@.pg_llm_add(a bytea, b bytea) RETURNS bytea
AS 'MODULE_PATHNAME', 'pg_llm_add' LANGUAGE C IMMUTABLE PARALLEL SAFE STRICT;

CREATE FUNCTION @extschema@.pg_llm_gelu(x bytea) RETURNS bytea
AS 'MODULE_PATHNAME', 'pg_llm_gelu' LANGUAGE C IMMUTABLE PARALLEL SAFE STRICT;
COMMENT ON FUNCTION @extschema@.pg_llm_gelu(bytea) IS 'GPT-2''s GELU: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))';

CREATE FUNCTION @extschema@.pg_llm_gelu_backward(x bytea, dy bytea) RETURNS bytea
AS 'MODULE_PATHNAME', 'pg_llm_gelu_backward' LANGUAGE C IMMUTABLE PARALLEL SAFE STRICT;

CREATE FUNCTION @extschema@.pg_llm_softmax(x bytea) RETURNS bytea
AS 'MODULE_PATHNAME', 'pg_llm_softmax' LANGUAGE C IMMUTABLE PARALLEL SAFE STRICT;
CREATE FUNCTION @extschema@.pg_llm_softmax(x bytea, rows int, cols int) RETURNS bytea
AS 'MODULE_PATHNAME', 'pg_llm_softmax' LANGUAGE C IMMUTABLE PARALLEL SAFE STRICT;

CREATE FUNCTION @extschema@.pg_llm_softmax_backward(y bytea, dy bytea) RETURNS bytea
AS 'MODULE_PATHNAME', 'pg_llm_softmax_backward' LANGUAGE C IMMUTABLE PARALLEL SAFE STRICT;
CREATE FUNCTION @extschema@.pg_llm_softmax_backward(y bytea, dy bytea, rows int, cols int) RETURNS bytea
AS 'MODULE_PATHNAME', 'pg_llm_softmax_backward' LANGUAGE C IMMUTABLE PARALLEL SAFE STRICT;

CREATE FUNCTION @extschema@.pg_llm_layernorm(x bytea, gamma bytea, beta bytea, eps float4 DEFAULT 1e-5)
RETURNS bytea
AS 'MODULE_PATHNAME', 'pg_llm_layernorm' LANGUAGE C IMMUTABLE PARALLEL SAFE STRICT;
COMMENT ON FUNCTION @extschema@.pg_llm_layernorm(bytea, bytea, bytea, float4)
    IS 'layernorm over the last dimension; rows = len(x) / len(gamma)';

CREATE FUNCTION @extschema@.pg_llm_layernorm_backward(x bytea, dy bytea, gamma bytea, eps float4 DEFAULT 1e-5,
                                          OUT dx bytea, OUT dgamma bytea, OUT dbeta bytea)
AS 'MODULE_PATHNAME', 'pg_llm_layernorm_backward' LANGUAGE C IMMUTABLE PARALLEL SAFE STRICT;

CREATE FUNCTION @extschema@.pg_llm_cross_entropy(logits bytea, target int) RETURNS float4
AS 'MODULE_PATHNAME', 'pg_llm_cross_entropy' LANGUAGE C IMMUTABLE PARALLEL SAFE STRICT;
CREATE FUNCTION @extschema@.pg_llm_cross_entropy(logits bytea, targets int[]) RETURNS float4
AS 'MODULE_PATHNAME', 'pg_llm_cross_entropy_rows' LANGUAGE C IMMUTABLE PARALLEL SAFE STRICT;
COMMENT ON FUNCTION @extschema@.pg_llm_cross_entropy(bytea, int[])
    IS 'mean cross-entropy of rows = len(targets) rows of logits';

CREATE FUNCTION @extschema@.pg_llm_cross_entropy_backward(logits bytea, target int) RETURNS bytea
AS 'MODULE_PATHNAME', 'pg_llm_cross_entropy_backward' LANGUAGE C IMMUTABLE PARALLEL SAFE STRICT;
CREATE FUNCTION @extschema@.pg_llm_cross_entropy_backward(logits bytea, targets int[]) RETURNS bytea
AS 'MODULE_PATHNAME', 'pg_llm_cross_entropy_backward_rows' LANGUAGE C IMMUTABLE PARALLEL SAFE STRICT;

CREATE FUNCTION @extschema@.pg_llm_attention(x bytea, w_qkv bytea, b_qkv bytea, w_o bytea, b_o bytea,
                                 n_head int, T int, D int) RETURNS bytea
AS 'MODULE_PATHNAME', 'pg_llm_attention' LANGUAGE C IMMUTABLE PARALLEL SAFE STRICT;
COMMENT ON FUNCTION @extschema@.pg_llm_attention(bytea, bytea, bytea, bytea, bytea, int, int, int)
    IS 'causal multi-head self-attention of one sequence x (T,D) with fused QKV (D,3D)';

CREATE FUNCTION @extschema@.pg_llm_attention_backward(x bytea, w_qkv bytea, b_qkv bytea, w_o bytea, b_o bytea,
                                          grad_output bytea, n_head int, T int, D int,
                                          OUT dx bytea, OUT dw_qkv bytea, OUT db_qkv bytea,
                                          OUT dw_o bytea, OUT db_o bytea)
AS 'MODULE_PATHNAME', 'pg_llm_attention_backward' LANGUAGE C IMMUTABLE PARALLEL SAFE STRICT;

CREATE FUNCTION @extschema@.pg_llm_dropout(x bytea, p float4, training bool, seed int) RETURNS bytea
AS 'MODULE_PATHNAME', 'pg_llm_dropout' LANGUAGE C IMMUTABLE PARALLEL SAFE STRICT;
CREATE FUNCTION @extschema@.pg_llm_dropout(x bytea, p float4, training bool DEFAULT true) RETURNS bytea
AS 'MODULE_PATHNAME', 'pg_llm_dropout' LANGUAGE C VOLATILE PARALLEL SAFE STRICT;
COMMENT ON FUNCTION @extschema@.pg_llm_dropout(bytea, float4, bool)
    IS 'inverted dropout with a random mask; give a seed for a reproducible one';

CREATE FUNCTION @extschema@.pg_llm_dropout_backward(x bytea, y bytea, dy bytea, p float4, training bool)
RETURNS bytea
AS 'MODULE_PATHNAME', 'pg_llm_dropout_backward' LANGUAGE C IMMUTABLE PARALLEL SAFE STRICT;
COMMENT ON FUNCTION @extschema@.pg_llm_dropout_backward(bytea, bytea, bytea, float4, bool)
    IS 'mask read off the forward''s output y (an element with x = 0 counts as kept); the seeded form is exact';
CREATE FUNCTION @extschema@.pg_llm_dropout_backward(dy bytea, p float4, training bool, seed int) RETURNS bytea
AS 'MODULE_PATHNAME', 'pg_llm_dropout_backward_seeded' LANGUAGE C IMMUTABLE PARALLEL SAFE STRICT;

CREATE FUNCTION @extschema@.pg_llm_transpose(x bytea, rows int, cols int) RETURNS bytea
AS 'MODULE_PATHNAME', 'pg_llm_transpose' LANGUAGE C IMMUTABLE PARALLEL SAFE STRICT;

CREATE FUNCTION @extschema@.pg_llm_zeros_like(x bytea) RETURNS bytea
AS 'MODULE_PATHNAME', 'pg_llm_zeros_like' LANGUAGE C IMMUTABLE PARALLEL SAFE STRICT;
CREATE FUNCTION @extschema@.pg_llm_ones_like(x bytea) RETURNS bytea
AS 'MODULE_PATHNAME', 'pg_llm_ones_like' LANGUAGE C IMMUTABLE PARALLEL SAFE STRICT;

CREATE FUNCTION @extschema@.pg_llm_adamw_step(weight bytea, grad bytea, m bytea, v bytea,
                                  lr float4, beta1 float4 DEFAULT 0.9, beta2 float4 DEFAULT 0.999,
                                  eps float4 DEFAULT 1e-8, weight_decay float4 DEFAULT 0.01,
                                  step int DEFAULT 1,
                                  OUT weight bytea, OUT m bytea, OUT v bytea)
AS 'MODULE_PATHNAME', 'pg_llm_adamw_step' LANGUAGE C IMMUTABLE PARALLEL SAFE STRICT;
COMMENT ON FUNCTION @extschema@.pg_llm_adamw_step(bytea, bytea, bytea, bytea, float4, float4, float4, float4, float4, int)
    IS 'one AdamW step (bias-corrected, decoupled weight decay), as torch.optim.AdamW; step counts from 1';

CREATE FUNCTION @extschema@.pg_llm_grad_clip(grad bytea, max_norm float4) RETURNS bytea
AS 'MODULE_PATHNAME', 'pg_llm_grad_clip' LANGUAGE C IMMUTABLE PARALLEL SAFE STRICT;

CREATE FUNCTION @extschema@.pg_llm_lr_schedule(step int, warmup int, total int, lr_max float4,
                                   lr_min float4 DEFAULT 0) RETURNS float4
AS 'MODULE_PATHNAME', 'pg_llm_lr_schedule' LANGUAGE C IMMUTABLE PARALLEL SAFE STRICT;
COMMENT ON FUNCTION @extschema@.pg_llm_lr_schedule(int, int, int, float4, float4)
    IS 'nanoGPT''s schedule: lr_max*(step+1)/(warmup+1) while step < warmup, then cosine to lr_min at step total';

CREATE FUNCTION @extschema@.pg_llm_tensor(float4[]) RETURNS bytea
AS 'MODULE_PATHNAME', 'pg_llm_tensor' LANGUAGE C IMMUTABLE PARALLEL SAFE STRICT;
CREATE FUNCTION @extschema@.pg_llm_tensor_array(bytea) RETURNS float4[]
AS 'MODULE_PATHNAME', 'pg_llm_tensor_array' LANGUAGE C IMMUTABLE PARALLEL SAFE STRICT;

-- ===========================================================================
-- Models: configuration, parameters (one row per tensor, HuggingFace GPT-2
-- names and shapes, float32 bytea), AdamW state beside them.
-- Every write of a model's parameters takes a new version from
-- llm_model_version_seq (never reused, even after a rollback, and kept by
-- pg_dump): backends cache a model by (model, version).
--
-- pg_dump keeps every table of user state below and the sequences behind
-- them (pg_extension_config_dump).  The four pre-registered configurations
-- are rows CREATE EXTENSION inserts itself: while untouched (preset) they
-- are left out of a dump; once used or changed they are dumped, and on
-- restore they replace the untouched row of the same name.
-- ===========================================================================

CREATE SEQUENCE @extschema@.llm_model_version_seq;

CREATE TABLE @extschema@.llm_model_config (
    model          text PRIMARY KEY CHECK (model <> '' AND pg_catalog.length(model) <= 200),
    n_layer        int  NOT NULL CHECK (n_layer BETWEEN 1 AND 256),
    n_head         int  NOT NULL CHECK (n_head >= 1),
    n_embd         int  NOT NULL CHECK (n_embd BETWEEN 1 AND 65536 AND n_embd % n_head = 0),
    n_positions    int  NOT NULL CHECK (n_positions BETWEEN 1 AND 1048576),
    vocab          int  NOT NULL CHECK (vocab BETWEEN 1 AND 16777216),
    layer_norm_eps float4 NOT NULL DEFAULT 1e-5 CHECK (layer_norm_eps > 0),
    version        bigint NOT NULL DEFAULT pg_catalog.nextval('@extschema@.llm_model_version_seq'::pg_catalog.regclass),
    tokenizer_version bigint,
    train_step     int NOT NULL DEFAULT 0,
    created_at     timestamptz NOT NULL DEFAULT pg_catalog.now(),
    updated_at     timestamptz NOT NULL DEFAULT pg_catalog.now(),
    preset         bool NOT NULL DEFAULT false
);
COMMENT ON TABLE @extschema@.llm_model_config IS 'GPT-2 model configurations (nanoGPT''s names: n_layer, n_head, n_embd, ...)';
COMMENT ON COLUMN @extschema@.llm_model_config.preset
    IS 'a pre-registered configuration as CREATE EXTENSION inserted it: not dumped; any change clears it';

INSERT INTO @extschema@.llm_model_config (model, n_layer, n_head, n_embd, n_positions, vocab, preset) VALUES
    ('gpt2-small', 12, 12, 768, 1024, 50257, true),
    ('gpt2-medium', 24, 16, 1024, 1024, 50257, true),
    ('gpt2-large', 36, 20, 1280, 1024, 50257, true),
    ('gpt2-xl', 48, 25, 1600, 1024, 50257, true);

-- a changed row is no longer a preset; an inserted row (a restore, or a new
-- model of a preset's name) replaces the untouched preset of its name
CREATE FUNCTION @extschema@.pg_llm_config_changed() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        DELETE FROM @extschema@.llm_model_config c WHERE c.model = NEW.model AND c.preset;
    END IF;
    NEW.preset := false;
    RETURN NEW;
END
$$;
CREATE TRIGGER llm_model_config_changed BEFORE INSERT OR UPDATE ON @extschema@.llm_model_config
    FOR EACH ROW EXECUTE FUNCTION @extschema@.pg_llm_config_changed();

SELECT pg_catalog.pg_extension_config_dump('@extschema@.llm_model_config', 'WHERE NOT preset');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.llm_model_version_seq', '');

CREATE TABLE @extschema@.llm_param (
    model  text NOT NULL REFERENCES @extschema@.llm_model_config (model) ON DELETE CASCADE ON UPDATE CASCADE,
    name   text NOT NULL,
    shape  int[] NOT NULL,
    data   bytea NOT NULL,
    m      bytea,            -- AdamW first moment (NULL before training)
    v      bytea,            -- AdamW second moment
    PRIMARY KEY (model, name)
);
COMMENT ON TABLE @extschema@.llm_param IS 'model parameters, one row per tensor, HuggingFace GPT-2 names, float32 little-endian; linear weights as (out, in), the transpose of HuggingFace''s Conv1D';
-- floats do not compress: skip pglz, so that loading a model is a copy
ALTER TABLE @extschema@.llm_param ALTER COLUMN data SET STORAGE EXTERNAL,
                      ALTER COLUMN m SET STORAGE EXTERNAL,
                      ALTER COLUMN v SET STORAGE EXTERNAL;
SELECT pg_catalog.pg_extension_config_dump('@extschema@.llm_param', '');

-- ===========================================================================
-- Tokenizer: GPT-2's byte-level BPE, per model
-- ===========================================================================
CREATE TABLE @extschema@.llm_vocab (
    model    text NOT NULL REFERENCES @extschema@.llm_model_config (model) ON DELETE CASCADE ON UPDATE CASCADE,
    token_id int  NOT NULL CHECK (token_id >= 0),
    token    bytea NOT NULL,          -- the token's bytes (vocab.json keys decoded)
    special  bool NOT NULL DEFAULT false,   -- <|endoftext|> and the like: never merged
    PRIMARY KEY (model, token_id)
);

CREATE TABLE @extschema@.llm_merges (
    model     text NOT NULL REFERENCES @extschema@.llm_model_config (model) ON DELETE CASCADE ON UPDATE CASCADE,
    rank      int  NOT NULL CHECK (rank >= 0),
    left_id   int  NOT NULL,
    right_id  int  NOT NULL,
    merged_id int  NOT NULL,
    PRIMARY KEY (model, rank)
);
SELECT pg_catalog.pg_extension_config_dump('@extschema@.llm_vocab', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.llm_merges', '');

-- pg_gpt2's tokenizer tables, as read-only views of llm_vocab and llm_merges:
-- token is the vocab.json key (GPT-2's byte alphabet), bytes its bytes
CREATE FUNCTION @extschema@.pg_llm_bpe_token_text(token bytea, special bool DEFAULT false) RETURNS text
AS 'MODULE_PATHNAME', 'pg_llm_bpe_token_text' LANGUAGE C IMMUTABLE PARALLEL SAFE;
COMMENT ON FUNCTION @extschema@.pg_llm_bpe_token_text(bytea, bool)
    IS 'a token as vocab.json writes it: each byte as a character of GPT-2''s byte alphabet (a special token: its own text)';

CREATE VIEW @extschema@.llm_bpe_vocab AS
SELECT v.model, v.token_id, @extschema@.pg_llm_bpe_token_text(v.token, v.special) AS token,
       NULL::float4 AS score, v.token AS bytes
  FROM @extschema@.llm_vocab v;
COMMENT ON VIEW @extschema@.llm_bpe_vocab
    IS 'pg_gpt2''s llm_bpe_vocab (model, token_id, token, score, bytes): read-only, over llm_vocab';

CREATE VIEW @extschema@.llm_bpe_merges AS
SELECT g.model, g.rank, t."left", t."right", t."left" OPERATOR(pg_catalog.||) ' ' OPERATOR(pg_catalog.||) t."right" AS pair
  FROM @extschema@.llm_merges g
  -- each token looked up by its key: a join here is planned from the
  -- statistics, and a tokenizer loaded since the last ANALYZE looks like one
  -- row, which made the planner filter 50,000 x 50,000 pairs (50 s)
  CROSS JOIN LATERAL (
      SELECT @extschema@.pg_llm_bpe_token_text(
                 (SELECT l.token FROM @extschema@.llm_vocab l
                   WHERE l.model OPERATOR(pg_catalog.=) g.model AND l.token_id OPERATOR(pg_catalog.=) g.left_id)) AS "left",
             @extschema@.pg_llm_bpe_token_text(
                 (SELECT r.token FROM @extschema@.llm_vocab r
                   WHERE r.model OPERATOR(pg_catalog.=) g.model AND r.token_id OPERATOR(pg_catalog.=) g.right_id)) AS "right"
      OFFSET 0) t;
COMMENT ON VIEW @extschema@.llm_bpe_merges
    IS 'pg_gpt2''s llm_bpe_merges (model, rank, left, right, pair): read-only, over llm_merges';

-- writing through them is an error that says where tokenizers come from
CREATE FUNCTION @extschema@.pg_llm_read_only_view() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RAISE EXCEPTION '% is a read-only view of pg_llm''s tokenizer tables', TG_TABLE_NAME
          USING ERRCODE = 'feature_not_supported',
                HINT = 'Load a tokenizer with pg_llm_load_bpe_vocab and pg_llm_load_bpe_merges (or their _text forms).';
END
$$;
CREATE TRIGGER llm_bpe_vocab_read_only INSTEAD OF INSERT OR UPDATE OR DELETE ON @extschema@.llm_bpe_vocab
    FOR EACH ROW EXECUTE FUNCTION @extschema@.pg_llm_read_only_view();
CREATE TRIGGER llm_bpe_merges_read_only INSTEAD OF INSERT OR UPDATE OR DELETE ON @extschema@.llm_bpe_merges
    FOR EACH ROW EXECUTE FUNCTION @extschema@.pg_llm_read_only_view();

CREATE VIEW @extschema@.llm_models AS
SELECT c.model,
       pg_catalog.jsonb_build_object('n_layer', c.n_layer, 'n_head', c.n_head, 'n_embd', c.n_embd,
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
  LEFT JOIN (SELECT model, pg_catalog.sum(pg_catalog.octet_length(data)) AS bytes, pg_catalog.count(*) AS n_tensors
               FROM @extschema@.llm_param GROUP BY model) p USING (model);

CREATE FUNCTION @extschema@.llm_create_model(model text, n_layer int DEFAULT NULL, n_head int DEFAULT NULL,
                                 n_embd int DEFAULT NULL, n_positions int DEFAULT NULL,
                                 vocab int DEFAULT NULL, seed int DEFAULT 1337)
RETURNS bigint
AS 'MODULE_PATHNAME', 'pg_llm_create_model' LANGUAGE C VOLATILE;
COMMENT ON FUNCTION @extschema@.llm_create_model(text, int, int, int, int, int, int)
    IS 'new model with GPT-2''s initialisation; NULL sizes come from the registered configuration; returns the number of parameters';

CREATE FUNCTION @extschema@.llm_drop_model(model text) RETURNS void
AS 'MODULE_PATHNAME', 'pg_llm_drop_model' LANGUAGE C VOLATILE STRICT;

CREATE FUNCTION @extschema@.pg_llm_cache_stats(OUT model text, OUT version bigint, OUT mb float8,
                                   OUT pins int, OUT hits bigint)
RETURNS SETOF record
AS 'MODULE_PATHNAME', 'pg_llm_cache_stats' LANGUAGE C VOLATILE STRICT;
COMMENT ON FUNCTION @extschema@.pg_llm_cache_stats() IS 'this backend''s model cache: one row per cached model version';

-- ===========================================================================
-- Inference
-- ===========================================================================
CREATE FUNCTION @extschema@.llm_logits(token_ids int[], model text DEFAULT NULL) RETURNS bytea
AS 'MODULE_PATHNAME', 'pg_llm_logits' LANGUAGE C STABLE PARALLEL SAFE;
COMMENT ON FUNCTION @extschema@.llm_logits(int[], text) IS 'logits (T, vocab) of every position, float32 bytea';

CREATE FUNCTION @extschema@.llm_loss(model text, tokens int[], targets int[]) RETURNS float4
AS 'MODULE_PATHNAME', 'pg_llm_loss' LANGUAGE C STABLE PARALLEL SAFE;
COMMENT ON FUNCTION @extschema@.llm_loss(text, int[], int[]) IS 'mean cross-entropy of targets[t] after tokens[1..t]';

-- ===========================================================================
-- Tokenizer
-- ===========================================================================
CREATE FUNCTION @extschema@.pg_llm_load_bpe_vocab(path text, model text) RETURNS bigint
AS 'MODULE_PATHNAME', 'pg_llm_load_bpe_vocab' LANGUAGE C VOLATILE STRICT;
COMMENT ON FUNCTION @extschema@.pg_llm_load_bpe_vocab(text, text) IS 'load GPT-2''s vocab.json from a server file (needs pg_read_server_files); returns the number of tokens';

CREATE FUNCTION @extschema@.pg_llm_load_bpe_merges(path text, model text) RETURNS bigint
AS 'MODULE_PATHNAME', 'pg_llm_load_bpe_merges' LANGUAGE C VOLATILE STRICT;
COMMENT ON FUNCTION @extschema@.pg_llm_load_bpe_merges(text, text) IS 'load GPT-2''s merges.txt from a server file (after the vocabulary); returns the number of merges';

CREATE FUNCTION @extschema@.pg_llm_load_bpe_vocab_text(content text, model text) RETURNS bigint
AS 'MODULE_PATHNAME', 'pg_llm_load_bpe_vocab_text' LANGUAGE C VOLATILE STRICT;
COMMENT ON FUNCTION @extschema@.pg_llm_load_bpe_vocab_text(text, text) IS 'load vocab.json sent by a client (scripts/ingest_tokenizer.py)';

CREATE FUNCTION @extschema@.pg_llm_load_bpe_merges_text(content text, model text) RETURNS bigint
AS 'MODULE_PATHNAME', 'pg_llm_load_bpe_merges_text' LANGUAGE C VOLATILE STRICT;
COMMENT ON FUNCTION @extschema@.pg_llm_load_bpe_merges_text(text, text) IS 'load merges.txt sent by a client (scripts/ingest_tokenizer.py)';

CREATE FUNCTION @extschema@.llm_encode(text text, model text DEFAULT NULL) RETURNS int[]
AS 'MODULE_PATHNAME', 'pg_llm_encode' LANGUAGE C STABLE PARALLEL SAFE;
COMMENT ON FUNCTION @extschema@.llm_encode(text, text) IS 'GPT-2 token ids of text (byte-level BPE; <|endoftext|> in text is plain text)';

CREATE FUNCTION @extschema@.llm_decode(ids int[], model text DEFAULT NULL) RETURNS text
AS 'MODULE_PATHNAME', 'pg_llm_decode' LANGUAGE C STABLE PARALLEL SAFE;
COMMENT ON FUNCTION @extschema@.llm_decode(int[], text) IS 'text of token ids; bytes that are not valid UTF-8, and NUL (which text cannot hold), become U+FFFD';

-- ===========================================================================
-- Generation
-- ===========================================================================
CREATE FUNCTION @extschema@.llm_generate(prompt text, max_tokens int DEFAULT 64, temperature float8 DEFAULT 1.0,
                             topk int DEFAULT 50, topp float8 DEFAULT 0.95,
                             model text DEFAULT NULL, eos_token int DEFAULT NULL,
                             seed int DEFAULT NULL, repetition_penalty float8 DEFAULT 1.0,
                             stop text[] DEFAULT NULL, truncate bool DEFAULT false)
RETURNS text
AS 'MODULE_PATHNAME', 'pg_llm_generate' LANGUAGE C VOLATILE PARALLEL SAFE;
COMMENT ON FUNCTION @extschema@.llm_generate(text, int, float8, int, float8, text, int, int, float8, text[], bool)
    IS 'the text generated after prompt: temperature 0 is greedy; topk 0 and topp 1 turn those filters off; the same seed gives the same text; stops at eos_token (NULL: the tokenizer''s <|endoftext|>; -1: none) or before a stop string; truncate keeps the last tokens of a prompt too long for the context';

CREATE FUNCTION @extschema@.llm_generate_stream(prompt text, max_tokens int DEFAULT 64, temperature float8 DEFAULT 1.0,
                                    topk int DEFAULT 50, topp float8 DEFAULT 0.95,
                                    model text DEFAULT NULL, eos_token int DEFAULT NULL,
                                    seed int DEFAULT NULL, repetition_penalty float8 DEFAULT 1.0,
                                    stop text[] DEFAULT NULL, truncate bool DEFAULT false)
RETURNS TABLE (step int, token_id int, token text, text text, is_complete bool)
AS 'MODULE_PATHNAME', 'pg_llm_generate_stream' LANGUAGE C VOLATILE ROWS 64;
COMMENT ON FUNCTION @extschema@.llm_generate_stream(text, int, float8, int, float8, text, int, int, float8, text[], bool)
    IS 'llm_generate one row per token, each computed when fetched: call it in the SELECT list and read through a cursor to stream';

CREATE FUNCTION @extschema@.llm_generate_batch(prompts text[], max_tokens int DEFAULT 64, temperature float8 DEFAULT 1.0,
                                   topk int DEFAULT 50, topp float8 DEFAULT 0.95,
                                   model text DEFAULT NULL, eos_token int DEFAULT NULL,
                                   seed int DEFAULT NULL, repetition_penalty float8 DEFAULT 1.0,
                                   stop text[] DEFAULT NULL, truncate bool DEFAULT false)
RETURNS TABLE (ord int, completion text)
AS 'MODULE_PATHNAME', 'pg_llm_generate_batch' LANGUAGE C VOLATILE PARALLEL SAFE ROWS 100;
COMMENT ON FUNCTION @extschema@.llm_generate_batch(text[], int, float8, int, float8, text, int, int, float8, text[], bool)
    IS 'llm_generate of every prompt, decoded together (continuous batching): one row per prompt, ord its 1-based position in prompts, in that order; each completion equals llm_generate''s with the same arguments (with a seed, prompt i draws from the stream llm_generate(prompts[i], seed => seed) would); at most 1,000,000 prompts per call';

CREATE FUNCTION @extschema@.llm_beam_search(prompt text, beam_width int DEFAULT 4, max_tokens int DEFAULT 32,
                                model text DEFAULT NULL, length_penalty float8 DEFAULT 1.0,
                                eos_token int DEFAULT NULL, truncate bool DEFAULT false)
RETURNS TABLE (rank int, score float8, token_ids int[], text text)
AS 'MODULE_PATHNAME', 'pg_llm_beam_search' LANGUAGE C VOLATILE ROWS 4;
COMMENT ON FUNCTION @extschema@.llm_beam_search(text, int, int, text, float8, int, bool)
    IS 'the beam_width best continuations by sum of log-probabilities / length^length_penalty; truncate keeps the last tokens of a prompt too long for the context';

CREATE FUNCTION @extschema@.llm_perplexity(text text, model text DEFAULT NULL) RETURNS float8
AS 'MODULE_PATHNAME', 'pg_llm_perplexity' LANGUAGE C STABLE PARALLEL SAFE;
COMMENT ON FUNCTION @extschema@.llm_perplexity(text, text) IS 'exp of the mean next-token loss (sliding windows of the context length for long texts)';

-- ===========================================================================
-- Weights files
-- ===========================================================================
CREATE FUNCTION @extschema@.pg_llm_import_npz(path text, model text, n_head int DEFAULT NULL) RETURNS bigint
AS 'MODULE_PATHNAME', 'pg_llm_import_npz' LANGUAGE C VOLATILE;
COMMENT ON FUNCTION @extschema@.pg_llm_import_npz(text, text, int)
    IS 'GPT-2 weights from a server .npz (np.savez / np.savez_compressed) or .safetensors file with HuggingFace names; replaces the model''s parameters; returns their number';

CREATE FUNCTION @extschema@.pg_llm_export_npz(path text, model text) RETURNS bigint
AS 'MODULE_PATHNAME', 'pg_llm_export_npz' LANGUAGE C VOLATILE STRICT;
COMMENT ON FUNCTION @extschema@.pg_llm_export_npz(text, text)
    IS 'the model''s parameters to a server file, .npz or .safetensors by the extension, HuggingFace names and shapes; returns the bytes written';

CREATE FUNCTION @extschema@.pg_llm_backend_stats(OUT tokens_sampled bigint, OUT model_loads bigint,
                                     OUT cache_hits bigint, OUT cache_mb float8, OUT working_mb float8,
                                     OUT shared_mb float8, OUT model_maps bigint)
AS 'MODULE_PATHNAME', 'pg_llm_backend_stats' LANGUAGE C VOLATILE STRICT;
COMMENT ON FUNCTION @extschema@.pg_llm_backend_stats() IS 'this backend: tokens generated, models read from tables, model cache hits, MB of private model copies (made only when the shared cache cannot be used), MB of other pg_llm buffers (bounded by pg_llm.max_memory_mb), MB of shared cache files mapped, model versions mapped from the shared cache';

CREATE FUNCTION @extschema@.pg_llm_cache_files(OUT model text, OUT version bigint, OUT format text,
                                   OUT mb float8, OUT built_at timestamptz, OUT backends int[])
RETURNS SETOF record
AS 'MODULE_PATHNAME', 'pg_llm_cache_files' LANGUAGE C VOLATILE STRICT;
COMMENT ON FUNCTION @extschema@.pg_llm_cache_files() IS 'the shared weight cache files of this database (see the llm_cache view)';

CREATE VIEW @extschema@.llm_cache AS
    SELECT model, version, format, mb, built_at, backends FROM @extschema@.pg_llm_cache_files();
COMMENT ON VIEW @extschema@.llm_cache IS 'the shared weight cache of this database: one file per model version and format, mapped by every backend that uses it (backends: their process ids); bounded server-wide by pg_llm.model_cache_mb';

-- ===========================================================================
-- Training
-- ===========================================================================
CREATE TABLE @extschema@.llm_dataset (
    id       bigserial PRIMARY KEY,
    dataset  text NOT NULL DEFAULT 'default',
    tokens   int[] NOT NULL,
    target   int[] NOT NULL,
    split    text NOT NULL DEFAULT 'train' CHECK (split IN ('train', 'val')),
    CHECK (pg_catalog.cardinality(tokens) > 0 AND pg_catalog.cardinality(tokens) = pg_catalog.cardinality(target))
);
CREATE INDEX llm_dataset_dataset_split ON @extschema@.llm_dataset (dataset, split);
COMMENT ON TABLE @extschema@.llm_dataset IS 'training data: blocks of token ids and their next-token targets';
SELECT pg_catalog.pg_extension_config_dump('@extschema@.llm_dataset', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.llm_dataset_id_seq', '');

CREATE TABLE @extschema@.llm_train_log (
    id           bigserial PRIMARY KEY,
    model        text NOT NULL REFERENCES @extschema@.llm_model_config (model) ON DELETE CASCADE ON UPDATE CASCADE,
    step         int NOT NULL,
    lr           float8,
    loss         float8,
    grad_norm    float8,
    val_loss     float8,
    tokens_per_s float8,
    created_at   timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp()
);
CREATE INDEX llm_train_log_model_step ON @extschema@.llm_train_log (model, step);
SELECT pg_catalog.pg_extension_config_dump('@extschema@.llm_train_log', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.llm_train_log_id_seq', '');

CREATE TABLE @extschema@.llm_checkpoint (
    id         bigserial PRIMARY KEY,
    model      text NOT NULL REFERENCES @extschema@.llm_model_config (model) ON DELETE CASCADE ON UPDATE CASCADE,
    step       int NOT NULL,
    created_at timestamptz NOT NULL DEFAULT pg_catalog.now(),
    note       text,
    n_params   bigint NOT NULL,
    file_path  text,
    config     jsonb NOT NULL
);

CREATE TABLE @extschema@.llm_checkpoint_param (
    checkpoint_id bigint NOT NULL REFERENCES @extschema@.llm_checkpoint (id) ON DELETE CASCADE,
    name   text NOT NULL,
    shape  int[] NOT NULL,
    data   bytea NOT NULL,
    m      bytea,
    v      bytea,
    PRIMARY KEY (checkpoint_id, name)
);
ALTER TABLE @extschema@.llm_checkpoint_param ALTER COLUMN data SET STORAGE EXTERNAL,
                                 ALTER COLUMN m SET STORAGE EXTERNAL,
                                 ALTER COLUMN v SET STORAGE EXTERNAL;
SELECT pg_catalog.pg_extension_config_dump('@extschema@.llm_checkpoint', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.llm_checkpoint_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.llm_checkpoint_param', '');

CREATE FUNCTION @extschema@.llm_dataset_from_text(model text, text text, block_size int DEFAULT 64,
                                      val_fraction float8 DEFAULT 0.1,
                                      dataset text DEFAULT 'default')
RETURNS int
AS 'MODULE_PATHNAME', 'pg_llm_dataset_from_text' LANGUAGE C VOLATILE STRICT;
COMMENT ON FUNCTION @extschema@.llm_dataset_from_text(text, text, int, float8, text)
    IS 'tokenize text with the model''s tokenizer into blocks of block_size (tokens, targets): the last val_fraction of the tokens is the val split; returns the rows added';

-- the steps of a training run, in this backend (state kept between calls)
CREATE FUNCTION @extschema@.pg_llm_train_begin(model text, n_steps int, batch_size int, block_size int,
                                   learning_rate float8, min_lr float8, warmup_iters int,
                                   lr_decay_iters int, weight_decay float8, beta1 float8,
                                   beta2 float8, grad_clip float8, gradient_accumulation_steps int,
                                   dropout float8, eval_interval int, eval_iters int, seed int,
                                   max_seconds float8, dataset text, log_interval int, eps float8,
                                   checkpoint_interval int)
RETURNS int
AS 'MODULE_PATHNAME', 'pg_llm_train_begin' LANGUAGE C VOLATILE;
-- one step, and the write-back when due; false when the run is over
CREATE FUNCTION @extschema@.pg_llm_train_tick(model text) RETURNS bool
AS 'MODULE_PATHNAME', 'pg_llm_train_tick' LANGUAGE C VOLATILE STRICT;
CREATE FUNCTION @extschema@.pg_llm_train_end(model text) RETURNS void
AS 'MODULE_PATHNAME', 'pg_llm_train_end' LANGUAGE C VOLATILE STRICT;

CREATE FUNCTION @extschema@.llm_train(model text, n_steps int, batch_size int DEFAULT 8, block_size int DEFAULT NULL,
                          learning_rate float8 DEFAULT 6e-4, min_lr float8 DEFAULT NULL,
                          warmup_iters int DEFAULT 100, lr_decay_iters int DEFAULT NULL,
                          weight_decay float8 DEFAULT 0.1, beta1 float8 DEFAULT 0.9,
                          beta2 float8 DEFAULT 0.95, grad_clip float8 DEFAULT 1.0,
                          gradient_accumulation_steps int DEFAULT 1, dropout float8 DEFAULT 0.0,
                          eval_interval int DEFAULT 100, eval_iters int DEFAULT 20,
                          seed int DEFAULT 1337, max_seconds float8 DEFAULT NULL,
                          dataset text DEFAULT NULL, log_interval int DEFAULT 10,
                          eps float8 DEFAULT 1e-8)
RETURNS float8
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    last float8;
BEGIN
    PERFORM @extschema@.pg_llm_train_begin(model, n_steps, batch_size, block_size, learning_rate,
        min_lr, warmup_iters, lr_decay_iters, weight_decay, beta1, beta2, grad_clip,
        gradient_accumulation_steps, dropout, eval_interval, eval_iters, seed, max_seconds,
        dataset, log_interval, eps, NULL::int);
    WHILE @extschema@.pg_llm_train_tick(model) LOOP
    END LOOP;
    PERFORM @extschema@.pg_llm_train_end(model);
    SELECT l.loss INTO last FROM @extschema@.llm_train_log l
     WHERE l.model = llm_train.model ORDER BY l.id DESC LIMIT 1;
    RETURN last;
END
$$;
COMMENT ON FUNCTION @extschema@.llm_train(text, int, int, int, float8, float8, int, int, float8, float8, float8, float8, int, float8, int, int, int, float8, text, int, float8)
    IS 'train n_steps AdamW steps on llm_dataset in one transaction (llm_train_run commits as it goes); returns the last training loss';

-- pg_gpt2's form, llm_train(model, n_steps, n_layer, n_head, D, vocab,
-- dropout_p, beta1, beta2, eps, wd, lr_max, warmup, grad_clip, grad_workers,
-- prune_workers), so that its callers keep working: the shape arguments
-- must name the model's own shape; the workers arguments are accepted and
-- have no effect (pg_llm.num_threads sets the threads)
CREATE FUNCTION @extschema@.llm_train(model text, n_steps int, n_layer int, n_head int, d int, vocab int,
                          dropout_p float4 DEFAULT 0.1, beta1 float4 DEFAULT 0.9,
                          beta2 float4 DEFAULT 0.999, eps float4 DEFAULT 1e-8,
                          wd float4 DEFAULT 0.01, lr_max float4 DEFAULT 2.5e-4,
                          warmup int DEFAULT 2000, grad_clip float4 DEFAULT NULL,
                          grad_workers int DEFAULT 1, prune_workers int DEFAULT 1)
RETURNS float8
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    cfg record;
BEGIN
    SELECT c.n_layer, c.n_head, c.n_embd, c.vocab INTO cfg
      FROM @extschema@.llm_model_config c WHERE c.model = llm_train.model;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'model "%" does not exist', model USING ERRCODE = 'undefined_object';
    END IF;
    IF (cfg.n_layer, cfg.n_head, cfg.n_embd, cfg.vocab) IS DISTINCT FROM (n_layer, n_head, d, vocab) THEN
        RAISE EXCEPTION 'llm_train: model "%" has n_layer %, n_head %, n_embd %, vocab %, not %, %, %, %',
              model, cfg.n_layer, cfg.n_head, cfg.n_embd, cfg.vocab, n_layer, n_head, d, vocab
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
COMMENT ON FUNCTION @extschema@.llm_train(text, int, int, int, int, int, float4, float4, float4, float4, float4, float4, int, float4, int, int)
    IS 'pg_gpt2''s llm_train form (shape arguments checked against the model; grad_workers and prune_workers have no effect): calls llm_train with learning_rate => lr_max, warmup_iters => warmup, weight_decay => wd, dropout => dropout_p';

CREATE PROCEDURE @extschema@.llm_train_run(model text, n_steps int, batch_size int DEFAULT 8, block_size int DEFAULT NULL,
                               learning_rate float8 DEFAULT 6e-4, min_lr float8 DEFAULT NULL,
                               warmup_iters int DEFAULT 100, lr_decay_iters int DEFAULT NULL,
                               weight_decay float8 DEFAULT 0.1, beta1 float8 DEFAULT 0.9,
                               beta2 float8 DEFAULT 0.95, grad_clip float8 DEFAULT 1.0,
                               gradient_accumulation_steps int DEFAULT 1, dropout float8 DEFAULT 0.0,
                               eval_interval int DEFAULT 100, eval_iters int DEFAULT 20,
                               seed int DEFAULT 1337, max_seconds float8 DEFAULT NULL,
                               checkpoint_interval int DEFAULT 100, dataset text DEFAULT NULL,
                               log_interval int DEFAULT 10, eps float8 DEFAULT 1e-8)
LANGUAGE plpgsql
AS $$
-- (no SET search_path: a procedure that commits cannot have one; so no
-- operator here, and every call qualified, with arguments of exact types)
BEGIN
    -- fails at once inside a transaction block, before any work
    COMMIT;
    PERFORM @extschema@.pg_llm_train_begin(model, n_steps, batch_size, block_size, learning_rate,
        min_lr, warmup_iters, lr_decay_iters, weight_decay, beta1, beta2, grad_clip,
        gradient_accumulation_steps, dropout, eval_interval, eval_iters, seed, max_seconds,
        dataset, log_interval, eps, checkpoint_interval);
    COMMIT;
    -- one step per transaction: its log row is visible at once
    WHILE @extschema@.pg_llm_train_tick(model) LOOP
        COMMIT;
    END LOOP;
    COMMIT;
    PERFORM @extschema@.pg_llm_train_end(model);
END
$$;
COMMENT ON PROCEDURE @extschema@.llm_train_run(text, int, int, int, float8, float8, int, int, float8, float8, float8, float8, int, float8, int, int, int, float8, int, text, int, float8)
    IS 'train n_steps, committing every step (llm_train_log) and writing parameters and AdamW state back every checkpoint_interval steps (NULL: only at the end) and at the end; CALL it outside a transaction block';

CREATE FUNCTION @extschema@.llm_train_step(model text, tokens int[], targets int[], learning_rate float8 DEFAULT 1e-4,
                               weight_decay float8 DEFAULT 0.0, beta1 float8 DEFAULT 0.9,
                               beta2 float8 DEFAULT 0.999, eps float8 DEFAULT 1e-8,
                               grad_clip float8 DEFAULT 0.0)
RETURNS float4
AS 'MODULE_PATHNAME', 'pg_llm_train_step' LANGUAGE C VOLATILE;
COMMENT ON FUNCTION @extschema@.llm_train_step(text, int[], int[], float8, float8, float8, float8, float8, float8)
    IS 'one AdamW step on the batch given (tokens and targets: one sequence, or a 2-D array of them); writes the model back; returns the loss before the step';

CREATE FUNCTION @extschema@.llm_gradients(model text, tokens int[], targets int[])
RETURNS TABLE (name text, shape int[], grad bytea)
AS 'MODULE_PATHNAME', 'pg_llm_gradients' LANGUAGE C STABLE;
COMMENT ON FUNCTION @extschema@.llm_gradients(text, int[], int[])
    IS 'gradient of the mean loss on a batch, per parameter tensor (llm_param''s layout)';

CREATE FUNCTION @extschema@.llm_evaluate(model text, split text DEFAULT 'val', dataset text DEFAULT NULL,
                             OUT loss float8, OUT perplexity float8)
AS 'MODULE_PATHNAME', 'pg_llm_evaluate' LANGUAGE C STABLE;
COMMENT ON FUNCTION @extschema@.llm_evaluate(text, text, text) IS 'mean loss and perplexity over every block of a split';

-- ===========================================================================
-- Checkpoints: parameters and AdamW state, inside the database
-- ===========================================================================
-- ERROR (25006) on a standby, where fn cannot change the database
CREATE FUNCTION @extschema@.pg_llm_require_primary(fn text) RETURNS void
AS 'MODULE_PATHNAME', 'pg_llm_require_primary' LANGUAGE C STABLE STRICT;
CREATE FUNCTION @extschema@.llm_checkpoint_save(model text, note text DEFAULT NULL, file_path text DEFAULT NULL)
RETURNS bigint
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    cid bigint;
    n bigint;
BEGIN
    PERFORM @extschema@.pg_llm_require_primary('llm_checkpoint_save');
    IF NOT EXISTS (SELECT 1 FROM @extschema@.llm_param p WHERE p.model = llm_checkpoint_save.model) THEN
        RAISE EXCEPTION 'model "%" has no parameters to save', llm_checkpoint_save.model
              USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
    INSERT INTO @extschema@.llm_checkpoint (model, step, note, n_params, file_path, config)
    SELECT c.model, c.train_step, llm_checkpoint_save.note, 0, llm_checkpoint_save.file_path,
           pg_catalog.jsonb_build_object('n_layer', c.n_layer, 'n_head', c.n_head, 'n_embd', c.n_embd,
                              'n_positions', c.n_positions, 'vocab', c.vocab)
      FROM @extschema@.llm_model_config c WHERE c.model = llm_checkpoint_save.model
    RETURNING id INTO cid;
    INSERT INTO @extschema@.llm_checkpoint_param (checkpoint_id, name, shape, data, m, v)
    SELECT cid, p.name, p.shape, p.data, p.m, p.v FROM @extschema@.llm_param p
     WHERE p.model = llm_checkpoint_save.model;
    SELECT pg_catalog.sum(pg_catalog.octet_length(cp.data)) / 4 INTO n FROM @extschema@.llm_checkpoint_param cp
     WHERE cp.checkpoint_id = cid;
    UPDATE @extschema@.llm_checkpoint SET n_params = n WHERE id = cid;
    IF file_path IS NOT NULL THEN
        PERFORM @extschema@.pg_llm_export_npz(file_path, model);
    END IF;
    RETURN cid;
END
$$;
COMMENT ON FUNCTION @extschema@.llm_checkpoint_save(text, text, text)
    IS 'snapshot the model''s parameters and AdamW state (as last written back) in the database, and to a .npz/.safetensors file if a path is given; returns the checkpoint id';

CREATE FUNCTION @extschema@.llm_checkpoint_load(model text, checkpoint_id bigint) RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    ck record;
BEGIN
    PERFORM @extschema@.pg_llm_require_primary('llm_checkpoint_load');
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
           n_embd = coalesce(ck.config->>'n_embd', ck.config->>'d_model')::int, n_positions = (ck.config->>'n_positions')::int,
           vocab = (ck.config->>'vocab')::int, train_step = ck.step,
           version = pg_catalog.nextval('@extschema@.llm_model_version_seq'::pg_catalog.regclass), updated_at = pg_catalog.now()
     WHERE c.model = llm_checkpoint_load.model;
    DELETE FROM @extschema@.llm_param p WHERE p.model = llm_checkpoint_load.model;
    INSERT INTO @extschema@.llm_param (model, name, shape, data, m, v)
    SELECT llm_checkpoint_load.model, cp.name, cp.shape, cp.data, cp.m, cp.v
      FROM @extschema@.llm_checkpoint_param cp WHERE cp.checkpoint_id = llm_checkpoint_load.checkpoint_id;
END
$$;
COMMENT ON FUNCTION @extschema@.llm_checkpoint_load(text, bigint) IS 'restore the parameters, AdamW state, step and configuration of a checkpoint';

-- ===========================================================================
-- Privileges
--
-- Everybody may run the tensor ops, read models and tokenizers, encode,
-- decode, generate and score text (llm_loss, llm_perplexity, llm_logits,
-- llm_gradients).  Whatever writes a model, a tokenizer, a dataset or a
-- checkpoint is revoked from PUBLIC and granted to the role pgllm_admin
-- (GRANT pgllm_admin TO alice; "pg_llm_admin" cannot be: role names
-- starting with pg_ are reserved).  Training data (llm_dataset) is readable
-- by pgllm_admin only, so llm_evaluate, which scores a dataset, needs it
-- too.  Reading or writing server files further needs pg_read_server_files /
-- pg_write_server_files (or superuser): the C functions check it themselves.
--
-- pgllm_admin is created here.  If a role of that name exists already, it
-- must be one pg_llm created (in this or another database of the cluster:
-- roles are shared) and nobody but superusers may administer it -- else a
-- role that prepared it (CREATEROLE suffices) would keep the power to grant
-- pg_llm's admin rights.
-- ===========================================================================
DO $$
DECLARE
    marker CONSTANT text := 'pg_llm administrators: may create, import, export, train and drop pg_llm models and load tokenizers';
    r record;
    admin text;
BEGIN
    SELECT a.oid, a.rolsuper OR a.rolcanlogin OR a.rolcreaterole OR a.rolcreatedb OR a.rolreplication
           OR a.rolbypassrls AS powers,
           pg_catalog.shobj_description(a.oid, 'pg_authid') AS note
      INTO r FROM pg_catalog.pg_roles a WHERE a.rolname = 'pgllm_admin';
    IF NOT FOUND THEN
        CREATE ROLE pgllm_admin NOLOGIN;
        EXECUTE pg_catalog.format('COMMENT ON ROLE pgllm_admin IS %L', marker);
        RETURN;
    END IF;
    -- (0.2.0 marked the role with a shorter comment)
    IF r.note IS NULL OR r.note NOT IN (marker, 'may create, import, export, train and drop pg_llm models and load tokenizers') THEN
        RAISE EXCEPTION 'role "pgllm_admin" already exists, and pg_llm did not create it'
              USING ERRCODE = 'duplicate_object',
                    DETAIL = 'pg_llm grants its administration rights to the role pgllm_admin; whoever created that role could grant them on.',
                    HINT = 'Drop the role (DROP ROLE pgllm_admin) and run CREATE EXTENSION again: it creates the role; then GRANT pgllm_admin TO the roles that administer pg_llm.';
    END IF;
    IF r.powers THEN
        RAISE EXCEPTION 'role "pgllm_admin" has attributes pg_llm does not give it (LOGIN, SUPERUSER, CREATEROLE, CREATEDB, REPLICATION or BYPASSRLS)'
              USING ERRCODE = 'duplicate_object',
                    HINT = 'ALTER ROLE pgllm_admin NOLOGIN NOSUPERUSER NOCREATEROLE NOCREATEDB NOREPLICATION NOBYPASSRLS, or drop it, then run CREATE EXTENSION again.';
    END IF;
    SELECT m.member::pg_catalog.regrole::pg_catalog.text INTO admin
      FROM pg_catalog.pg_auth_members m JOIN pg_catalog.pg_roles a ON a.oid = m.member
     WHERE m.roleid = r.oid AND m.admin_option AND NOT a.rolsuper
     LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'role "pgllm_admin" may be administered by role %, which is not a superuser', admin
              USING ERRCODE = 'duplicate_object',
                    DETAIL = 'A role with ADMIN OPTION on pgllm_admin can grant pg_llm''s administration rights to anyone.',
                    HINT = pg_catalog.format('If %s should not, REVOKE ADMIN OPTION FOR pgllm_admin FROM %s; then run CREATE EXTENSION again.', admin, admin);
    END IF;
    EXECUTE pg_catalog.format('COMMENT ON ROLE pgllm_admin IS %L', marker);
END
$$;

DO $$
DECLARE
    routine regprocedure;
BEGIN
    FOREACH routine IN ARRAY ARRAY[
        '@extschema@.llm_create_model(text, int, int, int, int, int, int)',
        '@extschema@.llm_drop_model(text)',
        '@extschema@.pg_llm_import_npz(text, text, int)',
        '@extschema@.pg_llm_export_npz(text, text)',
        '@extschema@.pg_llm_load_bpe_vocab(text, text)',
        '@extschema@.pg_llm_load_bpe_merges(text, text)',
        '@extschema@.pg_llm_load_bpe_vocab_text(text, text)',
        '@extschema@.pg_llm_load_bpe_merges_text(text, text)',
        '@extschema@.llm_dataset_from_text(text, text, int, float8, text)',
        '@extschema@.pg_llm_train_begin(text, int, int, int, float8, float8, int, int, float8, float8, float8, float8, int, float8, int, int, int, float8, text, int, float8, int)',
        '@extschema@.pg_llm_train_tick(text)',
        '@extschema@.pg_llm_train_end(text)',
        '@extschema@.llm_train(text, int, int, int, float8, float8, int, int, float8, float8, float8, float8, int, float8, int, int, int, float8, text, int, float8)',
        '@extschema@.llm_train(text, int, int, int, int, int, float4, float4, float4, float4, float4, float4, int, float4, int, int)',
        '@extschema@.llm_train_step(text, int[], int[], float8, float8, float8, float8, float8, float8)',
        '@extschema@.llm_checkpoint_save(text, text, text)',
        '@extschema@.llm_checkpoint_load(text, bigint)',
        '@extschema@.llm_train_run(text, int, int, int, float8, float8, int, int, float8, float8, float8, float8, int, float8, int, int, int, float8, int, text, int, float8)'
    ]::regprocedure[]
    LOOP
        EXECUTE pg_catalog.format('REVOKE EXECUTE ON ROUTINE %s FROM PUBLIC', routine);
        EXECUTE pg_catalog.format('GRANT EXECUTE ON ROUTINE %s TO pgllm_admin', routine);
    END LOOP;
END
$$;

-- the tables: models, tokenizers, the training log and the checkpoint list
-- are readable by all (generation reads them as the calling role); training
-- data and checkpoint contents only by pgllm_admin
GRANT SELECT ON @extschema@.llm_model_config, @extschema@.llm_param, @extschema@.llm_vocab,
                @extschema@.llm_merges, @extschema@.llm_models, @extschema@.llm_train_log,
                @extschema@.llm_checkpoint, @extschema@.llm_bpe_vocab, @extschema@.llm_bpe_merges,
                @extschema@.llm_cache TO PUBLIC;
GRANT SELECT, INSERT, UPDATE, DELETE ON @extschema@.llm_model_config, @extschema@.llm_param,
                @extschema@.llm_vocab, @extschema@.llm_merges, @extschema@.llm_dataset,
                @extschema@.llm_train_log, @extschema@.llm_checkpoint,
                @extschema@.llm_checkpoint_param TO pgllm_admin;
GRANT USAGE, SELECT, UPDATE ON SEQUENCE @extschema@.llm_model_version_seq, @extschema@.llm_dataset_id_seq,
                @extschema@.llm_train_log_id_seq, @extschema@.llm_checkpoint_id_seq TO pgllm_admin;
