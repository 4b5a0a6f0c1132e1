-- pg_llm 0.3.0 -> 0.4.0: ALTER EXTENSION pg_llm UPDATE TO '0.4.0'
\echo Use "ALTER EXTENSION pg_llm UPDATE TO '0.4.0'" to load this file. \quit

-- As in the install script, every name this script uses resolves in
-- pg_catalog or is qualified with the extension's schema.
SET LOCAL search_path = pg_catalog, pg_temp;

-- one copy of the weights per server: the shared cache's size in each
-- backend, and its files
DROP FUNCTION @extschema@.pg_llm_backend_stats();
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
GRANT SELECT ON @extschema@.llm_cache TO PUBLIC;

-- the read path writes nothing and keeps only per-backend caches: a parallel
-- query may run it in its workers, which map the same weight files
ALTER FUNCTION @extschema@.llm_logits(int[], text) PARALLEL SAFE;
ALTER FUNCTION @extschema@.llm_loss(text, int[], int[]) PARALLEL SAFE;
ALTER FUNCTION @extschema@.llm_encode(text, text) PARALLEL SAFE;
ALTER FUNCTION @extschema@.llm_decode(int[], text) PARALLEL SAFE;
ALTER FUNCTION @extschema@.llm_perplexity(text, text) PARALLEL SAFE;
ALTER FUNCTION @extschema@.llm_generate(text, int, float8, int, float8, text, int, int, float8, text[], boolean)
    PARALLEL SAFE;
