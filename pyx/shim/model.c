/*
 * model.c -- the per-backend cache of models' parameters, and the SQL
 * functions that create and drop models and report on the cache.
 *
 * The cache holds (model, version) -> parameters: mapped from the server's
 * shared cache file (shared_cache.c), or, when no file can be had, a
 * private copy read by params.c, bounded by pg_llm.model_cache_mb, least
 * recently used first out.  Versions come from a sequence, so a rolled-back
 * write can never alias a committed one.
 */
#include "pg_llm.h"

#include <sys/mman.h>

#include "access/htup_details.h"
#include "access/xact.h"
#include "catalog/pg_type.h"
#include "commands/extension.h"
#include "executor/spi.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
/* ---------------------------------------------------------------------------
 * the cache
 * ------------------------------------------------------------------------- */
PgllmStats	pgllm_stats;

static PgllmModel *cache_head = NULL;
static MemoryContext cache_ctx = NULL;
static uint64 cache_clock = 0;
static bool xact_callback_registered = false;

/* bytes of this backend's models: mapped from the shared cache, or private copies */
static int64
cache_bytes(bool mapped)
{
	int64		total = 0;
	PgllmModel *e;

	for (e = cache_head; e; e = e->next)
		if ((e->shared.base != NULL) == mapped)
			total += e->nfloats * (int64) sizeof(float);
	return total;
}

/* outdated: a newer version of the model exists */
static void
cache_free(PgllmModel *victim, bool outdated)
{
	PgllmModel **pp;

	for (pp = &cache_head; *pp; pp = &(*pp)->next)
		if (*pp == victim)
		{
			*pp = victim->next;
			break;
		}
	if (victim->shared.base != NULL)
		pgllm_shared_unmap(&victim->shared, outdated);
	else
		pfree(victim->alloc);
	pfree(victim->name);
	pfree(victim);
}

/* drop this backend's unpinned copies of a model (NULL: of every model) */
static void
forget_unpinned(const char *name)
{
	PgllmModel *e,
			   *next;

	for (e = cache_head; e; e = next)
	{
		next = e->next;
		if (e->pins == 0 && (name == NULL || strcmp(e->name, name) == 0))
			cache_free(e, false);
	}
}

/* unpin everything when a transaction ends: an ERROR skips the releases */
static void
cache_xact_callback(XactEvent event, void *arg)
{
	PgllmModel *e,
			   *next;

	if (event != XACT_EVENT_ABORT && event != XACT_EVENT_COMMIT &&
		event != XACT_EVENT_PARALLEL_ABORT && event != XACT_EVENT_PARALLEL_COMMIT)
		return;
	for (e = cache_head; e; e = next)
	{
		next = e->next;
		e->pins = 0;
		if (e->stale)
			cache_free(e, true);
	}
}

/* make room for a private copy of `need` bytes, evicting unpinned private
 * copies, oldest use first */
static void
cache_make_room(const char *name, int64 need)
{
	int64		limit = pgllm_model_cache_limit(name, need);

	while (cache_bytes(false) + need > limit)
	{
		PgllmModel *e,
				   *victim = NULL;

		for (e = cache_head; e; e = e->next)
			if (e->pins == 0 && e->shared.base == NULL &&
				(victim == NULL || e->last_used < victim->last_used))
				victim = e;
		if (victim == NULL)
			ereport(ERROR,
					(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
					 errmsg("pg_llm.model_cache_mb (%d MB) cannot hold model \"%s\" besides the models in use",
							pgllm_model_cache_mb, name)));
		cache_free(victim, false);
	}
}

/* a new cache file's data: the parameters, read from the table */
typedef struct WeightsFill
{
	const char *name;
	const PgllmGPT2Config *cfg;
} WeightsFill;

static void
fill_weights(void *dst, int64 data_len, void *arg)
{
	WeightsFill *w = arg;

	if (!pgllm_params_read(w->name, w->cfg, "data", (float *) dst))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("model \"%s\" has no parameters", w->name)));
	pgllm_stats.model_loads++;
}

PgllmModel *
pgllm_model_acquire(const char *name)
{
	PgllmGPT2Config cfg;
	int64		version;
	Oid			config_table;
	int64		updated_at;
	bool		written_here;
	PgllmSharedResult shared = PGLLM_SHARED_UNAVAILABLE;
	PgllmModel *e;
	int64		sizes[PGLLM_NUM_PARAM_TENSORS];
	int64		nfloats;
	MemoryContext old;
	char	   *raw;

	if (!xact_callback_registered)
	{
		RegisterXactCallback(cache_xact_callback, NULL);
		xact_callback_registered = true;
	}
	pgllm_model_config_row(name, &cfg, &version, &config_table, &updated_at, &written_here);
	for (e = cache_head; e; e = e->next)
	{
		if (strcmp(e->name, name) != 0 || e->stale)
			continue;
		if (e->version == version)
		{
			e->pins++;
			e->last_used = ++cache_clock;
			e->hits++;
			pgllm_stats.cache_hits++;
			return e;
		}
		/* changed since it was cached */
		if (e->pins == 0)
			cache_free(e, true);
		else
			e->stale = true;
		break;
	}

	if (!pgllm_model_has_params(name))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("model \"%s\" has no parameters", name),
				 errhint("Import them with pg_llm_import_npz or create them with llm_create_model.")));
	nfloats = pgllm_gpt2_param_sizes(&cfg, sizes);
	if (cache_ctx == NULL)
		cache_ctx = AllocSetContextCreate(TopMemoryContext, "pg_llm model cache",
										  ALLOCSET_DEFAULT_SIZES);
	old = MemoryContextSwitchTo(cache_ctx);
	e = palloc0(sizeof(PgllmModel));
	e->name = pstrdup(name);
	e->shared.fd = -1;
	MemoryContextSwitchTo(old);
	e->nfloats = nfloats;
	e->cfg = cfg;
	e->version = version;
	PG_TRY();
	{
		/* a version this transaction wrote may never commit: not shared */
		if (!written_here)
		{
			PgllmCacheKey key = {name, PGLLM_CACHE_FLOAT32, config_table, version, updated_at, false};
			WeightsFill fill = {name, &cfg};
			int64		bytes = nfloats * (int64) sizeof(float);

			shared = pgllm_shared_map(&key, bytes, fill_weights, &fill, &e->shared);
			if (shared == PGLLM_SHARED_NO_ROOM)
			{
				/* this backend's own mappings count too: let them go, then retry */
				forget_unpinned(NULL);
				shared = pgllm_shared_map(&key, bytes, fill_weights, &fill, &e->shared);
				if (shared == PGLLM_SHARED_NO_ROOM)
					pgllm_shared_no_room(name, bytes);
			}
		}
		if (shared == PGLLM_SHARED_MAPPED)
		{
			e->params = (const float *) e->shared.data;
			pgllm_stats.model_maps++;
		}
		else
		{
			float	   *params;

			cache_make_room(name, nfloats * (int64) sizeof(float));
			/* 2 MB aligned, so that transparent huge pages can back it */
			raw = MemoryContextAllocHuge(cache_ctx, nfloats * sizeof(float) + 2 * 1024 * 1024);
			e->alloc = raw;
			params = (float *) TYPEALIGN(2 * 1024 * 1024, raw);
#ifdef MADV_HUGEPAGE
			(void) madvise(params, TYPEALIGN_DOWN(2 * 1024 * 1024, nfloats * sizeof(float)),
						   MADV_HUGEPAGE);
#endif
			if (!pgllm_params_read(name, &cfg, "data", params))
				ereport(ERROR,
						(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
						 errmsg("model \"%s\" has no parameters", name),
						 errhint("Import them with pg_llm_import_npz or create them with llm_create_model.")));
			e->params = params;
			pgllm_stats.model_loads++;
		}
	}
	PG_CATCH();
	{
		if (e->shared.base != NULL)
			pgllm_shared_unmap(&e->shared, false);
		if (e->alloc)
			pfree(e->alloc);
		pfree(e->name);
		pfree(e);
		PG_RE_THROW();
	}
	PG_END_TRY();
	e->pins = 1;
	e->last_used = ++cache_clock;
	e->next = cache_head;
	cache_head = e;
	return e;
}

void
pgllm_model_release(PgllmModel *m)
{
	if (m->pins > 0)
		m->pins--;
	if (m->pins == 0 && m->stale)
		cache_free(m, true);
}

/* ---------------------------------------------------------------------------
 * SQL: llm_create_model, llm_drop_model, pg_llm_cache_stats
 * ------------------------------------------------------------------------- */
static int32
int_arg_or(FunctionCallInfo fcinfo, int argno, int64 fallback, const char *what,
		   bool have_fallback, const char *model)
{
	if (!PG_ARGISNULL(argno))
		return PG_GETARG_INT32(argno);
	if (!have_fallback)
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("llm_create_model: %s is required for the new model \"%s\"", what, model)));
	return (int32) fallback;
}

PG_FUNCTION_INFO_V1(pg_llm_create_model);
Datum
pg_llm_create_model(PG_FUNCTION_ARGS)
{
	char	   *name;
	PgllmGPT2Config cfg,
				old;
	bool		exists;
	int64		sizes[PGLLM_NUM_PARAM_TENSORS];
	int64		n;
	float	   *params;
	uint64		seed;

	pgllm_require_primary("llm_create_model");
	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("llm_create_model: model must not be NULL")));
	name = text_to_cstring(PG_GETARG_TEXT_PP(0));
	exists = pgllm_model_exists(name);
	if (exists)
	{
		if (pgllm_model_has_params(name))
			ereport(ERROR,
					(errcode(ERRCODE_DUPLICATE_OBJECT),
					 errmsg("model \"%s\" already exists", name),
					 errhint("Drop it first with llm_drop_model('%s').", name)));
		pgllm_model_config(name, &old, NULL);
	}
	cfg.n_layer = int_arg_or(fcinfo, 1, old.n_layer, "n_layer", exists, name);
	cfg.n_head = int_arg_or(fcinfo, 2, old.n_head, "n_head", exists, name);
	cfg.n_embd = int_arg_or(fcinfo, 3, old.n_embd, "n_embd", exists, name);
	cfg.n_positions = int_arg_or(fcinfo, 4, old.n_positions, "n_positions", exists, name);
	cfg.vocab = int_arg_or(fcinfo, 5, old.vocab, "vocab", exists, name);
	cfg.eps = 1e-5f;
	seed = PG_ARGISNULL(6) ? 1337 : (uint64) (uint32) PG_GETARG_INT32(6);
	pgllm_config_check(&cfg, "llm_create_model");

	n = pgllm_gpt2_param_sizes(&cfg, sizes);
	params = pgllm_alloc_params(n, "model parameters");
	pgllm_config_upsert(name, &cfg, false);
	PGLLM_KERNEL(pgllm_gpt2_init(&cfg, params, seed, pgllm_cancel));
	pgllm_params_write(name, &cfg, params, NULL, NULL, true);
	PG_RETURN_INT64(n);
}

PG_FUNCTION_INFO_V1(pg_llm_drop_model);
Datum
pg_llm_drop_model(PG_FUNCTION_ARGS)
{
	char	   *name = text_to_cstring(PG_GETARG_TEXT_PP(0));
	int			spi;

	pgllm_require_primary("llm_drop_model");
	spi = pgllm_spi_begin();
	if (pgllm_spi_exec(psprintf("DELETE FROM %s WHERE model OPERATOR(pg_catalog.=) $1",
								pgllm_table("llm_model_config")),
					   1, (Oid[]) {TEXTOID}, (Datum[]) {CStringGetTextDatum(name)},
					   NULL, false, 0, SPI_OK_DELETE) == 0)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("model \"%s\" does not exist", name)));
	pgllm_spi_end(spi);
	/* its cache files go now (a rollback only costs a rebuild); this
	 * backend's mapping first, so that its lock does not keep one */
	forget_unpinned(name);
	pgllm_tokenizer_forget(name);	/* (its file goes when the transaction ends) */
	pgllm_shared_forget(name);
	PG_RETURN_VOID();
}

/* pg_llm_cache_stats() -> SETOF (model, version, mb, pins, hits) */
PG_FUNCTION_INFO_V1(pg_llm_cache_stats);
Datum
pg_llm_cache_stats(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = pgllm_materialized_srf(fcinfo);
	PgllmModel *e;

	for (e = cache_head; e; e = e->next)
	{
		Datum		values[5];
		bool		nulls[5] = {false, false, false, false, false};

		values[0] = CStringGetTextDatum(e->name);
		values[1] = Int64GetDatum(e->version);
		values[2] = Float8GetDatum((double) e->nfloats * sizeof(float) / (1024.0 * 1024.0));
		values[3] = Int32GetDatum(e->pins);
		values[4] = Int64GetDatum(e->hits);
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	return (Datum) 0;
}

/* pg_llm_backend_stats() -> (tokens_sampled, model_loads, cache_hits,
 * cache_mb, working_mb, shared_mb, model_maps) of this backend: cache_mb is
 * the private copies, shared_mb the mapped cache files (0.3.0's definition
 * has the first five) */
PG_FUNCTION_INFO_V1(pg_llm_backend_stats);
Datum
pg_llm_backend_stats(PG_FUNCTION_ARGS)
{
	TupleDesc	tupdesc;
	Datum		values[7];
	bool		nulls[7] = {false, false, false, false, false, false, false};

	if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "return type must be a row type");
	values[0] = Int64GetDatum(pgllm_stats.tokens_sampled);
	values[1] = Int64GetDatum(pgllm_stats.model_loads);
	values[2] = Int64GetDatum(pgllm_stats.cache_hits);
	values[3] = Float8GetDatum((double) cache_bytes(false) / (1024.0 * 1024.0));
	values[4] = Float8GetDatum((double) pgllm_memory_in_use() / (1024.0 * 1024.0));
	values[5] = Float8GetDatum((double) cache_bytes(true) / (1024.0 * 1024.0));
	values[6] = Int64GetDatum(pgllm_stats.model_maps);
	if (tupdesc->natts != 5 && tupdesc->natts != 7)
		elog(ERROR, "pg_llm_backend_stats: unexpected result type");
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(BlessTupleDesc(tupdesc), values, nulls)));
}
