/*
 * dataset.c -- training data in llm_dataset: which dataset a call means, a
 * split's rows loaded for training and evaluation (counted against
 * pg_llm.max_memory_mb), and llm_dataset_from_text.
 */
#include "pg_llm.h"

#include <math.h>

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "lib/stringinfo.h"
#include "utils/array.h"
#include "utils/builtins.h"

/* ---------------------------------------------------------------------------
 * which dataset
 * ------------------------------------------------------------------------- */

/* "a (8 train, 2 val rows), b (...)" of every dataset, or "" */
static char *
dataset_list(void)
{
	StringInfoData buf;
	uint64		r,
				n;
	int			spi;

	initStringInfo(&buf);		/* here: SPI's memory goes at pgllm_spi_end */
	spi = pgllm_spi_begin();
	n = pgllm_spi_exec(psprintf("SELECT dataset, pg_catalog.count(*) FILTER (WHERE split OPERATOR(pg_catalog.=) 'train'), "
								"pg_catalog.count(*) FILTER (WHERE split OPERATOR(pg_catalog.=) 'val') "
								"FROM %s GROUP BY dataset ORDER BY dataset LIMIT 20",
								pgllm_table("llm_dataset")),
					   0, NULL, NULL, NULL, true, 0, SPI_OK_SELECT);
	for (r = 0; r < n; r++)
	{
		HeapTuple	tup = SPI_tuptable->vals[r];
		bool		isnull;

		appendStringInfo(&buf, "%s%s (%lld train, %lld val rows)", r ? ", " : "",
						 SPI_getvalue(tup, SPI_tuptable->tupdesc, 1),
						 (long long) DatumGetInt64(SPI_getbinval(tup, SPI_tuptable->tupdesc, 2, &isnull)),
						 (long long) DatumGetInt64(SPI_getbinval(tup, SPI_tuptable->tupdesc, 3, &isnull)));
	}
	pgllm_spi_end(spi);
	return buf.data;
}

/* the distinct datasets (at most 2: enough to know whether one is alone) */
static int
dataset_names(char **first)
{
	uint64		n;
	MemoryContext caller = CurrentMemoryContext;	/* SPI's memory goes at pgllm_spi_end */
	int			spi = pgllm_spi_begin();

	n = pgllm_spi_exec(psprintf("SELECT DISTINCT dataset FROM %s ORDER BY dataset LIMIT 2",
								pgllm_table("llm_dataset")),
					   0, NULL, NULL, NULL, true, 0, SPI_OK_SELECT);
	*first = n > 0 ? MemoryContextStrdup(caller, SPI_getvalue(SPI_tuptable->vals[0],
															   SPI_tuptable->tupdesc, 1)) : NULL;
	pgllm_spi_end(spi);
	return (int) n;
}

char *
pgllm_dataset_resolve(const char *given, const char *fn)
{
	char	   *only = NULL;
	int			n = dataset_names(&only);
	char	   *list;

	if (given == NULL)
	{
		/* none named: "default" if it exists, else the only one there is */
		char	   *dflt;
		bool		has_default;
		int			spi = pgllm_spi_begin();

		has_default = pgllm_spi_exec(psprintf("SELECT 1 FROM %s WHERE dataset OPERATOR(pg_catalog.=) 'default' LIMIT 1",
											  pgllm_table("llm_dataset")),
									 0, NULL, NULL, NULL, true, 1, SPI_OK_SELECT) > 0;
		pgllm_spi_end(spi);
		if (has_default)
			return pstrdup("default");
		if (n == 1)
			return only;
		dflt = n == 0 ? NULL : dataset_list();
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 n == 0 ? errmsg("%s: llm_dataset holds no data", fn) :
				 errmsg("%s: name the dataset: llm_dataset holds several", fn),
				 dflt ? errdetail("The datasets: %s.", dflt) : 0,
				 n == 0 ? errhint("Fill llm_dataset with llm_dataset_from_text or scripts/prepare_dataset.py.") :
				 errhint("Pass dataset => '...'; without one, the dataset named \"default\" is used, or the only dataset there is.")));
	}
	if (n > 0)
	{
		bool		found;
		int			spi = pgllm_spi_begin();

		found = pgllm_spi_exec(psprintf("SELECT 1 FROM %s WHERE dataset OPERATOR(pg_catalog.=) $1 LIMIT 1",
										pgllm_table("llm_dataset")),
							   1, (Oid[]) {TEXTOID}, (Datum[]) {CStringGetTextDatum(given)},
							   NULL, true, 1, SPI_OK_SELECT) > 0;
		pgllm_spi_end(spi);
		if (found)
			return pstrdup(given);
	}
	list = n == 0 ? NULL : dataset_list();
	ereport(ERROR,
			(errcode(ERRCODE_UNDEFINED_OBJECT),
			 errmsg("%s: dataset \"%s\" does not exist", fn, given),
			 list ? errdetail("The datasets: %s.", list) : errdetail("llm_dataset holds no data."),
			 errhint("Fill llm_dataset with llm_dataset_from_text or scripts/prepare_dataset.py.")));
	return NULL;				/* not reached */
}

/* ---------------------------------------------------------------------------
 * a split's rows
 * ------------------------------------------------------------------------- */
void
pgllm_split_free(PgllmSplit *s)
{
	if (s->tokens)
		pgllm_free(s->tokens, s->alloc_bytes);
	memset(s, 0, sizeof(PgllmSplit));
}

/*
 * The rows of a dataset split, in id order, into one buffer counted against
 * pg_llm.max_memory_mb (sized from a count first, so that a too large
 * dataset is refused before anything is read) and fetched through a cursor
 * in batches, so that SPI never holds the whole split.
 */
#define SPLIT_FETCH_ROWS 1024

void
pgllm_split_load(const char *dataset, const char *split, PgllmSplit *out, MemoryContext ctx,
		   const PgllmGPT2Config *cfg)
{
	const char *where = "WHERE dataset OPERATOR(pg_catalog.=) $1 AND split OPERATOR(pg_catalog.=) $2";
	Oid			types[2] = {TEXTOID, TEXTOID};
	Datum		values[2] = {CStringGetTextDatum(dataset), CStringGetTextDatum(split)};
	bool		isnull;
	int64		n,
				len = -1,
				r = 0;
	Portal		portal;
	int			spi;

	memset(out, 0, sizeof(PgllmSplit));
	spi = pgllm_spi_begin();
	pgllm_spi_exec(psprintf("SELECT pg_catalog.count(*) FROM %s %s", pgllm_table("llm_dataset"), where),
				   2, types, values, NULL, true, 1, SPI_OK_SELECT);
	n = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	portal = SPI_cursor_open_with_args(NULL,
									   psprintf("SELECT tokens, target FROM %s %s ORDER BY id",
												pgllm_table("llm_dataset"), where),
									   2, types, values, NULL, true, CURSOR_OPT_NO_SCROLL);
	for (;;)
	{
		uint64		k;

		SPI_cursor_fetch(portal, true, SPLIT_FETCH_ROWS);
		if (SPI_processed == 0)
			break;
		for (k = 0; k < SPI_processed; k++, r++)
		{
			int64		nt,
						ng;
			int32	   *tok = pgllm_int4_array(DatumGetArrayTypeP(SPI_getbinval(SPI_tuptable->vals[k],
																		   SPI_tuptable->tupdesc, 1, &isnull)),
											   &nt, "llm_dataset.tokens");
			int32	   *tgt = pgllm_int4_array(DatumGetArrayTypeP(SPI_getbinval(SPI_tuptable->vals[k],
																		   SPI_tuptable->tupdesc, 2, &isnull)),
											   &ng, "llm_dataset.target");

			if (len < 0)
			{
				MemoryContext old = MemoryContextSwitchTo(ctx);

				len = nt;
				out->row_len = len;
				/* tokens and targets in one counted buffer */
				if (len > 0 && n > (int64) (SIZE_MAX / 4) / (2 * (int64) sizeof(int32) * len))
					ereport(ERROR,
							(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
							 errmsg("dataset \"%s\" is too large to load", dataset)));
				out->alloc_bytes = 2 * (int64) sizeof(int32) * len * Max(n, 1);
				out->tokens = pgllm_alloc_bytes(out->alloc_bytes,
												psprintf("the %s rows of dataset \"%s\"", split, dataset));
				out->targets = out->tokens + len * Max(n, 1);
				MemoryContextSwitchTo(old);
			}
			if (r >= n)
				ereport(ERROR,
						(errcode(ERRCODE_T_R_SERIALIZATION_FAILURE),
						 errmsg("dataset \"%s\" changed while it was read", dataset)));
			if (nt != len || ng != len)
				ereport(ERROR,
						(errcode(ERRCODE_DATA_EXCEPTION),
						 errmsg("the %s rows of dataset \"%s\" differ in length (%lld and %lld tokens)",
								split, dataset, (long long) len, (long long) (nt != len ? nt : ng)),
						 errhint("Every row of a dataset holds the same number of tokens.")));
			pgllm_check_tokens(tok, nt, cfg, "training", "a dataset row");
			pgllm_check_tokens(tgt, ng, cfg, "training", "a dataset row's targets");
			memcpy(out->tokens + r * len, tok, sizeof(int32) * len);
			memcpy(out->targets + r * len, tgt, sizeof(int32) * len);
		}
		SPI_freetuptable(SPI_tuptable);
		CHECK_FOR_INTERRUPTS();
	}
	SPI_cursor_close(portal);
	out->n_rows = r;
	pgllm_spi_end(spi);
}

/* ---------------------------------------------------------------------------
 * llm_dataset_from_text(model, text, block_size, val_fraction, dataset) -> rows
 * ------------------------------------------------------------------------- */
PG_FUNCTION_INFO_V1(pg_llm_dataset_from_text);
Datum
pg_llm_dataset_from_text(PG_FUNCTION_ARGS)
{
	char	   *model = text_to_cstring(PG_GETARG_TEXT_PP(0));
	text	   *t = PG_GETARG_TEXT_PP(1);
	int32		bs = PG_GETARG_INT32(2);
	double		val_fraction = PG_GETARG_FLOAT8(3);
	char	   *dataset = text_to_cstring(PG_GETARG_TEXT_PP(4));
	PgllmGPT2Config cfg;
	PgllmBPE   *bpe;
	int32	   *ids;
	int64		n,
				n_val,
				n_train,
				rows = 0;
	int			rc;
	int			spi;
	SPIPlanPtr	plan;

	pgllm_require_primary("llm_dataset_from_text");
	if (bs < 1)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("llm_dataset_from_text: block_size must be positive, got %d", bs)));
	if (!(val_fraction >= 0 && val_fraction < 1))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("llm_dataset_from_text: val_fraction must lie in [0, 1), got %g", val_fraction)));
	pgllm_model_config(model, &cfg, NULL);
	if (bs > cfg.n_positions)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("llm_dataset_from_text: block_size %d exceeds the model's context of %lld positions",
						bs, (long long) cfg.n_positions)));
	bpe = pgllm_tokenizer_get(model);
	ids = pgllm_encode_text(bpe, VARDATA_ANY(t), VARSIZE_ANY_EXHDR(t), &n);
	/* as nanoGPT: the first part trains, the last val_fraction validates */
	n_val = (int64) floor(n * val_fraction);
	n_train = n - n_val;
	spi = pgllm_spi_begin();
	plan = SPI_prepare(psprintf("INSERT INTO %s (dataset, tokens, target, split) "
								"SELECT $1, $2[g * $3 + 1 : g * $3 + $3], $2[g * $3 + 2 : g * $3 + $3 + 1], $4 "
								"FROM pg_catalog.generate_series(0::pg_catalog.int8, $5 - 1) AS g",
								pgllm_table("llm_dataset")),
					   5, (Oid[]) {TEXTOID, INT4ARRAYOID, INT4OID, TEXTOID, INT8OID});
	if (plan == NULL)
		elog(ERROR, "pg_llm: SPI_prepare failed");
	for (int part = 0; part < 2; part++)
	{
		int32	   *start = part == 0 ? ids : ids + n_train;
		int64		len = part == 0 ? n_train : n_val;
		int64		blocks = len > bs ? (len - 1) / bs : 0;		/* each block needs bs+1 tokens */

		if (blocks == 0)
			continue;
		rc = SPI_execute_plan(plan,
							  (Datum[]) {CStringGetTextDatum(dataset),
								  PointerGetDatum(pgllm_int4_array_result(start, len, "llm_dataset_from_text")),
								  Int32GetDatum(bs),
								  CStringGetTextDatum(part == 0 ? "train" : "val"),
								  Int64GetDatum(blocks)},
							  NULL, false, 0);
		if (rc != SPI_OK_INSERT)
			elog(ERROR, "pg_llm: writing llm_dataset failed");
		rows += SPI_processed;
	}
	pgllm_spi_end(spi);
	if (rows == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("llm_dataset_from_text: the text's %lld tokens make no block of %d", (long long) n, bs),
				 errhint("Give more text or a smaller block_size.")));
	PG_RETURN_INT32((int32) rows);
}
