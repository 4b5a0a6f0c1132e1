/*
 * inference.c -- logits, loss and perplexity of token sequences.  Each is one
 * fused forward pass (pgllm_gpt2_forward_cached), never SQL per op.
 */
#include "pg_llm.h"

#include "catalog/pg_type.h"
#include "utils/array.h"
#include "utils/builtins.h"

void
pgllm_check_tokens(const int32 *tokens, int64 n, const PgllmGPT2Config *cfg,
				   const char *fn, const char *what)
{
	int64		i;

	for (i = 0; i < n; i++)
		if (tokens[i] < 0 || tokens[i] >= cfg->vocab)
			ereport(ERROR,
					(errcode(ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE),
					 errmsg("%s: token id %d at position %lld of %s is outside the vocabulary [0, %lld)",
							fn, tokens[i], (long long) i + 1, what, (long long) cfg->vocab)));
}

/* tokens of a sequence that must fit the context window */
static int32 *
sequence_arg(FunctionCallInfo fcinfo, int argno, const PgllmGPT2Config *cfg, const char *fn,
			 const char *what, int64 *n)
{
	int32	   *tokens = pgllm_int4_array(PG_GETARG_ARRAYTYPE_P(argno), n, what);

	if (*n == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s: %s is empty", fn, what)));
	if (*n > cfg->n_positions)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("%s: %lld tokens exceed the model's context of %lld positions",
						fn, (long long) *n, (long long) cfg->n_positions)));
	pgllm_check_tokens(tokens, *n, cfg, fn, what);
	return tokens;
}

float *
pgllm_forward_all(PgllmModel *m, const int32 *tokens, int64 T)
{
	const PgllmGPT2Config *cfg = &m->cfg;
	float	   *kv = pgllm_alloc_floats(cfg->n_layer * 2 * T * cfg->n_embd, "KV cache");
	float	   *work = pgllm_alloc_floats(pgllm_gpt2_work_floats(cfg, 1, T), "activations");
	float	   *logits = pgllm_alloc_floats(T * cfg->vocab, "logits");

	PGLLM_KERNEL(pgllm_gpt2_forward_cached(cfg, m->params, tokens, 1, T, 0, kv, T, work,
										   logits, 1, pgllm_cancel));
	pfree(kv);
	pfree(work);
	return logits;
}

/* llm_logits(token_ids int[], model_name text) -> bytea (T, vocab) */
PG_FUNCTION_INFO_V1(pg_llm_logits);
Datum
pg_llm_logits(PG_FUNCTION_ARGS)
{
	char	   *name;
	PgllmModel *m;
	int64		T;
	int32	   *tokens;
	float	   *logits,
			   *out;
	bytea	   *res;

	if (PG_ARGISNULL(0))
		PG_RETURN_NULL();
	name = pgllm_model_name_arg(fcinfo, 1);
	m = pgllm_model_acquire(name);
	tokens = sequence_arg(fcinfo, 0, &m->cfg, "llm_logits", "token_ids", &T);
	res = pgllm_new_tensor(T * m->cfg.vocab, &out);
	logits = pgllm_forward_all(m, tokens, T);
	memcpy(out, logits, T * m->cfg.vocab * sizeof(float));
	pfree(logits);
	pgllm_model_release(m);
	PG_RETURN_BYTEA_P(res);
}

/* mean next-token loss of targets given tokens (equal lengths) */
double
pgllm_sequence_loss(PgllmModel *m, const int32 *tokens, const int32 *targets, int64 T)
{
	float	   *logits = pgllm_forward_all(m, tokens, T);
	float	   *losses = pgllm_alloc_floats(T, "losses");
	double		mean;

	PGLLM_KERNEL(pgllm_cross_entropy_forward(logits, targets, losses, T, m->cfg.vocab,
											 pgllm_cancel));
	mean = pgllm_mean(losses, T);
	pfree(logits);
	pfree(losses);
	return mean;
}

/* llm_loss(model text, tokens int[], targets int[]) -> float4 */
PG_FUNCTION_INFO_V1(pg_llm_loss);
Datum
pg_llm_loss(PG_FUNCTION_ARGS)
{
	char	   *name;
	PgllmModel *m;
	int64		T,
				nt;
	int32	   *tokens,
			   *targets;
	double		loss;

	if (PG_ARGISNULL(1) || PG_ARGISNULL(2))
		PG_RETURN_NULL();
	name = pgllm_model_name_arg(fcinfo, 0);
	m = pgllm_model_acquire(name);
	tokens = sequence_arg(fcinfo, 1, &m->cfg, "llm_loss", "tokens", &T);
	targets = sequence_arg(fcinfo, 2, &m->cfg, "llm_loss", "targets", &nt);
	if (nt != T)
		ereport(ERROR,
				(errcode(ERRCODE_DATA_EXCEPTION),
				 errmsg("llm_loss: tokens and targets differ in length (%lld and %lld)",
						(long long) T, (long long) nt)));
	loss = pgllm_sequence_loss(m, tokens, targets, T);
	pgllm_model_release(m);
	PG_RETURN_FLOAT4((float4) loss);
}
