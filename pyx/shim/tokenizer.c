/*
 * tokenizer.c -- GPT-2's byte-level BPE per model: loading vocab.json and
 * merges.txt (from server files or from text a client sends), llm_encode,
 * llm_decode, and the tokenizers in use, keyed by (model, tokenizer_version).
 * A tokenizer is built once per server: its tables (an image) go to a
 * shared cache file that every backend maps (shared_cache.c), and a backend
 * keeps only its piece cache to itself.
 */
#include "pg_llm.h"

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "mb/pg_wchar.h"
#include "utils/array.h"
#include "utils/builtins.h"

typedef struct CachedTokenizer
{
	char	   *model;
	int64		version;
	PgllmBPE   *bpe;
	PgllmSharedFile shared;		/* shared.base != NULL: bpe reads its image there */
	struct CachedTokenizer *next;
} CachedTokenizer;

static CachedTokenizer *tok_cache = NULL;
/* superseded or dropped: freed when the transaction ends, since a
 * set-returning call of this statement may still be using them */
static CachedTokenizer *tok_retired = NULL;
static bool tok_callback_registered = false;

#define MAX_TOKENIZER_FILE (256 * 1024 * 1024)

/* ---------------------------------------------------------------------------
 * the model's tokenizer
 * ------------------------------------------------------------------------- */
static void
no_tokenizer(const char *model)
{
	ereport(ERROR,
			(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
			 errmsg("model \"%s\" has no tokenizer", model),
			 errhint("Load GPT-2's vocab.json and merges.txt with pg_llm_load_bpe_vocab(path, model) and pg_llm_load_bpe_merges(path, model), or with scripts/ingest_tokenizer.py.")));
}

/*
 * A tokenizer built from the model's llm_vocab rows, whoever wrote them: ids
 * must run 0 .. n-1; sizes are checked before anything is allocated; the
 * rows come through a cursor into counted buffers; building is bounded and
 * cancellable (pgllm_bpe_create).  NULL when the model has no vocabulary.
 * read_only: the statement's snapshot (not when a loader of the same
 * statement may have written the vocabulary just before).
 */
static PgllmBPE *
vocab_tokenizer(const char *model, bool read_only)
{
	const char *where = "WHERE model OPERATOR(pg_catalog.=) $1";
	Oid			types[1] = {TEXTOID};
	Datum		values[1] = {CStringGetTextDatum(model)};
	bool		isnull;
	int64		n,
				total,
				r = 0,
				data_bytes;
	uint8	   *data;
	int64	   *offsets;
	uint8	   *special;
	Portal		portal;
	PgllmBPE   *bpe = NULL;
	int			rc;
	MemoryContext caller = CurrentMemoryContext,	/* SPI's memory goes at pgllm_spi_end */
				old;
	int			spi = pgllm_spi_begin();

	pgllm_spi_exec(psprintf("SELECT pg_catalog.count(*), "
							"coalesce(pg_catalog.sum(pg_catalog.octet_length(token)), 0)::pg_catalog.int8 "
							"FROM %s %s", pgllm_table("llm_vocab"), where),
				   1, types, values, NULL, read_only, 1, SPI_OK_SELECT);
	n = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	total = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &isnull));
	if (n == 0)
	{
		pgllm_spi_end(spi);
		return NULL;
	}
	if (n > PGLLM_BPE_MAX_TOKENS || total > PGLLM_BPE_MAX_BYTES)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("the vocabulary of model \"%s\" is too large: %lld tokens of %lld bytes in all",
						model, (long long) n, (long long) total),
				 errdetail("A tokenizer holds at most %d tokens and %d bytes of tokens.",
						   PGLLM_BPE_MAX_TOKENS, PGLLM_BPE_MAX_BYTES)));
	data_bytes = total + 1 + (int64) sizeof(int64) * (n + 2) + n;	/* + alignment */
	old = MemoryContextSwitchTo(caller);
	data = pgllm_alloc_bytes(data_bytes, psprintf("the vocabulary of model \"%s\"", model));
	MemoryContextSwitchTo(old);
	offsets = (int64 *) TYPEALIGN(sizeof(int64), data + total + 1);
	special = (uint8 *) (offsets + n + 1);
	offsets[0] = 0;
	portal = SPI_cursor_open_with_args(NULL,
									   psprintf("SELECT token_id, token, special FROM %s %s ORDER BY token_id",
												pgllm_table("llm_vocab"), where),
									   1, types, values, NULL, read_only, CURSOR_OPT_NO_SCROLL);
	for (;;)
	{
		uint64		k;

		SPI_cursor_fetch(portal, true, 4096);
		if (SPI_processed == 0)
			break;
		for (k = 0; k < SPI_processed; k++, r++)
		{
			HeapTuple	tup = SPI_tuptable->vals[k];
			int32		id = DatumGetInt32(SPI_getbinval(tup, SPI_tuptable->tupdesc, 1, &isnull));
			bytea	   *t = DatumGetByteaPP(SPI_getbinval(tup, SPI_tuptable->tupdesc, 2, &isnull));
			int64		len = VARSIZE_ANY_EXHDR(t);

			if (id != r)
				ereport(ERROR,
						(errcode(ERRCODE_DATA_EXCEPTION),
						 errmsg("the vocabulary of model \"%s\" is not numbered 0 .. %lld: it has no token %lld",
								model, (long long) n - 1, (long long) r),
						 errhint("Load it again with pg_llm_load_bpe_vocab.")));
			if (r >= n || offsets[r] + len > total)
				ereport(ERROR,
						(errcode(ERRCODE_T_R_SERIALIZATION_FAILURE),
						 errmsg("the vocabulary of model \"%s\" changed while it was read", model)));
			memcpy(data + offsets[r], VARDATA_ANY(t), len);
			offsets[r + 1] = offsets[r] + len;
			special[r] = DatumGetBool(SPI_getbinval(tup, SPI_tuptable->tupdesc, 3, &isnull));
		}
		SPI_freetuptable(SPI_tuptable);
		CHECK_FOR_INTERRUPTS();
	}
	SPI_cursor_close(portal);
	pgllm_spi_end(spi);
	if (r != n)
		ereport(ERROR,
				(errcode(ERRCODE_T_R_SERIALIZATION_FAILURE),
				 errmsg("the vocabulary of model \"%s\" changed while it was read", model)));
	PGLLM_RESTARTABLE(rc, rc = pgllm_bpe_create(n, data, offsets, special, &bpe, pgllm_cancel));
	pgllm_free(data, data_bytes);
	if (rc == PGLLM_EINVAL)
		ereport(ERROR,
				(errcode(ERRCODE_DATA_EXCEPTION),
				 errmsg("the vocabulary of model \"%s\" lacks single-byte tokens: it is not a byte-level BPE vocabulary",
						model)));
	pgllm_kernel_status(rc, "bpe_create");
	return bpe;
}

static void
tokenizer_free(CachedTokenizer *c, bool outdated)
{
	pgllm_bpe_free(c->bpe);
	if (c->shared.base != NULL)
		pgllm_shared_unmap(&c->shared, outdated);
	pfree(c->model);
	pfree(c);
}

static void
tokenizer_xact_callback(XactEvent event, void *arg)
{
	if (event != XACT_EVENT_ABORT && event != XACT_EVENT_COMMIT &&
		event != XACT_EVENT_PARALLEL_ABORT && event != XACT_EVENT_PARALLEL_COMMIT)
		return;
	while (tok_retired)
	{
		CachedTokenizer *c = tok_retired;

		tok_retired = c->next;
		tokenizer_free(c, true);
	}
}

/* the model's tokenizers in use go at the end of the transaction */
void
pgllm_tokenizer_forget(const char *model)
{
	CachedTokenizer **pp;

	for (pp = &tok_cache; *pp;)
	{
		if (strcmp((*pp)->model, model) == 0)
		{
			CachedTokenizer *c = *pp;

			*pp = c->next;
			c->next = tok_retired;
			tok_retired = c;
		}
		else
			pp = &(*pp)->next;
	}
}

/* a new cache file's data: the built tokenizer's image */
static void
fill_image(void *dst, int64 data_len, void *arg)
{
	if (pgllm_bpe_image_write((const PgllmBPE *) arg, dst, data_len) != PGLLM_OK)
		elog(ERROR, "pg_llm: a tokenizer image is not the size it was measured at");
}

/* a tokenizer reading the image in a mapped cache file; NULL (and the
 * file unmapped) if it holds none, which its checksum makes a bug */
static PgllmBPE *
tokenizer_of_file(PgllmSharedFile *file)
{
	PgllmBPE   *bpe = NULL;
	int			rc = pgllm_bpe_from_image(file->data, file->data_len, &bpe);

	if (rc == PGLLM_OK)
		return bpe;
	pgllm_shared_unmap(file, false);
	pgllm_kernel_status(rc == PGLLM_EINVAL ? PGLLM_OK : rc, "bpe_from_image");	/* out of memory */
	ereport(WARNING,
			(errmsg("pg_llm: the shared cache file \"%s\" holds no valid tokenizer", file->path),
			 errdetail("This backend builds its own copy of the tokenizer.")));
	return NULL;
}

/*
 * The model's tokenizer at key's version: mapped from the server's cache
 * file; else built from the table and, unless this transaction wrote the
 * vocabulary (it may never commit), written to the cache file for every
 * backend (best effort: without room, this backend keeps what it built).
 */
static PgllmBPE *
tokenizer_load(const char *model, const PgllmCacheKey *key, bool written_here,
			   PgllmSharedFile *file)
{
	PgllmBPE   *volatile built = NULL;
	PgllmBPE   *bpe = NULL;

	memset(file, 0, sizeof(*file));
	file->fd = -1;
	if (!written_here && pgllm_shared_open(key, file))
	{
		bpe = tokenizer_of_file(file);
		if (bpe != NULL)
			return bpe;
	}
	built = vocab_tokenizer(model, true);
	if (built == NULL)
		no_tokenizer(model);
	if (written_here)
		return built;
	PG_TRY();
	{
		PgllmSharedResult r = pgllm_shared_map(key, pgllm_bpe_image_size(built), fill_image,
											   built, file);

		if (r == PGLLM_SHARED_MAPPED)
			bpe = tokenizer_of_file(file);
	}
	PG_CATCH();
	{
		pgllm_bpe_free(built);
		PG_RE_THROW();
	}
	PG_END_TRY();
	if (bpe == NULL)
		return built;
	pgllm_bpe_free(built);
	return bpe;
}

PgllmBPE *
pgllm_tokenizer_get(const char *model)
{
	bool		isnull;
	Datum		d;
	PgllmCacheKey key;
	bool		written_here;
	TransactionId xmin;
	CachedTokenizer *c;
	int			spi = pgllm_spi_begin();

	if (!tok_callback_registered)
	{
		RegisterXactCallback(tokenizer_xact_callback, NULL);
		tok_callback_registered = true;
	}
	/* the vocabulary's first row: its writer tells a version number handed
	 * out again apart (a reload writes new rows) and whether this
	 * transaction wrote the vocabulary */
	if (pgllm_spi_exec(psprintf("SELECT tokenizer_version, "
								"EXISTS (SELECT 1 FROM %s g WHERE g.model OPERATOR(pg_catalog.=) c.model), "
								"tableoid, "
								"(SELECT v.xmin FROM %s v WHERE v.model OPERATOR(pg_catalog.=) c.model "
								"AND v.token_id OPERATOR(pg_catalog.=) 0) "
								"FROM %s c WHERE model OPERATOR(pg_catalog.=) $1",
								pgllm_table("llm_merges"), pgllm_table("llm_vocab"),
								pgllm_table("llm_model_config")),
					   1, (Oid[]) {TEXTOID}, (Datum[]) {CStringGetTextDatum(model)},
					   NULL, true, 1, SPI_OK_SELECT) == 0)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("model \"%s\" does not exist", model)));
	d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
	if (isnull ||
		!DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &isnull)))
		no_tokenizer(model);
	key.model = model;
	key.format = PGLLM_CACHE_TOKENIZER;
	key.version = DatumGetInt64(d);
	key.config_table = DatumGetObjectId(SPI_getbinval(SPI_tuptable->vals[0],
													  SPI_tuptable->tupdesc, 3, &isnull));
	xmin = DatumGetTransactionId(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 4,
											   &isnull));
	key.stamp = isnull ? -1 : (int64) xmin;
	key.best_effort = true;
	/* (no vocabulary: vocab_tokenizer says so) */
	written_here = isnull || TransactionIdIsCurrentTransactionId(xmin);
	pgllm_spi_end(spi);
	for (c = tok_cache; c; c = c->next)
		if (strcmp(c->model, model) == 0 && c->version == key.version)
			return c->bpe;

	/* its entry first: nothing can fail between mapping and keeping it */
	c = MemoryContextAllocZero(TopMemoryContext, sizeof(CachedTokenizer));
	c->model = MemoryContextStrdup(TopMemoryContext, model);
	c->version = key.version;
	PG_TRY();
	{
		c->bpe = tokenizer_load(model, &key, written_here, &c->shared);
	}
	PG_CATCH();
	{
		pfree(c->model);
		pfree(c);
		PG_RE_THROW();
	}
	PG_END_TRY();
	/* older tokenizers of this model are superseded */
	pgllm_tokenizer_forget(model);
	c->next = tok_cache;
	tok_cache = c;
	return c->bpe;
}

int32 *
pgllm_encode_text(PgllmBPE *bpe, const char *str, int len, int64 *ntokens)
{
	char	   *utf8 = (char *) pg_server_to_any(str, len, PG_UTF8);
	int			ulen = (utf8 == str) ? len : (int) strlen(utf8);
	/* at most one id per byte, and no more than an int[] can hold */
	int64		cap = Min((int64) ulen, PGLLM_MAX_INT4_ARRAY);
	int32	   *ids = (int32 *) pgllm_alloc_bytes(sizeof(int32) * Max(cap, 1), "token ids");
	int			rc;

	PGLLM_RESTARTABLE(rc, rc = pgllm_bpe_encode(bpe, (const uint8 *) utf8, ulen, ids, cap,
												 ntokens, pgllm_cancel));
	if (rc == PGLLM_EINVAL)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("the text encodes to more tokens than an int[] holds (%lld)",
						(long long) PGLLM_MAX_INT4_ARRAY)));
	pgllm_kernel_status(rc, "bpe_encode");
	return ids;
}

char *
pgllm_decode_text(PgllmBPE *bpe, const int32 *ids, int64 n, bool hold_incomplete,
				  int64 *held)
{
	int64		len = pgllm_bpe_decoded_len(bpe, ids, n);
	uint8	   *raw;
	char	   *utf8;
	int64		ulen;
	int64		i;

	if (len < 0)
	{
		for (i = 0; i < n; i++)
			if (ids[i] < 0 || ids[i] >= pgllm_bpe_n_tokens(bpe))
				ereport(ERROR,
						(errcode(ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE),
						 errmsg("token id %d at position %lld is outside the vocabulary [0, %lld)",
								ids[i], (long long) i + 1, (long long) pgllm_bpe_n_tokens(bpe))));
	}
	if (len > (int64) (MaxAllocSize / 3 - 1))
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("the decoded text would exceed 1 GB")));
	raw = palloc(len + 1);
	pgllm_bpe_decode(bpe, ids, n, raw);
	utf8 = palloc(3 * len + 1);
	ulen = pgllm_utf8_sanitize(raw, len, (uint8 *) utf8, hold_incomplete, held, true);
	utf8[ulen] = '\0';
	pfree(raw);
	return (char *) pg_any_to_server(utf8, (int) ulen, PG_UTF8);
}

/* ---------------------------------------------------------------------------
 * loading
 * ------------------------------------------------------------------------- */
/* a new tokenizer version for the model (after its vocab or merges changed) */
static void
bump_tokenizer_version(const char *model)
{
	int			spi = pgllm_spi_begin();

	pgllm_spi_exec(psprintf("UPDATE %s SET tokenizer_version = %s, updated_at = pg_catalog.now() "
							"WHERE model OPERATOR(pg_catalog.=) $1",
							pgllm_table("llm_model_config"), pgllm_next_version_sql()),
				   1, (Oid[]) {TEXTOID}, (Datum[]) {CStringGetTextDatum(model)},
				   NULL, false, 0, SPI_OK_UPDATE);
	pgllm_spi_end(spi);
}

/* delete the model's rows of a tokenizer table; returns how many */
static uint64
clear_rows(const char *table, const char *model)
{
	int			spi = pgllm_spi_begin();
	uint64		n = pgllm_spi_exec(psprintf("DELETE FROM %s WHERE model OPERATOR(pg_catalog.=) $1",
											pgllm_table(table)),
								   1, (Oid[]) {TEXTOID}, (Datum[]) {CStringGetTextDatum(model)},
								   NULL, false, 0, SPI_OK_DELETE);

	pgllm_spi_end(spi);
	return n;
}

/* a tokenizer loader's model: on the primary, and existing */
static void
require_model(const char *model, const char *fn)
{
	PgllmGPT2Config cfg;

	pgllm_require_primary(fn);
	pgllm_model_config(model, &cfg, NULL);	/* ERROR if it does not exist */
}

static int64
load_vocab(const char *model, const uint8 *content, int64 len, const char *source)
{
	int64		n = 0,
				nbytes = 0,
				pos = 0;
	int			rc;
	uint8	   *data = NULL;
	int64	   *offsets = NULL;
	uint8	   *special = NULL;
	Datum	   *tokens,
			   *flags;
	int64		i;
	int			spi;

	require_model(model, "loading a vocabulary");
	rc = pgllm_parse_vocab_json(content, len, &n, &nbytes, NULL, NULL, NULL, &pos);
	if (rc == PGLLM_OK)
	{
		if (n == 0)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("%s holds no tokens", source)));
		if (n > PGLLM_BPE_MAX_TOKENS || nbytes > PGLLM_BPE_MAX_BYTES)
			ereport(ERROR,
					(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
					 errmsg("%s holds %lld tokens of %lld bytes in all; a vocabulary holds at most %d tokens and %d bytes",
							source, (long long) n, (long long) nbytes, PGLLM_BPE_MAX_TOKENS,
							PGLLM_BPE_MAX_BYTES)));
		data = pgllm_alloc_bytes(nbytes + 1, "the vocabulary");
		offsets = pgllm_alloc_bytes(sizeof(int64) * (n + 1), "the vocabulary");
		special = palloc(n);
		rc = pgllm_parse_vocab_json(content, len, &n, &nbytes, data, offsets, special, &pos);
	}
	if (rc == PGLLM_EFORMAT)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_TEXT_REPRESENTATION),
				 errmsg("%s is not a valid vocab.json: malformed JSON at byte %lld", source,
						(long long) pos),
				 errdetail("A vocab.json is one JSON object mapping token strings to integer ids.")));
	if (rc == PGLLM_EINVAL)
		ereport(ERROR,
				(errcode(ERRCODE_DATA_EXCEPTION),
				 errmsg("%s is not a valid vocab.json: token ids must be 0, 1, ..., n-1, each once", source)));
	pgllm_kernel_status(rc, "parse_vocab_json");

	tokens = palloc(sizeof(Datum) * n);
	flags = palloc(sizeof(Datum) * n);
	for (i = 0; i < n; i++)
	{
		int64		l = offsets[i + 1] - offsets[i];
		bytea	   *t = palloc(VARHDRSZ + l);

		SET_VARSIZE(t, VARHDRSZ + l);
		memcpy(VARDATA(t), data + offsets[i], l);
		tokens[i] = PointerGetDatum(t);
		flags[i] = BoolGetDatum(special[i] != 0);
	}
	if (clear_rows("llm_merges", model) > 0)
		ereport(NOTICE,
				(errmsg("the merges of model \"%s\" were removed with its old vocabulary", model),
				 errhint("Load merges.txt again.")));
	clear_rows("llm_vocab", model);
	spi = pgllm_spi_begin();
	if (pgllm_spi_exec(psprintf("INSERT INTO %s (model, token_id, token, special) "
								"SELECT $1, (g.i - 1)::pg_catalog.int4, g.token, g.special "
								"FROM ROWS FROM (pg_catalog.unnest($2::pg_catalog.bytea[]), "
								"pg_catalog.unnest($3::pg_catalog.bool[])) "
								"WITH ORDINALITY AS g(token, special, i)",
								pgllm_table("llm_vocab")),
					   3, (Oid[]) {TEXTOID, BYTEAARRAYOID, BOOLARRAYOID},
					   (Datum[]) {CStringGetTextDatum(model),
						   PointerGetDatum(construct_array(tokens, (int) n, BYTEAOID, -1, false, TYPALIGN_INT)),
						   PointerGetDatum(construct_array(flags, (int) n, BOOLOID, 1, true, TYPALIGN_CHAR))},
					   NULL, false, 0, SPI_OK_INSERT) != (uint64) n)
		elog(ERROR, "pg_llm: writing llm_vocab failed");
	pgllm_spi_end(spi);
	bump_tokenizer_version(model);
	return n;
}

static int64
load_merges(const char *model, const uint8 *content, int64 len, const char *source)
{
	PgllmBPE   *bpe;
	int64		count = 0,
				line = 0,
				cap = 1,
				i;
	int32	   *ids;
	int			rc,
				spi;

	require_model(model, "loading merges");

	/*
	 * resolve the merges' tokens with the model's vocabulary; not read_only,
	 * so that a fresh snapshot sees a vocabulary loaded earlier in the same
	 * statement (SELECT load_vocab(...), load_merges(...))
	 */
	bpe = vocab_tokenizer(model, false);
	if (bpe == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("model \"%s\" has no vocabulary", model),
				 errhint("Load vocab.json with pg_llm_load_bpe_vocab first.")));
	/* a merge per line at most: three ids each, in one counted buffer */
	for (i = 0; i < len; i++)
		cap += content[i] == '\n';
	ids = (int32 *) pgllm_alloc_bytes(3 * sizeof(int32) * cap, "the merges");
	rc = pgllm_parse_merges(bpe, content, len, ids, ids + cap, ids + 2 * cap, cap, &count, &line);
	pgllm_bpe_free(bpe);
	if (rc == PGLLM_EFORMAT)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_TEXT_REPRESENTATION),
				 errmsg("%s is not a valid merges.txt: line %lld is not two tokens separated by a space",
						source, (long long) line)));
	if (rc == PGLLM_EINVAL)
		ereport(ERROR,
				(errcode(ERRCODE_DATA_EXCEPTION),
				 errmsg("%s does not match the vocabulary of model \"%s\": a token of line %lld is not in it",
						source, model, (long long) line)));
	pgllm_kernel_status(rc, "parse_merges");
	if (count == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s holds no merges", source)));

	clear_rows("llm_merges", model);
	spi = pgllm_spi_begin();
	if (pgllm_spi_exec(psprintf("INSERT INTO %s (model, rank, left_id, right_id, merged_id) "
								"SELECT $1, (g.i - 1)::pg_catalog.int4, g.l, g.r, g.m "
								"FROM ROWS FROM (pg_catalog.unnest($2::pg_catalog.int4[]), "
								"pg_catalog.unnest($3::pg_catalog.int4[]), pg_catalog.unnest($4::pg_catalog.int4[])) "
								"WITH ORDINALITY AS g(l, r, m, i)",
								pgllm_table("llm_merges")),
					   4, (Oid[]) {TEXTOID, INT4ARRAYOID, INT4ARRAYOID, INT4ARRAYOID},
					   (Datum[]) {CStringGetTextDatum(model),
						   PointerGetDatum(pgllm_int4_array_result(ids, count, "merges")),
						   PointerGetDatum(pgllm_int4_array_result(ids + cap, count, "merges")),
						   PointerGetDatum(pgllm_int4_array_result(ids + 2 * cap, count, "merges"))},
					   NULL, false, 0, SPI_OK_INSERT) != (uint64) count)
		elog(ERROR, "pg_llm: writing llm_merges failed");
	pgllm_spi_end(spi);
	bump_tokenizer_version(model);
	return count;
}

/* pg_llm_load_bpe_vocab(path text, model text) -> tokens loaded */
PG_FUNCTION_INFO_V1(pg_llm_load_bpe_vocab);
Datum
pg_llm_load_bpe_vocab(PG_FUNCTION_ARGS)
{
	char	   *path = text_to_cstring(PG_GETARG_TEXT_PP(0));
	char	   *model = text_to_cstring(PG_GETARG_TEXT_PP(1));
	int64		len;
	uint8	   *content = pgllm_read_server_file(path, MAX_TOKENIZER_FILE, &len);

	PG_RETURN_INT64(load_vocab(model, content, len, psprintf("file \"%s\"", path)));
}

/* pg_llm_load_bpe_merges(path text, model text) -> merges loaded */
PG_FUNCTION_INFO_V1(pg_llm_load_bpe_merges);
Datum
pg_llm_load_bpe_merges(PG_FUNCTION_ARGS)
{
	char	   *path = text_to_cstring(PG_GETARG_TEXT_PP(0));
	char	   *model = text_to_cstring(PG_GETARG_TEXT_PP(1));
	int64		len;
	uint8	   *content = pgllm_read_server_file(path, MAX_TOKENIZER_FILE, &len);

	PG_RETURN_INT64(load_merges(model, content, len, psprintf("file \"%s\"", path)));
}

/* a text argument as UTF-8 bytes (the files are UTF-8 whatever the server's encoding) */
static const uint8 *
text_as_utf8(text *t, int64 *len)
{
	char	   *utf8 = (char *) pg_server_to_any(VARDATA_ANY(t), VARSIZE_ANY_EXHDR(t), PG_UTF8);

	*len = (utf8 == VARDATA_ANY(t)) ? VARSIZE_ANY_EXHDR(t) : (int64) strlen(utf8);
	return (const uint8 *) utf8;
}

/* pg_llm_load_bpe_vocab_text(content text, model text): the file's content from a client */
PG_FUNCTION_INFO_V1(pg_llm_load_bpe_vocab_text);
Datum
pg_llm_load_bpe_vocab_text(PG_FUNCTION_ARGS)
{
	char	   *model = text_to_cstring(PG_GETARG_TEXT_PP(1));
	int64		len;
	const uint8 *content = text_as_utf8(PG_GETARG_TEXT_PP(0), &len);

	PG_RETURN_INT64(load_vocab(model, content, len, "the vocabulary text"));
}

/* pg_llm_load_bpe_merges_text(content text, model text) */
PG_FUNCTION_INFO_V1(pg_llm_load_bpe_merges_text);
Datum
pg_llm_load_bpe_merges_text(PG_FUNCTION_ARGS)
{
	char	   *model = text_to_cstring(PG_GETARG_TEXT_PP(1));
	int64		len;
	const uint8 *content = text_as_utf8(PG_GETARG_TEXT_PP(0), &len);

	PG_RETURN_INT64(load_merges(model, content, len, "the merges text"));
}

/* ---------------------------------------------------------------------------
 * llm_encode / llm_decode
 * ------------------------------------------------------------------------- */
PG_FUNCTION_INFO_V1(pg_llm_encode);
Datum
pg_llm_encode(PG_FUNCTION_ARGS)
{
	text	   *t;
	char	   *model;
	PgllmBPE   *bpe;
	int32	   *ids;
	int64		n;

	if (PG_ARGISNULL(0))
		PG_RETURN_NULL();
	t = PG_GETARG_TEXT_PP(0);
	model = pgllm_model_name_arg(fcinfo, 1);
	bpe = pgllm_tokenizer_get(model);
	ids = pgllm_encode_text(bpe, VARDATA_ANY(t), VARSIZE_ANY_EXHDR(t), &n);
	PG_RETURN_ARRAYTYPE_P(pgllm_int4_array_result(ids, n, "llm_encode"));
}

PG_FUNCTION_INFO_V1(pg_llm_decode);
Datum
pg_llm_decode(PG_FUNCTION_ARGS)
{
	int64		n;
	int32	   *ids;
	char	   *model;
	PgllmBPE   *bpe;

	if (PG_ARGISNULL(0))
		PG_RETURN_NULL();
	ids = pgllm_int4_array(PG_GETARG_ARRAYTYPE_P(0), &n, "token ids");
	model = pgllm_model_name_arg(fcinfo, 1);
	bpe = pgllm_tokenizer_get(model);
	PG_RETURN_TEXT_P(cstring_to_text(pgllm_decode_text(bpe, ids, n, false, NULL)));
}

/*
 * pg_llm_bpe_token_text(token bytea, special bool) -> text: a token as
 * vocab.json and merges.txt write it (GPT-2's byte alphabet; a special
 * token's own UTF-8), for pg_gpt2's llm_bpe_vocab and llm_bpe_merges views.
 */
PG_FUNCTION_INFO_V1(pg_llm_bpe_token_text);
Datum
pg_llm_bpe_token_text(PG_FUNCTION_ARGS)
{
	bytea	   *t;
	bool		special = PG_ARGISNULL(1) ? false : PG_GETARG_BOOL(1);
	const uint8 *p;
	int64		n,
				i,
				o = 0;
	char	   *out;

	if (PG_ARGISNULL(0))
		PG_RETURN_NULL();
	t = PG_GETARG_BYTEA_PP(0);
	p = (const uint8 *) VARDATA_ANY(t);
	n = VARSIZE_ANY_EXHDR(t);
	if (n > (int64) (MaxAllocSize - 1) / 3)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("pg_llm_bpe_token_text: a token of %lld bytes is too long", (long long) n)));
	if (special)
	{
		out = palloc(3 * n + 1);
		o = pgllm_utf8_sanitize(p, n, (uint8 *) out, false, NULL, true);
	}
	else
	{
		out = palloc(2 * n + 1);	/* each character takes 1 or 2 bytes of UTF-8 */
		for (i = 0; i < n; i++)
		{
			uint32		c = pgllm_gpt2_byte_char(p[i]);

			if (c < 0x80)
				out[o++] = (char) c;
			else
			{
				out[o++] = (char) (0xC0 | (c >> 6));
				out[o++] = (char) (0x80 | (c & 0x3F));
			}
		}
	}
	out[o] = '\0';
	PG_RETURN_TEXT_P(cstring_to_text((char *) pg_any_to_server(out, (int) o, PG_UTF8)));
}
