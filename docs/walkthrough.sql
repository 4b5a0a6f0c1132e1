-- pg_llm walk-through: from the tokenizer to training, fine-tuning and generation, in SQL.
-- Run it with psql in an empty database, from the repository's root directory,
-- giving the directory that holds gpt2/vocab.json, gpt2/merges.txt and tinyshakespeare.txt:
--   psql -X -v ON_ERROR_STOP=1 -v data=/srv/pg_llm -f docs/walkthrough.sql
-- (scripts/download_tokenizer.py and the demo fetch the files; /srv/pg_llm stands for their directory)
-- The files are read by psql, on the client: no server file access is needed.
-- About a minute on two cores.

\set QUIET on
\pset footer off
\timing off
\echo '1. The extension.'
CREATE EXTENSION IF NOT EXISTS pg_llm;
SELECT pg_llm_info();

\echo '2. A small GPT-2 from scratch: 4 layers, 4 heads, 128 wide, 256 positions, GPT-2''s vocabulary.'
SELECT llm_create_model('bard', n_layer => 4, n_head => 4, n_embd => 128,
                        n_positions => 256, vocab => 50257, seed => 1337) AS parameters;

\echo '3. Tokenizer ingestion: GPT-2''s vocab.json and merges.txt, sent from this client.'
\set vocab_path :data '/gpt2/vocab.json'
\set merges_path :data '/gpt2/merges.txt'
\set corpus_path :data '/tinyshakespeare.txt'
\set vocab `cat :vocab_path`
\set merges `cat :merges_path`
SELECT pg_llm_load_bpe_vocab_text(:'vocab', 'bard') AS tokens;
SELECT pg_llm_load_bpe_merges_text(:'merges', 'bard') AS merges;
SELECT llm_encode('ROMEO: But soft!', 'bard') AS ids,
       llm_decode(llm_encode('ROMEO: But soft!', 'bard'), 'bard') AS round_trip;

\echo '4. The data: tinyshakespeare in blocks of 64 tokens, the last 10% for validation.'
\set corpus `cat :corpus_path`
SELECT llm_dataset_from_text('bard', :'corpus', block_size => 64, val_fraction => 0.1,
                             dataset => 'shakespeare') AS blocks;
SELECT split, count(*) AS blocks FROM llm_dataset WHERE dataset = 'shakespeare'
GROUP BY split ORDER BY split;

\echo '5. Before training: the validation loss of random weights (about ln 50257 = 10.8).'
SELECT round(loss::numeric, 3) AS val_loss FROM llm_evaluate('bard', 'val', 'shakespeare');

\echo '6. Training, committing as it goes: 150 steps of 8 blocks, warmup then cosine decay.'
\echo '   (another session can watch llm_train_log meanwhile; NOTICEs report progress)'
\set QUIET off
CALL llm_train_run('bard', 150, batch_size => 8, block_size => 64, learning_rate => 2e-3,
                   warmup_iters => 15, eval_interval => 50, eval_iters => 8,
                   checkpoint_interval => 50, log_interval => 25, dataset => 'shakespeare');
\set QUIET on
SELECT step, round(val_loss::numeric, 3) AS val_loss, round(tokens_per_s) AS tokens_per_s
FROM llm_train_log WHERE model = 'bard' AND val_loss IS NOT NULL ORDER BY step;

\echo '7. A checkpoint of parameters and AdamW state, kept in the database.'
SELECT llm_checkpoint_save('bard', 'pre-trained on tinyshakespeare') AS pretrained \gset
SELECT id, step, note FROM llm_checkpoint WHERE model = 'bard';

\echo '8. Generation: sampled with a seed (the same seed, the same text), then beam search.'
\echo '   150 steps make a model that knows the shape of a play, not yet its sense.'
SELECT 'ROMEO:' || llm_generate('ROMEO:', 40, temperature => 0.8, topk => 40, topp => 0.95,
                               model => 'bard', seed => 42, repetition_penalty => 1.1) AS sampled;
SELECT rank, round(score::numeric, 2) AS score, replace(text, E'\n', ' | ') AS text
FROM llm_beam_search('JULIET:', beam_width => 3, max_tokens => 12, model => 'bard');

\echo '9. Fine-tuning on one speech: a constant learning rate (min_lr = learning_rate; the schedule'
\echo '   counts the model''s own steps, so a decay would already be near its end) and no warmup.'
SELECT llm_dataset_from_text('bard',
    repeat('HAMLET: To be, or not to be, that is the question: '
           'Whether tis nobler in the mind to suffer the slings and arrows of outrageous fortune. ', 20),
    block_size => 32, val_fraction => 0.2, dataset => 'hamlet') AS blocks;
SELECT round(loss::numeric, 3) AS hamlet_val_loss_before FROM llm_evaluate('bard', 'val', 'hamlet');
SELECT round(llm_train('bard', 100, batch_size => 4, block_size => 32, learning_rate => 1e-3,
                       min_lr => 1e-3, warmup_iters => 0, eval_interval => 0,
                       dataset => 'hamlet')::numeric, 3)
       AS last_train_loss;
SELECT round(loss::numeric, 3) AS hamlet_val_loss_after FROM llm_evaluate('bard', 'val', 'hamlet');
SELECT llm_generate('HAMLET: To be', 16, temperature => 0, model => 'bard') AS fine_tuned;

\echo '10. Back to the pre-trained checkpoint: the fine-tuning is undone.'
SELECT llm_checkpoint_load('bard', :pretrained);
SELECT replace(llm_generate('HAMLET: To be', 16, temperature => 0, model => 'bard'), E'\n', ' | ')
       AS before_fine_tuning;
