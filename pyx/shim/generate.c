/*
 * generate.c -- text generation: llm_generate, llm_generate_stream (a
 * value-per-call set-returning function that returns each token as soon as
 * it is sampled), llm_beam_search and llm_perplexity.
 *
 * Each step is one fused call of the model with its KV cache; the prompt is
 * run once ("prefill"), then one token per step.
 */
#include "pg_llm.h"

#include <math.h>

#include "catalog/pg_type.h"
#include "access/htup_details.h"
#include "port.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/memutils.h"

/* eos_token NULL: the tokenizer's <|endoftext|> (50256 in GPT-2), if any */
#define PGLLM_EOS_DEFAULT (-2)

typedef struct GenParams
{
	int32		max_tokens;
	double		temperature;
	int32		topk;
	double		topp;
	int32		eos;			/* -1: none */
	uint64		seed;
	double		repetition_penalty;
	char	  **stop;			/* stop strings (server encoding) */
	int			nstop;
	bool		truncate;		/* keep the end of a prompt too long for the context */
} GenParams;

typedef struct GenState
{
	PgllmModel *model;
	PgllmBPE   *bpe;
	GenParams	p;
	int32	   *tokens;			/* prompt, then generated: the context */
	int64		n_prompt;
	int64		n;
	int64		kv_cap;
	float	   *kv;
	float	   *work;
	float	   *logits;
	float	   *sample_work;
	bool		logits_ready;	/* logits hold the next token's distribution */
	bool		done;
	int64		emitted_len;	/* bytes of text already returned by the stream */
} GenState;

/* ---------------------------------------------------------------------------
 * arguments
 * ------------------------------------------------------------------------- */
/*
 * llm_generate's arguments: prompt, max_tokens, temperature, topk, topp,
 * model, eos_token, seed, repetition_penalty, stop, truncate
 */
static void
gen_params(FunctionCallInfo fcinfo, const char *fn, GenParams *p)
{
	p->max_tokens = PG_ARGISNULL(1) ? 64 : PG_GETARG_INT32(1);
	p->temperature = PG_ARGISNULL(2) ? 1.0 : PG_GETARG_FLOAT8(2);
	p->topk = PG_ARGISNULL(3) ? 50 : PG_GETARG_INT32(3);
	p->topp = PG_ARGISNULL(4) ? 0.95 : PG_GETARG_FLOAT8(4);
	p->eos = PG_ARGISNULL(6) ? PGLLM_EOS_DEFAULT : PG_GETARG_INT32(6);
	p->seed = PG_ARGISNULL(7) ? pgllm_random_seed() : (uint64) (uint32) PG_GETARG_INT32(7);
	p->repetition_penalty = PG_ARGISNULL(8) ? 1.0 : PG_GETARG_FLOAT8(8);
	p->stop = NULL;
	p->nstop = 0;
	p->truncate = PG_NARGS() > 10 && !PG_ARGISNULL(10) && PG_GETARG_BOOL(10);

	if (p->max_tokens < 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s: max_tokens must not be negative, got %d", fn, p->max_tokens)));
	if (!(p->temperature >= 0) || isinf(p->temperature))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s: temperature must be a finite number >= 0 (0 is greedy), got %g",
						fn, p->temperature)));
	if (p->topk < 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s: topk must not be negative (0 turns it off), got %d", fn, p->topk)));
	if (!(p->topp > 0 && p->topp <= 1))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s: topp must lie in (0, 1] (1 turns it off), got %g", fn, p->topp)));
	if (!(p->repetition_penalty > 0) || isinf(p->repetition_penalty))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s: repetition_penalty must be a positive number (1 turns it off), got %g",
						fn, p->repetition_penalty)));
	if (PG_NARGS() > 9 && !PG_ARGISNULL(9))
	{
		ArrayType  *arr = PG_GETARG_ARRAYTYPE_P(9);
		Datum	   *elems;
		bool	   *nulls;
		int			n,
					i;

		if (ARR_NDIM(arr) > 1)
			ereport(ERROR,
					(errcode(ERRCODE_ARRAY_SUBSCRIPT_ERROR),
					 errmsg("%s: stop must be a one-dimensional text array", fn)));
		deconstruct_array(arr, TEXTOID, -1, false, TYPALIGN_INT, &elems, &nulls, &n);
		p->stop = palloc(sizeof(char *) * Max(n, 1));
		for (i = 0; i < n; i++)
		{
			if (nulls[i])
				ereport(ERROR,
						(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
						 errmsg("%s: stop must not contain NULL", fn)));
			p->stop[p->nstop] = TextDatumGetCString(elems[i]);
			if (p->stop[p->nstop][0] != '\0')
				p->nstop++;
		}
	}
}

/* the prompt's tokens; an empty prompt starts from <|endoftext|>, as GPT-2
 * does for unconditional samples */
static int32 *
prompt_tokens(PgllmBPE *bpe, text *prompt, int32 eos, const PgllmGPT2Config *cfg,
			  const char *fn, int64 *n)
{
	int32	   *ids = pgllm_encode_text(bpe, VARDATA_ANY(prompt), VARSIZE_ANY_EXHDR(prompt), n);

	if (*n == 0)
	{
		if (eos < 0)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("%s: the prompt is empty and there is no eos_token to start from", fn)));
		ids = palloc(sizeof(int32));
		ids[0] = eos;
		*n = 1;
	}
	pgllm_check_tokens(ids, *n, cfg, fn, "the prompt");
	return ids;
}

static int32
resolve_eos(int32 eos, PgllmBPE *bpe, const PgllmGPT2Config *cfg, const char *fn)
{
	if (eos == PGLLM_EOS_DEFAULT)
	{
		eos = pgllm_bpe_special_id(bpe, (const uint8 *) "<|endoftext|>", 13);
		return eos < cfg->vocab ? eos : -1;
	}
	if (eos == -1)
		return -1;				/* no end-of-text token: always max_tokens */
	if (eos < 0 || eos >= cfg->vocab)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s: eos_token %d is outside the vocabulary [0, %lld)", fn, eos,
						(long long) cfg->vocab)));
	return eos;
}

/*
 * The prompt and max_tokens must fit the model's context.  With truncate,
 * a prompt too long keeps its last n_positions - max_tokens tokens (ids may
 * then start in the middle of a word: the tokens are cut, not the text);
 * otherwise the error says how to fit.  Returns the tokens kept.
 */
static int32 *
fit_context(int32 *ids, int64 *n_prompt, int64 max_tokens, bool truncate,
			const PgllmGPT2Config *cfg, const char *fn)
{
	int64		room = cfg->n_positions - max_tokens;

	if (*n_prompt + max_tokens <= cfg->n_positions)
		return ids;
	if (room < 1)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("%s: max_tokens %lld leaves no room for a prompt in the model's context of %lld positions",
						fn, (long long) max_tokens, (long long) cfg->n_positions),
				 errhint("Ask for at most %lld tokens.", (long long) cfg->n_positions - 1)));
	if (!truncate)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("%s: the prompt's %lld tokens plus max_tokens %lld exceed the model's context of %lld positions",
						fn, (long long) *n_prompt, (long long) max_tokens,
						(long long) cfg->n_positions),
				 *n_prompt < cfg->n_positions ?
				 errhint("Pass truncate => true to keep the prompt's last %lld tokens, ask for at most %lld tokens, or shorten the prompt.",
						 (long long) room, (long long) (cfg->n_positions - *n_prompt)) :
				 errhint("Pass truncate => true to keep the prompt's last %lld tokens, or shorten the prompt.",
						 (long long) room)));
	ids += *n_prompt - room;
	*n_prompt = room;
	return ids;
}

/* ---------------------------------------------------------------------------
 * sampling loop
 * ------------------------------------------------------------------------- */
static void
gen_start(GenState *g, const char *model_name, text *prompt, const char *fn)
{
	const PgllmGPT2Config *cfg;
	int32	   *prompt_ids;

	g->model = pgllm_model_acquire(model_name);
	cfg = &g->model->cfg;
	g->bpe = pgllm_tokenizer_get(model_name);
	g->p.eos = resolve_eos(g->p.eos, g->bpe, cfg, fn);
	prompt_ids = prompt_tokens(g->bpe, prompt, g->p.eos, cfg, fn, &g->n_prompt);
	prompt_ids = fit_context(prompt_ids, &g->n_prompt, g->p.max_tokens, g->p.truncate, cfg, fn);
	g->kv_cap = Max(g->n_prompt + g->p.max_tokens, 1);
	g->tokens = palloc(sizeof(int32) * g->kv_cap);
	memcpy(g->tokens, prompt_ids, sizeof(int32) * g->n_prompt);
	g->n = g->n_prompt;
	g->kv = pgllm_alloc_floats(cfg->n_layer * 2 * g->kv_cap * cfg->n_embd, "KV cache");
	g->work = pgllm_alloc_floats(pgllm_gpt2_work_floats(cfg, 1, g->n_prompt), "activations");
	g->logits = pgllm_alloc_floats(cfg->vocab, "logits");
	g->sample_work = pgllm_alloc_floats(2 * cfg->vocab, "sampling scratch");
	g->logits_ready = false;
	g->done = g->p.max_tokens == 0;
	g->emitted_len = 0;
}

/* make logits hold the distribution of the next token */
static void
gen_forward(GenState *g)
{
	const PgllmGPT2Config *cfg = &g->model->cfg;

	if (g->logits_ready)
		return;
	if (g->n == g->n_prompt)	/* prefill */
		PGLLM_KERNEL(pgllm_gpt2_forward_cached(cfg, g->model->params, g->tokens, 1, g->n_prompt,
											   0, g->kv, g->kv_cap, g->work, g->logits, 0,
											   pgllm_cancel));
	else
		PGLLM_KERNEL(pgllm_gpt2_forward_cached(cfg, g->model->params, g->tokens + g->n - 1, 1, 1,
											   g->n - 1, g->kv, g->kv_cap, g->work, g->logits,
											   0, pgllm_cancel));
	g->logits_ready = true;
}

/* the next token of a context from its logits (overwritten), drawn from
 * the sequence's own stream at step n - n_prompt */
static int32
sample_next(float *logits, int64 V, const int32 *tokens, int64 n, int64 n_prompt,
			const GenParams *p, uint64 seed, float *sample_work)
{
	int32		tok = pgllm_sample_token(logits, V, tokens, n, (float) p->repetition_penalty,
										 (float) p->temperature, p->topk, (float) p->topp, seed,
										 (uint64) (n - n_prompt), sample_work);

	if (tok < 0)
		elog(ERROR, "pg_llm: sampling failed");
	pgllm_stats.tokens_sampled++;
	return tok;
}

/* sample the next token; returns it (the caller appends it unless it is eos) */
static int32
gen_sample(GenState *g)
{
	gen_forward(g);
	g->logits_ready = false;
	return sample_next(g->logits, g->model->cfg.vocab, g->tokens, g->n, g->n_prompt, &g->p,
					   g->p.seed, g->sample_work);
}

/* the text of generated ids (sanitized); *stop_at gets the byte where the
 * first stop string starts, or -1 */
static char *
generated_text(PgllmBPE *bpe, const GenParams *p, const int32 *ids, int64 n,
			   bool hold_incomplete, int64 *stop_at)
{
	char	   *s = pgllm_decode_text(bpe, ids, n, hold_incomplete, NULL);
	int			i;

	*stop_at = -1;
	for (i = 0; i < p->nstop; i++)
	{
		char	   *hit = strstr(s, p->stop[i]);

		if (hit && (*stop_at < 0 || hit - s < *stop_at))
			*stop_at = hit - s;
	}
	return s;
}

static char *
gen_text(GenState *g, bool hold_incomplete, int64 *stop_at)
{
	return generated_text(g->bpe, &g->p, g->tokens + g->n_prompt, g->n - g->n_prompt,
						  hold_incomplete, stop_at);
}

/* ---------------------------------------------------------------------------
 * llm_generate
 * ------------------------------------------------------------------------- */
PG_FUNCTION_INFO_V1(pg_llm_generate);
Datum
pg_llm_generate(PG_FUNCTION_ARGS)
{
	GenState	g;
	char	   *model_name;
	char	   *out;
	int64		stop_at = -1;
	int			i;

	if (PG_ARGISNULL(0))
		PG_RETURN_NULL();
	memset(&g, 0, sizeof(g));
	gen_params(fcinfo, "llm_generate", &g.p);
	model_name = pgllm_model_name_arg(fcinfo, 5);
	gen_start(&g, model_name, PG_GETARG_TEXT_PP(0), "llm_generate");
	for (i = 0; i < g.p.max_tokens; i++)
	{
		int32		tok = gen_sample(&g);

		if (tok == g.p.eos)
			break;
		g.tokens[g.n++] = tok;
		if (g.p.nstop > 0)
		{
			(void) gen_text(&g, false, &stop_at);
			if (stop_at >= 0)
				break;
		}
	}
	out = gen_text(&g, false, &stop_at);
	if (stop_at >= 0)
		out[stop_at] = '\0';
	pgllm_model_release(g.model);
	PG_RETURN_TEXT_P(cstring_to_text(out));
}

/* ---------------------------------------------------------------------------
 * llm_generate_stream: one row per token, computed when the row is fetched
 * ------------------------------------------------------------------------- */
static void
stream_cleanup(Datum arg)
{
	GenState   *g = (GenState *) DatumGetPointer(arg);

	if (g->model)
		pgllm_model_release(g->model);
	g->model = NULL;
}

PG_FUNCTION_INFO_V1(pg_llm_generate_stream);
Datum
pg_llm_generate_stream(PG_FUNCTION_ARGS)
{
	FuncCallContext *fctx;
	GenState   *g;
	int32		tok;
	int64		stop_at;
	char	   *full;
	int64		len;
	bool		complete = false;
	Datum		values[5];
	bool		nulls[5] = {false, false, false, false, false};
	HeapTuple	tup;

	if (SRF_IS_FIRSTCALL())
	{
		MemoryContext old;
		TupleDesc	tupdesc;
		ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;

		fctx = SRF_FIRSTCALL_INIT();
		if (PG_ARGISNULL(0))
			SRF_RETURN_DONE(fctx);
		old = MemoryContextSwitchTo(fctx->multi_call_memory_ctx);
		g = palloc0(sizeof(GenState));
		gen_params(fcinfo, "llm_generate_stream", &g->p);
		gen_start(g, pgllm_model_name_arg(fcinfo, 5), PG_GETARG_TEXT_PP(0),
				  "llm_generate_stream");
		if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
			elog(ERROR, "llm_generate_stream must return a row type");
		fctx->tuple_desc = BlessTupleDesc(tupdesc);
		fctx->user_fctx = g;
		/* unpin the model however the scan ends (a cursor may be closed early) */
		if (rsinfo && rsinfo->econtext)
			RegisterExprContextCallback(rsinfo->econtext, stream_cleanup, PointerGetDatum(g));
		MemoryContextSwitchTo(old);
	}
	fctx = SRF_PERCALL_SETUP();
	g = (GenState *) fctx->user_fctx;
	if (g->done)
	{
		stream_cleanup(PointerGetDatum(g));
		SRF_RETURN_DONE(fctx);
	}

	tok = gen_sample(g);
	if (tok == g->p.eos)
		complete = true;
	else
		g->tokens[g->n++] = tok;
	if (g->n - g->n_prompt >= g->p.max_tokens)
		complete = true;
	full = gen_text(g, !complete, &stop_at);
	if (stop_at >= 0)
	{
		full[stop_at] = '\0';
		complete = true;
	}
	len = strlen(full);
	values[0] = Int32GetDatum((int32) fctx->call_cntr + 1);
	values[1] = Int32GetDatum(tok);
	/* the new text since the previous row: bytes of an unfinished character
	 * wait for the token that completes them */
	values[2] = PointerGetDatum(cstring_to_text(len > g->emitted_len ? full + g->emitted_len : ""));
	values[3] = PointerGetDatum(cstring_to_text(full));
	values[4] = BoolGetDatum(complete);
	if (len > g->emitted_len)
		g->emitted_len = len;
	g->done = complete;
	tup = heap_form_tuple(fctx->tuple_desc, values, nulls);
	SRF_RETURN_NEXT(fctx, HeapTupleGetDatum(tup));
}

/* ---------------------------------------------------------------------------
 * llm_generate_batch(prompts text[], <llm_generate's other arguments>)
 *   -> TABLE(ord int, completion text)
 *
 * Continuous batching.  Up to `nslots` sequences decode together, one
 * pgllm_gpt2_forward_rows per step for all of them, each at its own length.
 * A sequence that stops (eos, a stop string, max_tokens) leaves its slot,
 * and the next waiting prompt takes it: prefilled alone, exactly as
 * llm_generate prefills, then sampled from the stream llm_generate would
 * use.  The row-invariant kernels make every step's logits those of the
 * sequence decoded alone, so completions equal llm_generate's.  Rows come
 * out in prompt order (a finished completion waits for the ones before it).
 * ------------------------------------------------------------------------- */
#define PGLLM_BATCH_MAX_PROMPTS 1000000

typedef struct BatchSeq
{
	int64		ord;			/* 0-based position in prompts; -1: free slot */
	int32	   *tokens;			/* prompt, then generated: kv_cap ids */
	int64		n_prompt;
	int64		n;
	uint64		seed;
} BatchSeq;

typedef struct Batch
{
	PgllmModel *model;
	PgllmBPE   *bpe;
	GenParams	p;
	int64		nprompts;
	int32	  **prompt_ids;
	int64	   *prompt_len;
	int64		kv_cap;			/* positions per slot: longest prompt + max_tokens */
	int			nslots;
	BatchSeq   *seq;
	float	   *kv;				/* (nslots, L, 2, kv_cap, C) */
	float	   *work;			/* decode step: pgllm_gpt2_work_floats(cfg, nslots, 1) */
	float	   *prefill_work;	/* one prompt: pgllm_gpt2_work_floats(cfg, 1, longest) */
	float	   *logits;			/* (nslots, V) */
	float	   *sample_work;	/* 2 V */
	int32	   *row_tokens;		/* decode step rows: token, slot, position */
	int64	   *row_slot;
	int64	   *row_pos;
	char	  **done;			/* finished completions not yet returned */
	int64		emitted;		/* completions returned so far, in prompt order */
	MemoryContext text_ctx;		/* finished completions */
	MemoryContext step_ctx;		/* per-token text for stop strings */
} Batch;

/* every prompt's ids, checked before any work: an error names the prompt */
static void
batch_prompts(Batch *b, ArrayType *arr, const char *fn)
{
	const PgllmGPT2Config *cfg = &b->model->cfg;
	Datum	   *elems;
	bool	   *nulls;
	int			n,
				i;
	int64		longest = 0;

	/* encoding's buffers (one id per byte) go with each prompt: only the ids kept stay */
	MemoryContext enc_ctx = AllocSetContextCreate(CurrentMemoryContext, "llm_generate_batch prompt",
												  ALLOCSET_DEFAULT_SIZES);

	deconstruct_array(arr, TEXTOID, -1, false, TYPALIGN_INT, &elems, &nulls, &n);
	b->nprompts = n;
	b->prompt_ids = palloc(sizeof(int32 *) * Max(n, 1));
	b->prompt_len = palloc(sizeof(int64) * Max(n, 1));
	for (i = 0; i < n; i++)
	{
		MemoryContext outer;
		char	   *where = psprintf("%s: prompt %d", fn, i + 1);
		text	   *t;
		int32	   *ids;
		int64		len;

		CHECK_FOR_INTERRUPTS();

		if (nulls[i])
			ereport(ERROR,
					(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
					 errmsg("%s is NULL", where),
					 errhint("Leave NULL prompts out, e.g. ARRAY(SELECT prompt FROM t WHERE prompt IS NOT NULL ORDER BY id).")));
		t = DatumGetTextPP(elems[i]);
		if (VARSIZE_ANY_EXHDR(t) == 0)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("%s is empty", where),
					 errhint("Leave empty prompts out, or call llm_generate for an unconditional sample.")));
		outer = MemoryContextSwitchTo(enc_ctx);
		ids = prompt_tokens(b->bpe, t, b->p.eos, cfg, where, &len);
		ids = fit_context(ids, &len, b->p.max_tokens, b->p.truncate, cfg, where);
		MemoryContextSwitchTo(outer);
		b->prompt_ids[i] = palloc(sizeof(int32) * len);
		memcpy(b->prompt_ids[i], ids, sizeof(int32) * len);
		b->prompt_len[i] = len;
		MemoryContextReset(enc_ctx);
		longest = Max(longest, len);
		pfree(where);
	}
	MemoryContextDelete(enc_ctx);
	b->kv_cap = Max(longest + b->p.max_tokens, 1);
}

/* as many slots as pg_llm.max_batch_size and pg_llm.max_memory_mb allow */
static void
batch_alloc(Batch *b, const char *fn)
{
	const PgllmGPT2Config *cfg = &b->model->cfg;
	int64		C = cfg->n_embd,
				V = cfg->vocab;
	int64		longest = b->kv_cap - b->p.max_tokens;
	int64		kv_slot = cfg->n_layer * 2 * b->kv_cap * C;
	int64		per_slot = (kv_slot + V + pgllm_gpt2_work_floats(cfg, 1, 1)) * sizeof(float) +
		b->kv_cap * sizeof(int32) + 2 * sizeof(int64) + sizeof(int32);
	int64		fixed = (pgllm_gpt2_work_floats(cfg, 1, Max(longest, 1)) + 3 * V) * sizeof(float);
	int64		room = (int64) pgllm_max_memory_mb * 1024 * 1024 - pgllm_memory_in_use() - fixed;
	int64		fit = room > 0 ? room / per_slot : 0;
	int			s;

	b->nslots = (int) Max(Min(Min(fit, (int64) pgllm_max_batch_size), b->nprompts), 1);
	ereport(DEBUG1,
			(errmsg_internal("%s: %lld prompts, %d decoded together (pg_llm.max_batch_size %d, %.1f MB per sequence)",
							 fn, (long long) b->nprompts, b->nslots, pgllm_max_batch_size,
							 per_slot / 1048576.0)));
	b->kv = pgllm_alloc_floats(b->nslots * kv_slot, "KV caches of the batch");
	b->logits = pgllm_alloc_floats(b->nslots * V, "logits of the batch");
	b->work = pgllm_alloc_floats(pgllm_gpt2_work_floats(cfg, b->nslots, 1), "activations");
	b->prefill_work = pgllm_alloc_floats(pgllm_gpt2_work_floats(cfg, 1, Max(longest, 1)),
										 "activations");
	b->sample_work = pgllm_alloc_floats(2 * V, "sampling scratch");
	b->row_tokens = palloc(sizeof(int32) * b->nslots);
	b->row_slot = palloc(sizeof(int64) * b->nslots);
	b->row_pos = palloc(sizeof(int64) * b->nslots);
	b->seq = palloc0(sizeof(BatchSeq) * b->nslots);
	for (s = 0; s < b->nslots; s++)
	{
		b->seq[s].ord = -1;
		b->seq[s].tokens = palloc(sizeof(int32) * b->kv_cap);
	}
	b->done = palloc0(sizeof(char *) * b->nprompts);
}

static void
batch_finish(Batch *b, BatchSeq *q)
{
	MemoryContext old = MemoryContextSwitchTo(b->step_ctx);
	int64		stop_at;
	char	   *out = generated_text(b->bpe, &b->p, q->tokens + q->n_prompt, q->n - q->n_prompt,
									 false, &stop_at);

	if (stop_at >= 0)
		out[stop_at] = '\0';
	b->done[q->ord] = MemoryContextStrdup(b->text_ctx, out);
	MemoryContextSwitchTo(old);
	MemoryContextReset(b->step_ctx);
	q->ord = -1;
}

/*
 * A sampled token of sequence q, as llm_generate's loop takes it: eos ends
 * the sequence, a stop string or max_tokens ends it after the token.
 */
static void
batch_take(Batch *b, BatchSeq *q, int32 tok)
{
	if (tok == b->p.eos)
	{
		batch_finish(b, q);
		return;
	}
	q->tokens[q->n++] = tok;
	if (b->p.nstop > 0)
	{
		MemoryContext old = MemoryContextSwitchTo(b->step_ctx);
		int64		stop_at;

		(void) generated_text(b->bpe, &b->p, q->tokens + q->n_prompt, q->n - q->n_prompt, false,
							  &stop_at);
		MemoryContextSwitchTo(old);
		MemoryContextReset(b->step_ctx);
		if (stop_at >= 0)
		{
			batch_finish(b, q);
			return;
		}
	}
	if (q->n - q->n_prompt >= b->p.max_tokens)
		batch_finish(b, q);
}

/* prompt `ord` joins in slot s: prefill, then its first token */
static void
batch_join(Batch *b, int s, int64 ord, uint64 seed)
{
	const PgllmGPT2Config *cfg = &b->model->cfg;
	BatchSeq   *q = &b->seq[s];
	float	   *kv = b->kv + (int64) s * cfg->n_layer * 2 * b->kv_cap * cfg->n_embd;
	float	   *logits = b->logits + (int64) s * cfg->vocab;

	q->ord = ord;
	q->n_prompt = q->n = b->prompt_len[ord];
	memcpy(q->tokens, b->prompt_ids[ord], sizeof(int32) * q->n);
	q->seed = seed;
	PGLLM_KERNEL(pgllm_gpt2_forward_cached(cfg, b->model->params, q->tokens, 1, q->n_prompt, 0,
										   kv, b->kv_cap, b->prefill_work, logits, 0,
										   pgllm_cancel));
	batch_take(b, q, sample_next(logits, cfg->vocab, q->tokens, q->n, q->n_prompt, &b->p,
								 q->seed, b->sample_work));
}

/* completions finished in prompt order go out */
static void
batch_emit(Batch *b, ReturnSetInfo *rsinfo)
{
	while (b->emitted < b->nprompts && b->done[b->emitted] != NULL)
	{
		Datum		values[2];
		bool		nulls[2] = {false, false};

		values[0] = Int32GetDatum((int32) (b->emitted + 1));
		values[1] = PointerGetDatum(cstring_to_text(b->done[b->emitted]));
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
		pfree(DatumGetPointer(values[1]));
		pfree(b->done[b->emitted]);
		b->done[b->emitted++] = NULL;
	}
}

PG_FUNCTION_INFO_V1(pg_llm_generate_batch);
Datum
pg_llm_generate_batch(PG_FUNCTION_ARGS)
{
	const char *fn = "llm_generate_batch";
	ArrayType  *arr;
	ReturnSetInfo *rsinfo;
	const PgllmGPT2Config *cfg;
	Batch		b;
	int64		next = 0;
	bool		seeded;
	MemoryContext work_ctx,
				caller_ctx;

	memset(&b, 0, sizeof(b));
	gen_params(fcinfo, fn, &b.p);
	seeded = !PG_ARGISNULL(7);
	rsinfo = pgllm_materialized_srf(fcinfo);
	if (PG_ARGISNULL(0))
		return (Datum) 0;
	arr = PG_GETARG_ARRAYTYPE_P(0);
	if (ARR_NDIM(arr) > 1)
		ereport(ERROR,
				(errcode(ERRCODE_ARRAY_SUBSCRIPT_ERROR),
				 errmsg("%s: prompts must be a one-dimensional text array", fn)));
	if (ArrayGetNItems(ARR_NDIM(arr), ARR_DIMS(arr)) > PGLLM_BATCH_MAX_PROMPTS)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("%s: %d prompts, more than the %d one call takes", fn,
						ArrayGetNItems(ARR_NDIM(arr), ARR_DIMS(arr)), PGLLM_BATCH_MAX_PROMPTS),
				 errhint("Process the table in chunks, e.g. WHERE id > last_id ORDER BY id LIMIT 10000 per call.")));
	/* every buffer of the call, counted against pg_llm.max_memory_mb until it returns */
	work_ctx = AllocSetContextCreate(CurrentMemoryContext, "llm_generate_batch",
									 ALLOCSET_DEFAULT_SIZES);
	caller_ctx = MemoryContextSwitchTo(work_ctx);
	b.model = pgllm_model_acquire(pgllm_model_name_arg(fcinfo, 5));
	cfg = &b.model->cfg;
	b.bpe = pgllm_tokenizer_get(pgllm_model_name_arg(fcinfo, 5));
	b.p.eos = resolve_eos(b.p.eos, b.bpe, cfg, fn);
	batch_prompts(&b, arr, fn);
	b.text_ctx = AllocSetContextCreate(work_ctx, "llm_generate_batch completions",
									   ALLOCSET_DEFAULT_SIZES);
	b.step_ctx = AllocSetContextCreate(work_ctx, "llm_generate_batch step",
									   ALLOCSET_DEFAULT_SIZES);
	if (b.nprompts == 0 || b.p.max_tokens == 0)
	{
		/* nothing to decode: "" for every prompt, as llm_generate gives */
		b.done = palloc0(sizeof(char *) * Max(b.nprompts, 1));
		for (next = 0; next < b.nprompts; next++)
			b.done[next] = MemoryContextStrdup(b.text_ctx, "");
		batch_emit(&b, rsinfo);
		next = b.nprompts;
	}
	else
		batch_alloc(&b, fn);

	while (b.emitted < b.nprompts)
	{
		int			s,
					nrows = 0,
					r;

		/* waiting prompts take the free slots */
		for (s = 0; s < b.nslots && next < b.nprompts; s++)
		{
			while (b.seq[s].ord < 0 && next < b.nprompts)
			{
				/* without a seed each prompt draws its own, as separate calls would */
				batch_join(&b, s, next, seeded ? b.p.seed : pgllm_random_seed());
				next++;
				CHECK_FOR_INTERRUPTS();
			}
		}
		batch_emit(&b, rsinfo);
		for (s = 0; s < b.nslots; s++)
		{
			BatchSeq   *q = &b.seq[s];

			if (q->ord < 0)
				continue;
			b.row_tokens[nrows] = q->tokens[q->n - 1];
			b.row_slot[nrows] = s;
			b.row_pos[nrows] = q->n - 1;
			nrows++;
		}
		if (nrows == 0)
			break;
		/* one step: every live sequence's next token */
		PGLLM_KERNEL(pgllm_gpt2_forward_rows(cfg, b.model->params, b.row_tokens, b.row_slot,
											 b.row_pos, nrows, b.kv, b.kv_cap, b.work, b.logits,
											 pgllm_cancel));
		for (r = 0; r < nrows; r++)
		{
			BatchSeq   *q = &b.seq[b.row_slot[r]];

			batch_take(&b, q, sample_next(b.logits + (int64) r * cfg->vocab, cfg->vocab,
										  q->tokens, q->n, q->n_prompt, &b.p, q->seed,
										  b.sample_work));
		}
		CHECK_FOR_INTERRUPTS();
	}
	batch_emit(&b, rsinfo);
	Assert(b.emitted == b.nprompts);
	pgllm_model_release(b.model);
	MemoryContextSwitchTo(caller_ctx);
	MemoryContextDelete(work_ctx);
	return (Datum) 0;
}

/* ---------------------------------------------------------------------------
 * llm_beam_search(prompt, beam_width, max_tokens, model, length_penalty,
 *                 eos_token, truncate) -> TABLE(rank, score, token_ids, text)
 *
 * The search itself is the beam kernel's (decode.pxi); this loops forward ->
 * beam step -> KV-cache reorder, then returns the ranked hypotheses.
 * ------------------------------------------------------------------------- */
PG_FUNCTION_INFO_V1(pg_llm_beam_search);
Datum
pg_llm_beam_search(PG_FUNCTION_ARGS)
{
	const char *fn = "llm_beam_search";
	text	   *prompt;
	int32		beam = PG_ARGISNULL(1) ? 4 : PG_GETARG_INT32(1);
	int32		max_tokens = PG_ARGISNULL(2) ? 32 : PG_GETARG_INT32(2);
	char	   *model_name;
	double		lp = PG_ARGISNULL(4) ? 1.0 : PG_GETARG_FLOAT8(4);
	int32		eos = (PG_NARGS() > 5 && !PG_ARGISNULL(5)) ? PG_GETARG_INT32(5) : PGLLM_EOS_DEFAULT;
	bool		truncate = PG_NARGS() > 6 && !PG_ARGISNULL(6) && PG_GETARG_BOOL(6);
	PgllmModel *m;
	const PgllmGPT2Config *cfg;
	PgllmBPE   *bpe;
	ReturnSetInfo *rsinfo;
	int32	   *prompt_ids;
	int64		n_prompt,
				V,
				kv_cap,
				n_ranked,
				r;
	float	   *kv,
			   *kv_scratch,
			   *work,
			   *logits;
	PgllmBeams	beams;
	int			finished = 0;

	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("%s: prompt must not be NULL", fn)));
	prompt = PG_GETARG_TEXT_PP(0);
	if (beam < 1 || beam > 64)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s: beam_width must lie in [1, 64], got %d", fn, beam)));
	if (max_tokens < 1)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s: max_tokens must be positive, got %d", fn, max_tokens)));
	if (isnan(lp) || isinf(lp))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s: length_penalty must be a finite number", fn)));
	model_name = pgllm_model_name_arg(fcinfo, 3);
	rsinfo = pgllm_materialized_srf(fcinfo);
	m = pgllm_model_acquire(model_name);
	cfg = &m->cfg;
	V = cfg->vocab;
	bpe = pgllm_tokenizer_get(model_name);
	eos = resolve_eos(eos, bpe, cfg, fn);
	prompt_ids = prompt_tokens(bpe, prompt, eos, cfg, fn, &n_prompt);
	prompt_ids = fit_context(prompt_ids, &n_prompt, max_tokens, truncate, cfg, fn);
	if (beam > V)
		beam = (int32) V;
	kv_cap = n_prompt + max_tokens;
	kv = pgllm_alloc_floats(beam * cfg->n_layer * 2 * kv_cap * cfg->n_embd, "KV cache");
	kv_scratch = pgllm_alloc_floats(beam * cfg->n_layer * 2 * kv_cap * cfg->n_embd, "KV cache");
	work = pgllm_alloc_floats(pgllm_gpt2_work_floats(cfg, 1, n_prompt) +
							  pgllm_gpt2_work_floats(cfg, beam, 1), "activations");
	logits = pgllm_alloc_floats(beam * V, "logits");
	if (pgllm_beams_init(&beams, pgllm_alloc_bytes(pgllm_beams_bytes(beam, max_tokens), "beams"),
						 beam, max_tokens, V, eos, lp) != PGLLM_OK)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("%s: beam_width %d times the vocabulary of %lld tokens is too large",
						fn, beam, (long long) V)));

	/* the prompt once, in beam 0; the first step expands it */
	PGLLM_KERNEL(pgllm_gpt2_forward_cached(cfg, m->params, prompt_ids, 1, n_prompt, 0, kv, kv_cap,
										   work, logits, 0, pgllm_cancel));
	for (;;)
	{
		PGLLM_KERNEL(pgllm_beam_step(&beams, logits, &finished, pgllm_cancel));
		if (finished)
			break;
		/* live beams take their parents' caches (prompt + tokens fed so far) */
		PGLLM_KERNEL(pgllm_gpt2_kv_reorder(cfg, kv, beams.live, kv_cap, n_prompt + beams.len - 1,
										   beams.parent, kv_scratch));
		/* one forward for all live beams, each its last token */
		PGLLM_KERNEL(pgllm_gpt2_forward_cached(cfg, m->params, beams.last, beams.live, 1,
											   n_prompt + beams.len - 1, kv, kv_cap, work, logits,
											   0, pgllm_cancel));
	}
	n_ranked = pgllm_beams_finish(&beams);
	for (r = 0; r < n_ranked; r++)
	{
		int32		slot = beams.done_rank[r];
		const int32 *ids = beams.done_tokens + (int64) slot * beams.max_tokens;
		int64		len = beams.done_len[slot];
		Datum		values[4];
		bool		nulls[4] = {false, false, false, false};

		values[0] = Int32GetDatum((int32) r + 1);
		values[1] = Float8GetDatum(beams.done_score[slot]);
		values[2] = PointerGetDatum(pgllm_int4_array_result(ids, len, fn));
		values[3] = PointerGetDatum(cstring_to_text(pgllm_decode_text(bpe, ids, len, false, NULL)));
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	pgllm_model_release(m);
	return (Datum) 0;
}

/* ---------------------------------------------------------------------------
 * llm_perplexity(text, model) -> exp(mean next-token loss), with sliding
 * windows of the context length (stride half of it) for long texts
 * ------------------------------------------------------------------------- */
PG_FUNCTION_INFO_V1(pg_llm_perplexity);
Datum
pg_llm_perplexity(PG_FUNCTION_ARGS)
{
	char	   *model_name;
	PgllmModel *m;
	PgllmBPE   *bpe;
	text	   *t;
	int32	   *ids;
	int64		n,
				maxT,
				stride,
				begin,
				scored = 0,
				count = 0;
	double		nll = 0;

	if (PG_ARGISNULL(0))
		PG_RETURN_NULL();
	t = PG_GETARG_TEXT_PP(0);
	model_name = pgllm_model_name_arg(fcinfo, 1);
	m = pgllm_model_acquire(model_name);
	bpe = pgllm_tokenizer_get(model_name);
	ids = pgllm_encode_text(bpe, VARDATA_ANY(t), VARSIZE_ANY_EXHDR(t), &n);
	if (n < 2)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("llm_perplexity: the text must encode to at least 2 tokens, got %lld",
						(long long) n)));
	pgllm_check_tokens(ids, n, &m->cfg, "llm_perplexity", "the text");
	maxT = m->cfg.n_positions;
	stride = Max(maxT / 2, 1);
	scored = 0;					/* tokens [1, scored] have been scored */
	for (begin = 0;; begin += stride)
	{
		int64		end = Min(begin + maxT, n);
		int64		T = end - begin;
		float	   *logits = pgllm_forward_all(m, ids + begin, T);
		float	   *losses = pgllm_alloc_floats(T, "losses");
		int64		first = Max(scored + 1, begin + 1);	/* first target to score */
		int64		k = end - first;

		if (k > 0)
		{
			PGLLM_KERNEL(pgllm_cross_entropy_forward(logits + (first - 1 - begin) * m->cfg.vocab,
													 ids + first, losses, k, m->cfg.vocab,
													 pgllm_cancel));
			nll += pgllm_mean(losses, k) * k;
			count += k;
			scored = end - 1;
		}
		pfree(logits);
		pfree(losses);
		if (end == n)
			break;
	}
	pgllm_model_release(m);
	PG_RETURN_FLOAT8(exp(nll / count));
}
