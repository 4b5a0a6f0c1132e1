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
