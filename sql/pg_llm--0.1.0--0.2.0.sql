-- pg_llm 0.1.0 -> 0.2.0: ALTER EXTENSION pg_llm UPDATE TO '0.2.0'
\echo Use "ALTER EXTENSION pg_llm UPDATE TO '0.2.0'" to load this file. \quit

-- pg_llm_backend_stats also reports memory now; its OUT columns changed, so
-- it is recreated (nothing depends on it)
DROP FUNCTION pg_llm_backend_stats();
CREATE FUNCTION pg_llm_backend_stats(OUT tokens_sampled bigint, OUT model_loads bigint,
                                     OUT cache_hits bigint, OUT cache_mb float8, OUT working_mb float8)
AS 'MODULE_PATHNAME', 'pg_llm_backend_stats' LANGUAGE C VOLATILE STRICT;
COMMENT ON FUNCTION pg_llm_backend_stats() IS 'this backend: tokens generated, models loaded from tables, model cache hits, MB in the model cache (bounded by pg_llm.model_cache_mb), MB of other pg_llm buffers (bounded by pg_llm.max_memory_mb)';
-- decoding replaces NUL too now (the C code changed, not the signature)
COMMENT ON FUNCTION llm_decode(int[], text) IS 'text of token ids; bytes that are not valid UTF-8, and NUL (which text cannot hold), become U+FFFD';

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
