/*
 * model.c -- models in tables, and the per-backend cache of their parameters.
 *
 * Tables keep one row per tensor under HuggingFace GPT-2 names, in the layout
 * the kernels use: linear weights as (out, in), like torch.nn.Linear (the
 * transpose of HuggingFace's Conv1D; import and export convert).  Loading a
 * model is then a copy into one buffer in llm.c's order -- straight from
 * the TOAST heap when possible (toast_read.c).
 *
 * The cache holds (model, version) -> parameters, bounded by
 * pg_llm.model_cache_mb, least recently used first out.  Versions come from a
 * sequence, so a rolled-back write can never alias a committed one.
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
#include "access/detoast.h"
#include <ctype.h>

/* ---------------------------------------------------------------------------
 * HuggingFace names <-> tensor kinds
 * ------------------------------------------------------------------------- */
typedef struct HFParam
{
	const char *suffix;			/* after "h.<layer>." for per-layer tensors */
	int			kind;
	bool		per_layer;
	bool		hf_transposed;	/* HuggingFace's Conv1D stores (in, out) */
} HFParam;

/* in llm.c's order (PGLLM_P_*) */
static const HFParam hf_params[] = {
	{"wte.weight", PGLLM_P_WTE, false, false},
	{"wpe.weight", PGLLM_P_WPE, false, false},
	{"ln_1.weight", PGLLM_P_LN1W, true, false},
	{"ln_1.bias", PGLLM_P_LN1B, true, false},
	{"attn.c_attn.weight", PGLLM_P_QKVW, true, true},
	{"attn.c_attn.bias", PGLLM_P_QKVB, true, false},
	{"attn.c_proj.weight", PGLLM_P_ATTPROJW, true, true},
	{"attn.c_proj.bias", PGLLM_P_ATTPROJB, true, false},
	{"ln_2.weight", PGLLM_P_LN2W, true, false},
	{"ln_2.bias", PGLLM_P_LN2B, true, false},
	{"mlp.c_fc.weight", PGLLM_P_FCW, true, true},
	{"mlp.c_fc.bias", PGLLM_P_FCB, true, false},
	{"mlp.c_proj.weight", PGLLM_P_FCPROJW, true, true},
	{"mlp.c_proj.bias", PGLLM_P_FCPROJB, true, false},
	{"ln_f.weight", PGLLM_P_LNFW, false, false},
	{"ln_f.bias", PGLLM_P_LNFB, false, false},
};

#define N_HF_PARAMS lengthof(hf_params)

/* (rows, cols) of a tensor kind as tables and kernels keep it; cols = 1 for
 * vectors.  Linear weights are (out, in). */
static void
table_shape(const PgllmGPT2Config *cfg, int kind, int64 *rows, int64 *cols)
{
	int64		C = cfg->n_embd;

	*cols = 1;
	switch (kind)
	{
		case PGLLM_P_WTE:
			*rows = cfg->vocab;
			*cols = C;
			break;
		case PGLLM_P_WPE:
			*rows = cfg->n_positions;
			*cols = C;
			break;
		case PGLLM_P_QKVW:
			*rows = 3 * C;
			*cols = C;
			break;
		case PGLLM_P_QKVB:
			*rows = 3 * C;
			break;
		case PGLLM_P_ATTPROJW:
			*rows = C;
			*cols = C;
			break;
		case PGLLM_P_FCW:
			*rows = 4 * C;
			*cols = C;
			break;
		case PGLLM_P_FCB:
			*rows = 4 * C;
			break;
		case PGLLM_P_FCPROJW:
			*rows = C;
			*cols = 4 * C;
			break;
		default:				/* layernorms and C-sized biases */
			*rows = C;
			break;
	}
}

bool
pgllm_param_lookup(const PgllmGPT2Config *cfg, const char *name, int *kind, int *layer,
				   int64 *rows, int64 *cols, bool *hf_transposed)
{
	const char *suffix;
	int			l = -1;
	int			i;

	if (strncmp(name, "transformer.", 12) == 0)
		name += 12;
	suffix = name;
	if (strncmp(name, "h.", 2) == 0)
	{
		char	   *end;
		long		v;

		errno = 0;
		v = strtol(name + 2, &end, 10);
		if (errno != 0 || end == name + 2 || *end != '.' || v < 0 || v >= cfg->n_layer ||
			!isdigit((unsigned char) name[2]) || (name[2] == '0' && end != name + 3))
			return false;
		l = (int) v;
		suffix = end + 1;
	}
	for (i = 0; i < (int) N_HF_PARAMS; i++)
	{
		if (hf_params[i].per_layer != (l >= 0) || strcmp(suffix, hf_params[i].suffix) != 0)
			continue;
		*kind = hf_params[i].kind;
		*layer = l < 0 ? 0 : l;
		*hf_transposed = hf_params[i].hf_transposed;
		table_shape(cfg, *kind, rows, cols);
		return true;
	}
	return false;
}

int
pgllm_param_count(const PgllmGPT2Config *cfg)
{
	return 4 + 12 * (int) cfg->n_layer;
}

char *
pgllm_param_name(const PgllmGPT2Config *cfg, int i, int *kind, int *layer)
{
	int			k;

	for (k = 0; k < (int) N_HF_PARAMS; k++)
	{
		int			nl = hf_params[k].per_layer ? (int) cfg->n_layer : 1;

		if (i < nl)
		{
			*kind = hf_params[k].kind;
			*layer = i;
			return hf_params[k].per_layer ? psprintf("h.%d.%s", i, hf_params[k].suffix)
				: pstrdup(hf_params[k].suffix);
		}
		i -= nl;
	}
	elog(ERROR, "pg_llm: parameter index out of range");
	return NULL;
}

int64
pgllm_param_offset(const PgllmGPT2Config *cfg, int kind, int layer, int64 *count)
{
	int64		sizes[PGLLM_NUM_PARAM_TENSORS];
	int64		off = 0;
	int64		rows,
				cols;
	int			k;

	pgllm_gpt2_param_sizes(cfg, sizes);
	for (k = 0; k < kind; k++)
		off += sizes[k];
	table_shape(cfg, kind, &rows, &cols);
	*count = rows * cols;
	return off + (int64) layer * rows * cols;
}

/* ---------------------------------------------------------------------------
 * reading and writing parameter tables
 * ------------------------------------------------------------------------- */
#define DETOAST_SLICE ((int64) 16 * 1024 * 1024)

bool
pgllm_params_read(const char *name, const PgllmGPT2Config *cfg, const char *column,
				  float *dest)
{
	uint64		r;
	int			ntensors = pgllm_param_count(cfg);
	bool	   *seen = palloc0(sizeof(bool) * PGLLM_NUM_PARAM_TENSORS * cfg->n_layer);
	PgllmToastTarget *targets = palloc(sizeof(PgllmToastTarget) * ntensors);
	Datum	   *target_datums = palloc(sizeof(Datum) * ntensors);
	int			ntargets = 0;
	Oid			toastrel = InvalidOid;
	bool		fast = true;
	int			nseen = 0;
	int			i;
	char	   *sql = psprintf("SELECT name, %s FROM %s WHERE model OPERATOR(pg_catalog.=) $1", column,
							   pgllm_table("llm_param"));
	int			spi = pgllm_spi_begin();
	uint64		nrows = pgllm_spi_exec(sql, 1, (Oid[]) {TEXTOID},
									   (Datum[]) {CStringGetTextDatum(name)}, NULL, true, 0,
									   SPI_OK_SELECT);

	for (r = 0; r < nrows; r++)
	{
		HeapTuple	tup = SPI_tuptable->vals[r];
		bool		isnull;
		char	   *tname = SPI_getvalue(tup, SPI_tuptable->tupdesc, 1);
		Datum		d = SPI_getbinval(tup, SPI_tuptable->tupdesc, 2, &isnull);
		int			kind,
					layer;
		int64		rows,
					cols,
					count,
					off,
					size;
		bool		hf_transposed;
		Oid			relid,
					valueid;

		if (!pgllm_param_lookup(cfg, tname, &kind, &layer, &rows, &cols, &hf_transposed))
			ereport(ERROR,
					(errcode(ERRCODE_DATA_CORRUPTED),
					 errmsg("model \"%s\" has a parameter \"%s\" that GPT-2 with its configuration does not have",
							name, tname)));
		if (isnull)
		{
			pgllm_spi_end(spi);
			return false;		/* no optimizer state yet, say */
		}
		if (seen[kind * cfg->n_layer + layer])
			elog(ERROR, "pg_llm: duplicate parameter \"%s\"", tname);
		seen[kind * cfg->n_layer + layer] = true;
		nseen++;
		off = pgllm_param_offset(cfg, kind, layer, &count);
		if (pgllm_toast_external(d, &relid, &valueid, &size) &&
			(toastrel == InvalidOid || toastrel == relid))
		{
			toastrel = relid;
			targets[ntargets].valueid = valueid;
			targets[ntargets].dest = (char *) (dest + off);
			targets[ntargets].size = size;
			target_datums[ntargets++] = d;
		}
		else
			size = toast_raw_datum_size(d) - VARHDRSZ;
		if (size != count * (int64) sizeof(float))
			ereport(ERROR,
					(errcode(ERRCODE_DATA_CORRUPTED),
					 errmsg("parameter \"%s\" of model \"%s\" holds %lld bytes, expected %lld",
							tname, name, (long long) size, (long long) count * 4)));
		if (ntargets == 0 || targets[ntargets - 1].dest != (char *) (dest + off))
		{
			bytea	   *b = DatumGetByteaPP(d);

			memcpy(dest + off, VARDATA_ANY(b), count * sizeof(float));
			if ((Pointer) b != DatumGetPointer(d))
				pfree(b);
		}
	}
	if (ntargets > 0)
		fast = pgllm_toast_fetch_many(toastrel, targets, ntargets);
	for (i = 0; !fast && i < ntargets; i++)
	{
		/* not for the sequential scan: detoast each (targets were sorted by
		 * value id, the datums were not: match them up) */
		Oid			r2;
		Oid			vid;
		int64		sz;
		int			j;

		for (j = 0; j < ntargets; j++)
		{
			(void) pgllm_toast_external(target_datums[j], &r2, &vid, &sz);
			if (vid == targets[i].valueid)
			{
				/* in slices: a cancel need not wait for a whole 300 MB tensor */
				int64		done;

				for (done = 0; done < targets[i].size; done += DETOAST_SLICE)
				{
					int64		len = Min(DETOAST_SLICE, targets[i].size - done);
					struct varlena *b = detoast_attr_slice((struct varlena *) DatumGetPointer(target_datums[j]),
														   (int32) done, (int32) len);

					if (VARSIZE_ANY_EXHDR(b) != len)
						ereport(ERROR,
								(errcode(ERRCODE_DATA_CORRUPTED),
								 errmsg("a parameter of model \"%s\" could not be read whole", name)));
					memcpy(targets[i].dest + done, VARDATA_ANY(b), len);
					pfree(b);
					CHECK_FOR_INTERRUPTS();
				}
				break;
			}
		}
		CHECK_FOR_INTERRUPTS();
	}
	pgllm_spi_end(spi);
	pfree(seen);
	pfree(targets);
	pfree(target_datums);
	if (nseen == 0)
		return false;
	if (nseen != ntensors)
		ereport(ERROR,
				(errcode(ERRCODE_DATA_CORRUPTED),
				 errmsg("model \"%s\" has %d of its %d parameter tensors", name, nseen, ntensors)));
	return true;
}

static Datum
shape_datum(int64 rows, int64 cols)
{
	Datum		dims[2] = {Int32GetDatum((int32) rows), Int32GetDatum((int32) cols)};

	return PointerGetDatum(construct_array(dims, cols > 1 ? 2 : 1, INT4OID, 4, true,
										   TYPALIGN_INT));
}

/*
 * A tensor of a parameter buffer as a bytea, in place: the 4 bytes before it
 * (the previous tensor's last float, or the buffer's prefix) become the
 * varlena header for the duration of one INSERT, then are restored.  Saves
 * copying (and page-faulting in) the whole model once more on every write.
 */
static bytea *
wrap_tensor(float *buf, int64 off, int64 count, char *saved)
{
	char	   *hdr = (char *) (buf + off) - VARHDRSZ;

	memcpy(saved, hdr, VARHDRSZ);
	SET_VARSIZE(hdr, VARHDRSZ + count * sizeof(float));
	return (bytea *) hdr;
}

static void
unwrap_tensor(float *buf, int64 off, const char *saved)
{
	memcpy((char *) (buf + off) - VARHDRSZ, saved, VARHDRSZ);
}

float *
pgllm_alloc_params(int64 n, const char *what)
{
	/* a prefix so that the first tensor, too, can be wrapped in place */
	return pgllm_alloc_floats(n + 16, what) + 16;
}

void
pgllm_params_write(const char *name, const PgllmGPT2Config *cfg, float *params, float *m,
				   float *v, bool replace)
{
	SPIPlanPtr	plan;
	int			i,
				rc;
	int			n = pgllm_param_count(cfg);
	char	   *sql;
	int			spi = pgllm_spi_begin();

	if (replace)
	{
		pgllm_spi_exec(psprintf("DELETE FROM %s WHERE model OPERATOR(pg_catalog.=) $1",
								pgllm_table("llm_param")),
					   1, (Oid[]) {TEXTOID}, (Datum[]) {CStringGetTextDatum(name)}, NULL, false, 0,
					   SPI_OK_DELETE);
		sql = psprintf("INSERT INTO %s (model, name, shape, data, m, v) VALUES ($1, $2, $3, $4, $5, $6)",
					   pgllm_table("llm_param"));
	}
	else
		sql = psprintf("UPDATE %s SET shape = $3, data = $4, m = $5, v = $6 "
					   "WHERE model OPERATOR(pg_catalog.=) $1 AND name OPERATOR(pg_catalog.=) $2",
					   pgllm_table("llm_param"));
	plan = SPI_prepare(sql, 6, (Oid[]) {TEXTOID, TEXTOID, INT4ARRAYOID, BYTEAOID, BYTEAOID, BYTEAOID});
	if (plan == NULL)
		elog(ERROR, "pg_llm: SPI_prepare failed: %s", SPI_result_code_string(SPI_result));
	for (i = 0; i < n; i++)
	{
		int			kind,
					layer;
		char	   *tname = pgllm_param_name(cfg, i, &kind, &layer);
		int64		rows,
					cols,
					count,
					off = pgllm_param_offset(cfg, kind, layer, &count);
		Datum		values[6];
		char		nulls[6] = {' ', ' ', ' ', ' ', m ? ' ' : 'n', v ? ' ' : 'n'};
		char		saved[3][VARHDRSZ];

		CHECK_FOR_INTERRUPTS();
		table_shape(cfg, kind, &rows, &cols);
		values[0] = CStringGetTextDatum(name);
		values[1] = CStringGetTextDatum(tname);
		values[2] = shape_datum(rows, cols);
		values[3] = PointerGetDatum(wrap_tensor(params, off, count, saved[0]));
		values[4] = m ? PointerGetDatum(wrap_tensor(m, off, count, saved[1])) : (Datum) 0;
		values[5] = v ? PointerGetDatum(wrap_tensor(v, off, count, saved[2])) : (Datum) 0;
		rc = SPI_execute_plan(plan, values, nulls, false, 0);
		unwrap_tensor(params, off, saved[0]);
		if (m)
			unwrap_tensor(m, off, saved[1]);
		if (v)
			unwrap_tensor(v, off, saved[2]);
		if ((replace && rc != SPI_OK_INSERT) || (!replace && rc != SPI_OK_UPDATE) ||
			SPI_processed != 1)
			ereport(ERROR,
					(errcode(ERRCODE_DATA_CORRUPTED),
					 errmsg("pg_llm: writing parameter \"%s\" of model \"%s\" failed",
							tname, name)));
	}
	pgllm_spi_end(spi);
	pgllm_model_bump_version(name);
}

/* ---------------------------------------------------------------------------
 * the cache
 * ------------------------------------------------------------------------- */
PgllmStats	pgllm_stats;

static PgllmModel *cache_head = NULL;
static MemoryContext cache_ctx = NULL;
static uint64 cache_clock = 0;
static bool xact_callback_registered = false;

static int64
cache_bytes(void)
{
	int64		total = 0;
	PgllmModel *e;

	for (e = cache_head; e; e = e->next)
		total += e->nfloats * (int64) sizeof(float);
	return total;
}

static void
cache_free(PgllmModel *victim)
{
	PgllmModel **pp;

	for (pp = &cache_head; *pp; pp = &(*pp)->next)
		if (*pp == victim)
		{
			*pp = victim->next;
			break;
		}
	pfree(victim->alloc);
	pfree(victim->name);
	pfree(victim);
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
			cache_free(e);
	}
}

/* make room for `need` bytes, evicting unpinned models, oldest use first */
static void
cache_make_room(const char *name, int64 need)
{
	int64		limit = (int64) pgllm_model_cache_mb * 1024 * 1024;

	if (need > limit)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("model \"%s\" needs %lld MB, more than pg_llm.model_cache_mb (%d MB)",
						name, (long long) (need >> 20), pgllm_model_cache_mb),
				 errhint("SET pg_llm.model_cache_mb = %lld or more.", (long long) (need >> 20) + 1)));
	while (cache_bytes() + need > limit)
	{
		PgllmModel *e,
				   *victim = NULL;

		for (e = cache_head; e; e = e->next)
			if (e->pins == 0 && (victim == NULL || e->last_used < victim->last_used))
				victim = e;
		if (victim == NULL)
			ereport(ERROR,
					(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
					 errmsg("pg_llm.model_cache_mb (%d MB) cannot hold model \"%s\" besides the models in use",
							pgllm_model_cache_mb, name)));
		cache_free(victim);
	}
}

PgllmModel *
pgllm_model_acquire(const char *name)
{
	PgllmGPT2Config cfg;
	int64		version;
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
	pgllm_model_config(name, &cfg, &version);
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
			cache_free(e);
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
	cache_make_room(name, nfloats * (int64) sizeof(float));
	if (cache_ctx == NULL)
		cache_ctx = AllocSetContextCreate(TopMemoryContext, "pg_llm model cache",
										  ALLOCSET_DEFAULT_SIZES);
	old = MemoryContextSwitchTo(cache_ctx);
	e = palloc0(sizeof(PgllmModel));
	e->name = pstrdup(name);
	/* 2 MB aligned, so that transparent huge pages can back it */
	raw = MemoryContextAllocHuge(cache_ctx, nfloats * sizeof(float) + 2 * 1024 * 1024);
	MemoryContextSwitchTo(old);
	e->alloc = raw;
	e->params = (float *) TYPEALIGN(2 * 1024 * 1024, raw);
#ifdef MADV_HUGEPAGE
	(void) madvise(e->params, TYPEALIGN_DOWN(2 * 1024 * 1024, nfloats * sizeof(float)),
				   MADV_HUGEPAGE);
#endif
	e->nfloats = nfloats;
	e->cfg = cfg;
	e->version = version;
	PG_TRY();
	{
		if (!pgllm_params_read(name, &cfg, "data", e->params))
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("model \"%s\" has no parameters", name),
					 errhint("Import them with pg_llm_import_npz or create them with llm_create_model.")));
	}
	PG_CATCH();
	{
		pfree(e->alloc);
		pfree(e->name);
		pfree(e);
		PG_RE_THROW();
	}
	PG_END_TRY();
	pgllm_stats.model_loads++;
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
		cache_free(m);
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
 * cache_mb, working_mb) of this backend */
PG_FUNCTION_INFO_V1(pg_llm_backend_stats);
Datum
pg_llm_backend_stats(PG_FUNCTION_ARGS)
{
	TupleDesc	tupdesc;
	Datum		values[5];
	bool		nulls[5] = {false, false, false, false, false};

	if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "return type must be a row type");
	values[0] = Int64GetDatum(pgllm_stats.tokens_sampled);
	values[1] = Int64GetDatum(pgllm_stats.model_loads);
	values[2] = Int64GetDatum(pgllm_stats.cache_hits);
	values[3] = Float8GetDatum((double) cache_bytes() / (1024.0 * 1024.0));
	values[4] = Float8GetDatum((double) pgllm_memory_in_use() / (1024.0 * 1024.0));
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(BlessTupleDesc(tupdesc), values, nulls)));
}
