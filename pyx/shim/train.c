/*
 * train.c -- training in the database.
 *
 * A training run keeps the model's parameters, AdamW moments and gradients in
 * this backend's memory between steps (and between the transactions of the
 * llm_train_run procedure); they are written back to llm_param every
 * checkpoint_interval steps and at the end.  The state is reused by the next
 * run while the model's version is the one it wrote; anything else (another
 * session changed the model, a step failed half-way) reloads it from the
 * tables, so a cancelled or crashed run loses at most the steps since the
 * last write-back.
 *
 * Everything random (batches, dropout masks) is a pure function of (seed,
 * step), so resuming from a checkpoint repeats the same run bit for bit.
 */
#include "pg_llm.h"

#include <math.h>

#include "access/htup_details.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "portability/instr_time.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/memutils.h"

typedef struct TrainHP
{
	int32		n_steps;
	int32		batch_size;
	int32		block_size;
	double		learning_rate;
	double		min_lr;
	int32		warmup_iters;
	int32		lr_decay_iters;	/* absolute step */
	double		weight_decay;
	double		beta1;
	double		beta2;
	double		eps;
	double		grad_clip;
	int32		grad_accum;
	double		dropout;
	int32		eval_interval;
	int32		eval_iters;
	uint64		seed;
	double		max_seconds;	/* <= 0: no limit */
	int32		log_interval;
	int32		checkpoint_interval;	/* write back every so many steps (0: at the end) */
} TrainHP;

typedef struct TrainState
{
	MemoryContext ctx;
	char	   *model;
	int64		version;		/* the model's version this state holds */
	bool		valid;			/* false while a step is half-done */
	PgllmGPT2Config cfg;
	int64		nparams;
	float	   *params;
	float	   *m;
	float	   *v;
	float	   *grads;
	int64		step;			/* optimizer steps done (the model's train_step) */
	/* the run */
	TrainHP		hp;
	PgllmSplit	train;
	PgllmSplit	val;
	float	   *acts;
	int64		acts_bytes;
	int64		acts_B;
	int64		acts_T;
	instr_time	started;
	int64		run_steps;
} TrainState;

static TrainState *ts = NULL;

/* ---------------------------------------------------------------------------
 * state
 * ------------------------------------------------------------------------- */
static void
state_free(void)
{
	if (ts)
		MemoryContextDelete(ts->ctx);
	ts = NULL;
}

/* parameters, moments and step from the tables into a fresh state */
static void
state_load(const char *model)
{
	PgllmGPT2Config cfg;
	int64		version;
	int64		sizes[PGLLM_NUM_PARAM_TENSORS];
	int64		n;
	MemoryContext ctx,
				old;
	int			spi;
	bool		isnull;

	state_free();
	pgllm_model_config(model, &cfg, &version);
	n = pgllm_gpt2_param_sizes(&cfg, sizes);
	if ((4.0 * n * sizeof(float)) / (1024.0 * 1024.0) > pgllm_max_memory_mb)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("training model \"%s\" needs %.0f MB for parameters, gradients and AdamW state, more than pg_llm.max_memory_mb (%d MB)",
						model, 4.0 * n * sizeof(float) / (1024.0 * 1024.0), pgllm_max_memory_mb)));
	ctx = AllocSetContextCreate(TopMemoryContext, "pg_llm training state", ALLOCSET_DEFAULT_SIZES);
	old = MemoryContextSwitchTo(ctx);
	ts = palloc0(sizeof(TrainState));
	ts->ctx = ctx;
	ts->model = pstrdup(model);
	ts->cfg = cfg;
	ts->nparams = n;
	ts->params = pgllm_alloc_params(n, "parameters");
	ts->m = pgllm_alloc_params(n, "AdamW state");
	ts->v = pgllm_alloc_params(n, "AdamW state");
	ts->grads = pgllm_alloc_floats(n, "gradients");
	MemoryContextSwitchTo(old);
	PG_TRY();
	{
		if (!pgllm_params_read(model, &cfg, "data", ts->params))
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("model \"%s\" has no parameters", model),
					 errhint("Create it with llm_create_model or import it with pg_llm_import_npz.")));
		/* AdamW moments start at zero before the first step */
		if (!pgllm_params_read(model, &cfg, "m", ts->m) ||
			!pgllm_params_read(model, &cfg, "v", ts->v))
		{
			pgllm_zero_floats(ts->m, n);
			pgllm_zero_floats(ts->v, n);
		}
		spi = pgllm_spi_begin();
		if (pgllm_spi_exec(psprintf("SELECT train_step FROM %s WHERE model OPERATOR(pg_catalog.=) $1",
									pgllm_table("llm_model_config")),
						   1, (Oid[]) {TEXTOID}, (Datum[]) {CStringGetTextDatum(model)},
						   NULL, true, 1, SPI_OK_SELECT) != 1)
			ereport(ERROR,
					(errcode(ERRCODE_UNDEFINED_OBJECT),
					 errmsg("model \"%s\" does not exist", model)));
		ts->step = DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1,
											   &isnull));
		pgllm_spi_end(spi);
	}
	PG_CATCH();
	{
		state_free();
		PG_RE_THROW();
	}
	PG_END_TRY();
	ts->version = version;
	ts->valid = true;
}

/* the state for this model, reloaded unless it is exactly the tables' version */
static void
state_get(const char *model)
{
	PgllmGPT2Config cfg;
	int64		version;

	pgllm_model_config(model, &cfg, &version);
	if (ts && ts->valid && strcmp(ts->model, model) == 0 && ts->version == version)
		return;
	state_load(model);
}

static TrainState *
require_run(const char *model)
{
	pgllm_require_primary("training");
	if (ts == NULL || strcmp(ts->model, model) != 0 || ts->train.n_rows == 0)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("no training run of model \"%s\" in this session", model),
				 errhint("Use llm_train or CALL llm_train_run.")));
	if (!ts->valid)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("the training run of model \"%s\" was interrupted in a step", model),
				 errhint("Start it again: it resumes from the last write-back.")));
	return ts;
}

/* ---------------------------------------------------------------------------
 * data
 * ------------------------------------------------------------------------- */
static void
acts_free(void)
{
	if (ts->acts)
		pgllm_free(ts->acts, ts->acts_bytes);
	ts->acts = NULL;
	ts->acts_bytes = 0;
}

/*
 * Micro-batch `micro` (B sequences of T tokens) of optimizer step `step`:
 * sequence j = micro * B + b of the step takes a row and an offset drawn
 * from (seed, step, j), so B x accumulation sees the same data however it is
 * split into micro-batches.
 */
static void
sample_batch(const PgllmSplit *s, int64 B, int64 T, uint64 seed, uint64 step, int64 micro,
			 int32 *tok, int32 *tgt)
{
	int64		b;

	for (b = 0; b < B; b++)
	{
		uint64		j = (uint64) (micro * B + b);
		uint64		r = pgllm_rand_u64(seed, (step << 32) + 2 * j);
		uint64		o = pgllm_rand_u64(seed, (step << 32) + 2 * j + 1);
		int64		row = (int64) (r % (uint64) s->n_rows);
		int64		off = (int64) (o % (uint64) (s->row_len - T + 1));

		memcpy(tok + b * T, s->tokens + row * s->row_len + off, sizeof(int32) * T);
		memcpy(tgt + b * T, s->targets + row * s->row_len + off, sizeof(int32) * T);
	}
}

/* ---------------------------------------------------------------------------
 * steps
 * ------------------------------------------------------------------------- */
static void
ensure_acts(int64 B, int64 T)
{
	MemoryContext old;

	if (ts->acts && ts->acts_B == B && ts->acts_T == T)
		return;
	acts_free();
	old = MemoryContextSwitchTo(ts->ctx);
	ts->acts = pgllm_alloc_floats(pgllm_gpt2_train_floats(&ts->cfg, B, T), "activations");
	ts->acts_bytes = pgllm_gpt2_train_floats(&ts->cfg, B, T) * (int64) sizeof(float);
	MemoryContextSwitchTo(old);
	ts->acts_B = B;
	ts->acts_T = T;
}

/*
 * Forward and backward of the micro-batches of a step, gradients summed
 * from zero.  A harmless interrupt restarts the whole step (the backward adds
 * into the gradients); a cancel raises ERROR from CHECK_FOR_INTERRUPTS.
 */
static double
forward_backward(int64 B, int64 T, int32 accum, const int32 *const *toks,
				 const int32 *const *tgts, float dropout, uint64 step_seed)
{
	double		total;
	int			rc;
	int32		i;

	ensure_acts(B, T);
	PGLLM_RESTARTABLE(rc, {
		pgllm_zero_floats(ts->grads, ts->nparams);
		total = 0;
		rc = PGLLM_OK;
		for (i = 0; i < accum && rc == PGLLM_OK; i++)
		{
			double		loss = 0;
			uint64		seed = pgllm_rand_u64(step_seed, (uint64) i);

			rc = pgllm_gpt2_train_forward(&ts->cfg, ts->params, toks[i], tgts[i], B, T, dropout,
										  seed, ts->acts, &loss, pgllm_cancel);
			if (rc == PGLLM_OK)
				rc = pgllm_gpt2_train_backward(&ts->cfg, ts->params, ts->grads, toks[i], tgts[i],
											   B, T, dropout, seed, ts->acts,
											   (float) (1.0 / ((double) B * T * accum)),
											   pgllm_cancel);
			total += loss;
		}
	});
	pgllm_kernel_status(rc, "gpt2 forward/backward");
	return total / accum;
}

/* one AdamW update from the gradients; returns the gradient norm */
static double
optimizer_step(double lr, double weight_decay, double beta1, double beta2, double eps,
			   double grad_clip)
{
	double		norm;
	double		scale = pgllm_clip_scale(ts->grads, ts->nparams, grad_clip, &norm);

	if (!isfinite(norm))
		ereport(ERROR,
				(errcode(ERRCODE_FLOATING_POINT_EXCEPTION),
				 errmsg("training model \"%s\": the gradient is not finite", ts->model),
				 errhint("Lower learning_rate or set grad_clip.")));
	pgllm_threads_prepare();
	pgllm_kernel_status(pgllm_gpt2_adamw(&ts->cfg, ts->params, ts->grads, ts->m, ts->v, (float) lr,
										 (float) beta1, (float) beta2, (float) eps,
										 (float) weight_decay, ts->step + 1, (float) scale),
						"adamw");
	/* never write back a diverged model: the state reloads from the tables */
	if (!isfinite(pgllm_sum_squares(ts->params, ts->nparams)))
		ereport(ERROR,
				(errcode(ERRCODE_FLOATING_POINT_EXCEPTION),
				 errmsg("training model \"%s\": the parameters are not finite after step %lld",
						ts->model, (long long) ts->step + 1),
				 errhint("Lower learning_rate; the model keeps its last written-back parameters.")));
	ts->step++;
	return norm;
}

static double
eval_loss(void)
{
	const TrainHP *hp = &ts->hp;
	int64		B = hp->batch_size,
				T = hp->block_size;
	int32	   *tok = palloc(sizeof(int32) * B * T);
	int32	   *tgt = palloc(sizeof(int32) * B * T);
	double		total = 0;
	int32		i;

	ensure_acts(B, T);
	for (i = 0; i < hp->eval_iters; i++)
	{
		double		loss = 0;

		/* the same validation batches at every evaluation of a run */
		sample_batch(&ts->val, B, T, hp->seed ^ UINT64CONST(0x5eed5eed5eed5eed), (uint64) i, 0,
					 tok, tgt);
		PGLLM_KERNEL(pgllm_gpt2_train_forward(&ts->cfg, ts->params, tok, tgt, B, T, 0.0f, 0,
											  ts->acts, &loss, pgllm_cancel));
		total += loss;
	}
	pfree(tok);
	pfree(tgt);
	return total / hp->eval_iters;
}

static void
log_step(double lr, double loss, double grad_norm, double val_loss, bool have_val,
		 double tokens_per_s)
{
	char		nulls[8] = "       ";
	int			spi;

	if (!have_val)
		nulls[5] = 'n';
	spi = pgllm_spi_begin();
	pgllm_spi_exec(psprintf("INSERT INTO %s (model, step, lr, loss, grad_norm, val_loss, tokens_per_s) "
							"VALUES ($1, $2, $3, $4, $5, $6, $7)",
							pgllm_table("llm_train_log")),
				   7, (Oid[]) {TEXTOID, INT4OID, FLOAT8OID, FLOAT8OID, FLOAT8OID, FLOAT8OID, FLOAT8OID},
				   (Datum[]) {CStringGetTextDatum(ts->model), Int32GetDatum((int32) ts->step),
					   Float8GetDatum(lr), Float8GetDatum(loss), Float8GetDatum(grad_norm),
					   Float8GetDatum(val_loss), Float8GetDatum(tokens_per_s)},
				   nulls, false, 0, SPI_OK_INSERT);
	pgllm_spi_end(spi);
}

/* ---------------------------------------------------------------------------
 * SQL: the run
 * ------------------------------------------------------------------------- */
static int32
arg_int(FunctionCallInfo fcinfo, int n, int32 dflt)
{
	return PG_ARGISNULL(n) ? dflt : PG_GETARG_INT32(n);
}

static double
arg_f8(FunctionCallInfo fcinfo, int n, double dflt)
{
	return PG_ARGISNULL(n) ? dflt : PG_GETARG_FLOAT8(n);
}

static void
hp_check(bool ok, const char *what)
{
	if (!ok)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("training: %s", what)));
}

/* a run's data and checks, once its training state is there */
static void
start_run(const char *dataset, TrainHP *hp, bool block_size_null)
{
	MemoryContext split_ctx;

	/* the data: reloaded for every run */
	pgllm_split_free(&ts->train);
	pgllm_split_free(&ts->val);
	split_ctx = ts->ctx;
	pgllm_split_load(dataset, "train", &ts->train, split_ctx, &ts->cfg);
	if (ts->train.n_rows == 0)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("training: dataset \"%s\" has no training rows", dataset),
				 errhint("Fill llm_dataset with llm_dataset_from_text or scripts/prepare_dataset.py.")));
	pgllm_split_load(dataset, "val", &ts->val, split_ctx, &ts->cfg);
	if (block_size_null)
		hp->block_size = (int32) Min(ts->train.row_len, ts->cfg.n_positions);
	if (hp->block_size > ts->cfg.n_positions)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("training: block_size %d exceeds the model's context of %lld positions",
						hp->block_size, (long long) ts->cfg.n_positions)));
	if (hp->block_size > ts->train.row_len)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("training: block_size %d exceeds the dataset's rows of %lld tokens",
						hp->block_size, (long long) ts->train.row_len)));
	if (hp->batch_size > ts->train.n_rows)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("training: batch_size %d exceeds the %lld training rows of dataset \"%s\"",
						hp->batch_size, (long long) ts->train.n_rows, dataset)));
	if (ts->val.n_rows > 0 && ts->val.row_len < hp->block_size)
		ereport(ERROR,
				(errcode(ERRCODE_DATA_EXCEPTION),
				 errmsg("training: the val rows of dataset \"%s\" are shorter than block_size", dataset)));
	if (hp->lr_decay_iters < 0)
		hp->lr_decay_iters = (int32) (ts->step + hp->n_steps);
	if (hp->eval_interval > 0 && ts->val.n_rows == 0)
		ereport(NOTICE,
				(errmsg("dataset \"%s\" has no val rows: no validation loss will be logged", dataset)));
	ts->hp = *hp;
	ts->run_steps = 0;
	INSTR_TIME_SET_CURRENT(ts->started);
}

/*
 * pg_llm_train_begin(model, n_steps, batch_size, block_size, learning_rate,
 *   min_lr, warmup_iters, lr_decay_iters, weight_decay, beta1, beta2,
 *   grad_clip, gradient_accumulation_steps, dropout, eval_interval,
 *   eval_iters, seed, max_seconds, dataset, log_interval, eps,
 *   checkpoint_interval) -> first step
 */
PG_FUNCTION_INFO_V1(pg_llm_train_begin);
Datum
pg_llm_train_begin(PG_FUNCTION_ARGS)
{
	char	   *model;
	char	   *dataset;
	TrainHP		hp;
	PgllmGPT2Config hp_cfg;

	pgllm_require_primary("training");
	if (PG_ARGISNULL(0) || PG_ARGISNULL(1))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("training: model and n_steps must not be NULL")));
	model = text_to_cstring(PG_GETARG_TEXT_PP(0));
	pgllm_model_config(model, &hp_cfg, NULL);	/* ERROR if it does not exist */
	dataset = pgllm_dataset_resolve(PG_ARGISNULL(18) ? NULL : text_to_cstring(PG_GETARG_TEXT_PP(18)),
									"training");
	memset(&hp, 0, sizeof(hp));
	hp.n_steps = PG_GETARG_INT32(1);
	hp.batch_size = arg_int(fcinfo, 2, 8);
	hp.block_size = arg_int(fcinfo, 3, -1);	/* NULL: the rows' length */
	hp.learning_rate = arg_f8(fcinfo, 4, 6e-4);
	hp.min_lr = arg_f8(fcinfo, 5, hp.learning_rate / 10);
	hp.warmup_iters = arg_int(fcinfo, 6, 100);
	hp.lr_decay_iters = arg_int(fcinfo, 7, -1);
	hp.weight_decay = arg_f8(fcinfo, 8, 0.1);
	hp.beta1 = arg_f8(fcinfo, 9, 0.9);
	hp.beta2 = arg_f8(fcinfo, 10, 0.95);
	hp.eps = arg_f8(fcinfo, 20, 1e-8);
	hp.grad_clip = arg_f8(fcinfo, 11, 1.0);
	hp.grad_accum = arg_int(fcinfo, 12, 1);
	hp.dropout = arg_f8(fcinfo, 13, 0.0);
	hp.eval_interval = arg_int(fcinfo, 14, 100);
	hp.eval_iters = arg_int(fcinfo, 15, 20);
	hp.seed = (uint64) (uint32) arg_int(fcinfo, 16, 1337);
	hp.max_seconds = arg_f8(fcinfo, 17, 0);
	hp.log_interval = arg_int(fcinfo, 19, 10);
	/* (0.2.0's SQL passes 21 arguments) */
	hp.checkpoint_interval = PG_NARGS() > 21 ? arg_int(fcinfo, 21, 0) : 0;

	hp_check(hp.n_steps >= 0, "n_steps must not be negative");
	hp_check(hp.batch_size >= 1, "batch_size must be positive");
	hp_check(hp.learning_rate > 0 && isfinite(hp.learning_rate), "learning_rate must be positive");
	hp_check(hp.min_lr >= 0 && hp.min_lr <= hp.learning_rate, "min_lr must lie in [0, learning_rate]");
	hp_check(hp.warmup_iters >= 0, "warmup_iters must not be negative");
	hp_check(hp.weight_decay >= 0 && isfinite(hp.weight_decay), "weight_decay must not be negative");
	hp_check(hp.beta1 >= 0 && hp.beta1 < 1, "beta1 must lie in [0, 1)");
	hp_check(hp.beta2 >= 0 && hp.beta2 < 1, "beta2 must lie in [0, 1)");
	hp_check(hp.eps > 0 && isfinite(hp.eps), "eps must be positive");
	hp_check(hp.grad_clip >= 0 && isfinite(hp.grad_clip), "grad_clip must not be negative (0 turns it off)");
	hp_check(hp.grad_accum >= 1 && hp.grad_accum <= 65536,
			 "gradient_accumulation_steps must lie in [1, 65536]");
	hp_check(hp.dropout >= 0 && hp.dropout < 1, "dropout must lie in [0, 1)");
	hp_check(hp.eval_interval >= 0, "eval_interval must not be negative (0 turns it off)");
	hp_check(hp.eval_iters >= 1, "eval_iters must be positive");
	hp_check(PG_ARGISNULL(17) || (hp.max_seconds > 0 && isfinite(hp.max_seconds)),
			 "max_seconds must be a positive number");
	hp_check(hp.log_interval >= 1, "log_interval must be positive");
	hp_check(PG_ARGISNULL(3) || hp.block_size >= 1, "block_size must be positive");
	hp_check(PG_NARGS() <= 21 || PG_ARGISNULL(21) || hp.checkpoint_interval >= 1,
			 "checkpoint_interval must be positive (NULL: write back at the end only)");

	state_get(model);
	PG_TRY();
	{
		start_run(dataset, &hp, PG_ARGISNULL(3));
	}
	PG_CATCH();
	{
		/* a run that cannot start keeps no training state (GBs) in the backend */
		state_free();
		PG_RE_THROW();
	}
	PG_END_TRY();
	PG_RETURN_INT32((int32) ts->step);
}

static int32 run_steps(int32 n);
static int64 run_writeback(void);

/* pg_llm_train_steps(model, n) -> steps done (fewer when max_seconds passed) */
PG_FUNCTION_INFO_V1(pg_llm_train_steps);
Datum
pg_llm_train_steps(PG_FUNCTION_ARGS)
{
	char	   *model = text_to_cstring(PG_GETARG_TEXT_PP(0));

	require_run(model);
	PG_RETURN_INT32(run_steps(PG_GETARG_INT32(1)));
}

/* n steps of the run in this backend; returns the steps done (fewer when
 * max_seconds passed) */
static int32
run_steps(int32 n)
{
	TrainHP    *hp;
	int64		B,
				T;
	int32	  **toks;
	int32	  **tgts;
	int32	   *batches;
	int32		done = 0;
	int32		i;

	hp = &ts->hp;
	B = hp->batch_size;
	T = hp->block_size;
	toks = palloc(sizeof(int32 *) * hp->grad_accum);
	tgts = palloc(sizeof(int32 *) * hp->grad_accum);
	/* int32 ids are float-sized: one buffer, under pg_llm.max_memory_mb */
	batches = (int32 *) pgllm_alloc_floats(2 * B * T * (int64) hp->grad_accum, "batches");
	for (i = 0; i < hp->grad_accum; i++)
	{
		toks[i] = batches + 2 * i * B * T;
		tgts[i] = toks[i] + B * T;
	}
	while (done < n)
	{
		instr_time	t0,
					t1;
		double		lr,
					loss,
					norm,
					val = 0;
		bool		have_val = false;

		INSTR_TIME_SET_CURRENT(t0);
		if (hp->max_seconds > 0)
		{
			instr_time	el = t0;

			INSTR_TIME_SUBTRACT(el, ts->started);
			if (INSTR_TIME_GET_DOUBLE(el) >= hp->max_seconds)
			{
				ereport(NOTICE,
						(errmsg("training stopped after %.0f s (max_seconds) at step %lld",
								INSTR_TIME_GET_DOUBLE(el), (long long) ts->step)));
				break;
			}
		}
		for (i = 0; i < hp->grad_accum; i++)
			sample_batch(&ts->train, B, T, hp->seed, (uint64) ts->step, i, toks[i], tgts[i]);
		lr = pgllm_lr_schedule(ts->step, hp->warmup_iters, hp->lr_decay_iters, hp->learning_rate,
							   hp->min_lr);
		ts->valid = false;		/* until this step is complete */
		loss = forward_backward(B, T, hp->grad_accum, (const int32 *const *) toks,
								(const int32 *const *) tgts, (float) hp->dropout,
								pgllm_rand_u64(hp->seed ^ UINT64CONST(0xd1b54a32d192ed03),
											   (uint64) ts->step));
		norm = optimizer_step(lr, hp->weight_decay, hp->beta1, hp->beta2, hp->eps, hp->grad_clip);
		INSTR_TIME_SET_CURRENT(t1);
		INSTR_TIME_SUBTRACT(t1, t0);	/* tokens/s of the step itself, without evaluation */
		ts->run_steps++;
		if (hp->eval_interval > 0 && ts->val.n_rows > 0 &&
			(ts->run_steps % hp->eval_interval == 0 || ts->run_steps == hp->n_steps))
		{
			val = eval_loss();
			have_val = true;
		}
		log_step(lr, loss, norm, val, have_val,
				 (double) B * T * hp->grad_accum / Max(INSTR_TIME_GET_DOUBLE(t1), 1e-9));
		ts->valid = true;
		if (have_val)
			ereport(NOTICE,
					(errmsg("step %lld | loss %.4f | val loss %.4f | val perplexity %.2f | lr %.3e | %.0f tokens/s",
							(long long) ts->step, loss, val, exp(val), lr,
							(double) B * T * hp->grad_accum / Max(INSTR_TIME_GET_DOUBLE(t1), 1e-9))));
		else if (ts->run_steps % hp->log_interval == 0 || ts->run_steps == 1)
			ereport(NOTICE,
					(errmsg("step %lld | loss %.4f | grad norm %.3f | lr %.3e | %.0f tokens/s",
							(long long) ts->step, loss, norm, lr,
							(double) B * T * hp->grad_accum / Max(INSTR_TIME_GET_DOUBLE(t1), 1e-9))));
		done++;
	}
	return done;
}

/* write the state back: parameters, AdamW moments, step; returns the new version */
static int64
writeback(void)
{
	int			spi;
	bool		isnull;

	pgllm_params_write(ts->model, &ts->cfg, ts->params, ts->m, ts->v, false);
	spi = pgllm_spi_begin();
	if (pgllm_spi_exec(psprintf("UPDATE %s SET train_step = $2 WHERE model OPERATOR(pg_catalog.=) $1 "
								"RETURNING version", pgllm_table("llm_model_config")),
					   2, (Oid[]) {TEXTOID, INT4OID},
					   (Datum[]) {CStringGetTextDatum(ts->model), Int32GetDatum((int32) ts->step)},
					   NULL, false, 1, SPI_OK_UPDATE_RETURNING) != 1)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("model \"%s\" does not exist any more", ts->model)));
	ts->version = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1,
											  &isnull));
	pgllm_spi_end(spi);
	return ts->version;
}

/* lock the model's row and make sure nobody changed it since we loaded it */
static void
check_unchanged(void)
{
	bool		isnull;
	int64		version;
	int			spi = pgllm_spi_begin();

	if (pgllm_spi_exec(psprintf("SELECT version FROM %s WHERE model OPERATOR(pg_catalog.=) $1 FOR UPDATE",
								pgllm_table("llm_model_config")),
					   1, (Oid[]) {TEXTOID}, (Datum[]) {CStringGetTextDatum(ts->model)},
					   NULL, false, 1, SPI_OK_SELECT) != 1)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("model \"%s\" does not exist any more", ts->model)));
	version = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	pgllm_spi_end(spi);
	if (version != ts->version)
	{
		ts->valid = false;
		ereport(ERROR,
				(errcode(ERRCODE_T_R_SERIALIZATION_FAILURE),
				 errmsg("model \"%s\" was changed by another session during training", ts->model),
				 errhint("Start the training again: it resumes from the model as it is now.")));
	}
}

/* the run's write-back, unless another session changed the model since */
static int64
run_writeback(void)
{
	int64		version;

	check_unchanged();
	/* an ERROR half-way leaves the tables as they were, but not the buffers
	 * (pgllm_params_write borrows 4 bytes before each tensor): reload then */
	ts->valid = false;
	version = writeback();
	ts->valid = true;
	return version;
}

PG_FUNCTION_INFO_V1(pg_llm_train_writeback);
Datum
pg_llm_train_writeback(PG_FUNCTION_ARGS)
{
	char	   *model = text_to_cstring(PG_GETARG_TEXT_PP(0));

	require_run(model);
	PG_RETURN_INT64(run_writeback());
}

/*
 * pg_llm_train_tick(model) -> whether the run has steps left: one step, and
 * the write-back when it is due (every checkpoint_interval steps of the run,
 * if it has one) or the run is over.
 * The loops of llm_train and llm_train_run are "WHILE tick LOOP": their
 * plpgsql then evaluates no operator that a search_path could redirect.
 */
PG_FUNCTION_INFO_V1(pg_llm_train_tick);
Datum
pg_llm_train_tick(PG_FUNCTION_ARGS)
{
	char	   *model = text_to_cstring(PG_GETARG_TEXT_PP(0));
	int32		every;
	int32		k;

	require_run(model);
	every = ts->hp.checkpoint_interval;
	if (ts->run_steps >= ts->hp.n_steps)
		PG_RETURN_BOOL(false);
	k = run_steps(1);
	if (k == 0 || ts->run_steps >= ts->hp.n_steps || (every > 0 && ts->run_steps % every == 0))
		run_writeback();
	PG_RETURN_BOOL(k > 0 && ts->run_steps < ts->hp.n_steps);
}

/*
 * The end of a run (written back): its memory goes -- 4 x the parameters
 * would otherwise stay with an idle backend; the next run reads the model
 * back from the tables, exactly.  (llm_train_step keeps its state between
 * calls, for step-by-step loops.)
 */
PG_FUNCTION_INFO_V1(pg_llm_train_end);
Datum
pg_llm_train_end(PG_FUNCTION_ARGS)
{
	char	   *model = text_to_cstring(PG_GETARG_TEXT_PP(0));

	if (ts && strcmp(ts->model, model) == 0)
		state_free();
	PG_RETURN_VOID();
}

/* ---------------------------------------------------------------------------
 * SQL: one step on a given batch, gradients, evaluation
 * ------------------------------------------------------------------------- */

/* a (B, T) batch from a 1-D (one sequence) or 2-D int[] */
static int32 *
batch_arg(FunctionCallInfo fcinfo, int argno, const char *what, int64 *B, int64 *T)
{
	ArrayType  *a;
	int64		n;
	int32	   *v;

	if (PG_ARGISNULL(argno))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("%s must not be NULL", what)));
	a = PG_GETARG_ARRAYTYPE_P(argno);
	if (ARR_NDIM(a) == 2)
	{
		/* a 2-D array: flatten it (pgllm_int4_array takes 1-D) */
		*B = ARR_DIMS(a)[0];
		*T = ARR_DIMS(a)[1];
		if (ARR_ELEMTYPE(a) != INT4OID || array_contains_nulls(a))
			ereport(ERROR,
					(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
					 errmsg("%s must be int[] without NULL elements", what)));
		v = (int32 *) ARR_DATA_PTR(a);
	}
	else
	{
		v = pgllm_int4_array(a, &n, what);
		*B = 1;
		*T = n;
	}
	if (*B * *T == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s is empty", what)));
	return v;
}

static void
batch_args(FunctionCallInfo fcinfo, const PgllmGPT2Config *cfg, const char *fn, int32 **tok,
		   int32 **tgt, int64 *B, int64 *T)
{
	int64		B2,
				T2;

	*tok = batch_arg(fcinfo, 1, "tokens", B, T);
	*tgt = batch_arg(fcinfo, 2, "targets", &B2, &T2);
	if (B2 != *B || T2 != *T)
		ereport(ERROR,
				(errcode(ERRCODE_DATA_EXCEPTION),
				 errmsg("%s: tokens (%lld x %lld) and targets (%lld x %lld) differ in shape", fn,
						(long long) *B, (long long) *T, (long long) B2, (long long) T2)));
	if (*T > cfg->n_positions)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("%s: sequences of %lld tokens exceed the model's context of %lld positions",
						fn, (long long) *T, (long long) cfg->n_positions)));
	pgllm_check_tokens(*tok, *B * *T, cfg, fn, "tokens");
	pgllm_check_tokens(*tgt, *B * *T, cfg, fn, "targets");
}

/* llm_train_step(model, tokens, targets, learning_rate, weight_decay, beta1,
 *                beta2, eps, grad_clip) -> loss before the step */
PG_FUNCTION_INFO_V1(pg_llm_train_step);
Datum
pg_llm_train_step(PG_FUNCTION_ARGS)
{
	char	   *model;
	int32	   *tok,
			   *tgt;
	int64		B,
				T;
	double		lr = arg_f8(fcinfo, 3, 1e-4),
				wd = arg_f8(fcinfo, 4, 0.0),
				b1 = arg_f8(fcinfo, 5, 0.9),
				b2 = arg_f8(fcinfo, 6, 0.999),
				eps = arg_f8(fcinfo, 7, 1e-8),
				clip = arg_f8(fcinfo, 8, 0.0);
	double		loss;

	pgllm_require_primary("llm_train_step");
	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("llm_train_step: model must not be NULL")));
	model = text_to_cstring(PG_GETARG_TEXT_PP(0));
	hp_check(lr > 0 && isfinite(lr), "learning_rate must be positive");
	hp_check(wd >= 0 && isfinite(wd), "weight_decay must not be negative");
	hp_check(b1 >= 0 && b1 < 1, "beta1 must lie in [0, 1)");
	hp_check(b2 >= 0 && b2 < 1, "beta2 must lie in [0, 1)");
	hp_check(eps > 0 && isfinite(eps), "eps must be positive");
	hp_check(clip >= 0 && isfinite(clip), "grad_clip must not be negative (0 turns it off)");
	state_get(model);
	batch_args(fcinfo, &ts->cfg, "llm_train_step", &tok, &tgt, &B, &T);
	check_unchanged();
	ts->valid = false;
	loss = forward_backward(B, T, 1, (const int32 *const *) &tok, (const int32 *const *) &tgt,
							0.0f, 0);
	(void) optimizer_step(lr, wd, b1, b2, eps, clip);
	writeback();
	ts->valid = true;
	PG_RETURN_FLOAT4((float4) loss);
}

/* llm_gradients(model, tokens, targets) -> SETOF (name, shape, grad) */
PG_FUNCTION_INFO_V1(pg_llm_gradients);
Datum
pg_llm_gradients(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo;
	char	   *model;
	PgllmModel *m;
	int32	   *tok,
			   *tgt;
	int64		B,
				T;
	float	   *grads,
			   *acts;
	double		loss;
	int			i,
				n,
				rc;

	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("llm_gradients: model must not be NULL")));
	model = text_to_cstring(PG_GETARG_TEXT_PP(0));
	rsinfo = pgllm_materialized_srf(fcinfo);
	m = pgllm_model_acquire(model);
	batch_args(fcinfo, &m->cfg, "llm_gradients", &tok, &tgt, &B, &T);
	grads = pgllm_alloc_floats(m->nfloats, "gradients");
	acts = pgllm_alloc_floats(pgllm_gpt2_train_floats(&m->cfg, B, T), "activations");
	/* forward and backward in one restartable unit: the backward accumulates */
	PGLLM_RESTARTABLE(rc, {
		pgllm_zero_floats(grads, m->nfloats);
		rc = pgllm_gpt2_train_forward(&m->cfg, m->params, tok, tgt, B, T, 0.0f, 0, acts, &loss,
									  pgllm_cancel);
		if (rc == PGLLM_OK)
			rc = pgllm_gpt2_train_backward(&m->cfg, m->params, grads, tok, tgt, B, T, 0.0f, 0, acts,
										   (float) (1.0 / ((double) B * T)), pgllm_cancel);
	});
	pgllm_kernel_status(rc, "gpt2 forward/backward");
	n = pgllm_param_count(&m->cfg);
	for (i = 0; i < n; i++)
	{
		int			kind,
					layer;
		char	   *name = pgllm_param_name(&m->cfg, i, &kind, &layer);
		int64		rows,
					cols,
					count,
					off = pgllm_param_offset(&m->cfg, kind, layer, &count);
		bool		hf_t;
		float	   *dst;
		bytea	   *b = pgllm_new_tensor(count, &dst);
		Datum		values[3];
		bool		nulls[3] = {false, false, false};

		(void) pgllm_param_lookup(&m->cfg, name, &kind, &layer, &rows, &cols, &hf_t);
		memcpy(dst, grads + off, count * sizeof(float));
		values[0] = CStringGetTextDatum(name);
		values[1] = pgllm_shape_datum(rows, cols);
		values[2] = PointerGetDatum(b);
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	pgllm_model_release(m);
	return (Datum) 0;
}

/* llm_evaluate(model, split, dataset) -> (loss, perplexity) over every block */
PG_FUNCTION_INFO_V1(pg_llm_evaluate);
Datum
pg_llm_evaluate(PG_FUNCTION_ARGS)
{
	char	   *model;
	char	   *split;
	char	   *dataset;
	PgllmModel *m;
	PgllmSplit	s;
	int64		B,
				T,
				r;
	float	   *acts;
	double		total = 0;
	TupleDesc	tupdesc;
	Datum		values[2];
	bool		nulls[2] = {false, false};

	model = pgllm_model_name_arg(fcinfo, 0);	/* NULL: pg_llm.default_model */
	split = PG_ARGISNULL(1) ? pstrdup("val") : text_to_cstring(PG_GETARG_TEXT_PP(1));

	if (strcmp(split, "train") != 0 && strcmp(split, "val") != 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("llm_evaluate: split must be 'train' or 'val', got \"%s\"", split)));
	m = pgllm_model_acquire(model);
	dataset = pgllm_dataset_resolve(PG_ARGISNULL(2) ? NULL : text_to_cstring(PG_GETARG_TEXT_PP(2)),
									"llm_evaluate");
	pgllm_split_load(dataset, split, &s, CurrentMemoryContext, &m->cfg);
	if (s.n_rows == 0)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("llm_evaluate: dataset \"%s\" has no %s rows", dataset, split)));
	T = s.row_len;
	if (T > m->cfg.n_positions)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("llm_evaluate: rows of %lld tokens exceed the model's context of %lld positions",
						(long long) T, (long long) m->cfg.n_positions)));
	B = Min(s.n_rows, (int64) 8);
	acts = pgllm_alloc_floats(pgllm_gpt2_train_floats(&m->cfg, B, T), "activations");
	for (r = 0; r < s.n_rows; r += B)
	{
		int64		nb = Min(B, s.n_rows - r);
		double		loss = 0;

		PGLLM_KERNEL(pgllm_gpt2_train_forward(&m->cfg, m->params, s.tokens + r * T,
											  s.targets + r * T, nb, T, 0.0f, 0, acts, &loss,
											  pgllm_cancel));
		total += loss * nb;
	}
	pgllm_model_release(m);
	if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "return type must be a row type");
	values[0] = Float8GetDatum(total / s.n_rows);
	values[1] = Float8GetDatum(exp(total / s.n_rows));
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(BlessTupleDesc(tupdesc), values, nulls)));
}
