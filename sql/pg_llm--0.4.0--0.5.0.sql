-- pg_llm 0.4.0 -> 0.5.0: ALTER EXTENSION pg_llm UPDATE TO '0.5.0'
\echo Use "ALTER EXTENSION pg_llm UPDATE TO '0.5.0'" to load this file. \quit

-- As in the install script, every name this script uses resolves in
-- pg_catalog or is qualified with the extension's schema.
SET LOCAL search_path = pg_catalog, pg_temp;

-- batched generation over many prompts
CREATE FUNCTION @extschema@.llm_generate_batch(prompts text[], max_tokens int DEFAULT 64, temperature float8 DEFAULT 1.0,
                                   topk int DEFAULT 50, topp float8 DEFAULT 0.95,
                                   model text DEFAULT NULL, eos_token int DEFAULT NULL,
                                   seed int DEFAULT NULL, repetition_penalty float8 DEFAULT 1.0,
                                   stop text[] DEFAULT NULL, truncate bool DEFAULT false)
RETURNS TABLE (ord int, completion text)
AS 'MODULE_PATHNAME', 'pg_llm_generate_batch' LANGUAGE C VOLATILE PARALLEL SAFE ROWS 100;
COMMENT ON FUNCTION @extschema@.llm_generate_batch(text[], int, float8, int, float8, text, int, int, float8, text[], bool)
    IS 'llm_generate of every prompt, decoded together (continuous batching): one row per prompt, ord its 1-based position in prompts, in that order; each completion equals llm_generate''s with the same arguments (with a seed, prompt i draws from the stream llm_generate(prompts[i], seed => seed) would); at most 1,000,000 prompts per call';
