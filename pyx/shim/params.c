/*
 * params.c -- a model's parameters in llm_param: HuggingFace names <-> the
 * kernels' tensor kinds (derived from their one parameter table,
 * pgllm_gpt2_param_spec), reading all tensors into one buffer in llm.c's
 * order and writing a buffer back.
 *
 * Tables keep one row per tensor under HuggingFace GPT-2 names, in the layout
 * the kernels use: linear weights as (out, in), like torch.nn.Linear (the
 * transpose of HuggingFace's Conv1D; import and export convert).  Loading a
 * model is then a copy into one buffer -- straight from the TOAST heap when
 * possible (toast_read.c, beside this file).
 */
#include "pg_llm.h"

#include "access/detoast.h"
#include "access/htup_details.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include <ctype.h>

/* ---------------------------------------------------------------------------
 * HuggingFace names <-> tensor kinds, from the kernels' one parameter table
 * (pgllm_gpt2_param_spec)
 * ------------------------------------------------------------------------- */
typedef struct ParamSpec
{
	const char *suffix;			/* after "h.<layer>." for per-layer tensors */
	int			per_layer;
	int			hf_transposed;	/* HuggingFace's Conv1D stores (in, out) */
	int64		rows;			/* the kernels' layout: linear weights (out, in) */
	int64		cols;			/* 1 for vectors */
} ParamSpec;

static void
param_spec(const PgllmGPT2Config *cfg, int kind, ParamSpec *spec)
{
	if (pgllm_gpt2_param_spec(cfg, kind, &spec->suffix, &spec->per_layer,
							  &spec->hf_transposed, &spec->rows, &spec->cols) != PGLLM_OK)
		elog(ERROR, "pg_llm: parameter kind %d out of range", kind);
}

bool
pgllm_param_lookup(const PgllmGPT2Config *cfg, const char *name, int *kind, int *layer,
				   int64 *rows, int64 *cols, bool *hf_transposed)
{
	const char *suffix;
	int			l = -1;
	int			k;

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
	for (k = 0; k < PGLLM_NUM_PARAM_TENSORS; k++)
	{
		ParamSpec	spec;

		param_spec(cfg, k, &spec);
		if ((spec.per_layer != 0) != (l >= 0) || strcmp(suffix, spec.suffix) != 0)
			continue;
		*kind = k;
		*layer = l < 0 ? 0 : l;
		*hf_transposed = spec.hf_transposed != 0;
		*rows = spec.rows;
		*cols = spec.cols;
		return true;
	}
	return false;
}

int
pgllm_param_count(const PgllmGPT2Config *cfg)
{
	int			n = 0;
	int			k;

	for (k = 0; k < PGLLM_NUM_PARAM_TENSORS; k++)
	{
		ParamSpec	spec;

		param_spec(cfg, k, &spec);
		n += spec.per_layer ? (int) cfg->n_layer : 1;
	}
	return n;
}

char *
pgllm_param_name(const PgllmGPT2Config *cfg, int i, int *kind, int *layer)
{
	int			k;

	for (k = 0; k < PGLLM_NUM_PARAM_TENSORS; k++)
	{
		ParamSpec	spec;
		int			nl;

		param_spec(cfg, k, &spec);
		nl = spec.per_layer ? (int) cfg->n_layer : 1;
		if (i < nl)
		{
			*kind = k;
			*layer = i;
			return spec.per_layer ? psprintf("h.%d.%s", i, spec.suffix) : pstrdup(spec.suffix);
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
	ParamSpec	spec;
	int			k;

	pgllm_gpt2_param_sizes(cfg, sizes);
	for (k = 0; k < kind; k++)
		off += sizes[k];
	param_spec(cfg, kind, &spec);
	*count = spec.rows * spec.cols;
	return off + (int64) layer * spec.rows * spec.cols;
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

/* a tensor's shape as llm_param keeps it: int[] {rows} or {rows, cols} */
Datum
pgllm_shape_datum(int64 rows, int64 cols)
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
		int64		count,
					off = pgllm_param_offset(cfg, kind, layer, &count);
		ParamSpec	spec;
		Datum		values[6];
		char		nulls[6] = {' ', ' ', ' ', ' ', m ? ' ' : 'n', v ? ' ' : 'n'};
		char		saved[3][VARHDRSZ];

		CHECK_FOR_INTERRUPTS();
		param_spec(cfg, kind, &spec);
		values[0] = CStringGetTextDatum(name);
		values[1] = CStringGetTextDatum(tname);
		values[2] = pgllm_shape_datum(spec.rows, spec.cols);
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
