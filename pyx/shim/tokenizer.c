/*
 * tokenizer.c -- GPT-2's byte-level BPE per model: loading vocab.json and
 * merges.txt (from server files or from text a client sends), llm_encode,
 * llm_decode, and a per-backend cache of built tokenizers keyed by
 * (model, tokenizer_version).
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
	struct CachedTokenizer *next;
} CachedTokenizer;

static CachedTokenizer *tok_cache = NULL;

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

PgllmBPE *
pgllm_tokenizer_get(const char *model)
{
	int			rc;
	bool		isnull;
	Datum		d;
	int64		version;
	CachedTokenizer *c,
			  **pp;
	uint64		r,
				n;
	int64		total = 0;
	uint8	   *data;
	int64	   *offsets;
	uint8	   *special;
	int			status;
	PgllmBPE   *bpe;

	SPI_connect();
	rc = SPI_execute_with_args(psprintf("SELECT tokenizer_version, "
										"EXISTS (SELECT 1 FROM %s g WHERE g.model = c.model) "
										"FROM %s c WHERE model = $1",
										pgllm_table("llm_merges"), pgllm_table("llm_model_config")),
							   1, (Oid[]) {TEXTOID}, (Datum[]) {CStringGetTextDatum(model)},
							   NULL, true, 1);
	if (rc != SPI_OK_SELECT)
		elog(ERROR, "pg_llm: reading llm_model_config failed");
	if (SPI_processed == 0)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("model \"%s\" does not exist", model)));
	d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
	if (isnull ||
		!DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &isnull)))
		no_tokenizer(model);
	version = DatumGetInt64(d);
	for (c = tok_cache; c; c = c->next)
		if (strcmp(c->model, model) == 0 && c->version == version)
		{
			SPI_finish();
			return c->bpe;
		}

	/* build it from llm_vocab */
	rc = SPI_execute_with_args(psprintf("SELECT token, special FROM %s WHERE model = $1 ORDER BY token_id",
										pgllm_table("llm_vocab")),
							   1, (Oid[]) {TEXTOID}, (Datum[]) {CStringGetTextDatum(model)},
							   NULL, true, 0);
	if (rc != SPI_OK_SELECT)
		elog(ERROR, "pg_llm: reading llm_vocab failed");
	n = SPI_processed;
	if (n == 0)
		no_tokenizer(model);
	for (r = 0; r < n; r++)
	{
		bytea	   *t = DatumGetByteaPP(SPI_getbinval(SPI_tuptable->vals[r],
												  SPI_tuptable->tupdesc, 1, &isnull));

		total += VARSIZE_ANY_EXHDR(t);
	}
	data = palloc(total + 1);
	offsets = palloc(sizeof(int64) * (n + 1));
	special = palloc(n);
	offsets[0] = 0;
	for (r = 0; r < n; r++)
	{
		bytea	   *t = DatumGetByteaPP(SPI_getbinval(SPI_tuptable->vals[r],
												  SPI_tuptable->tupdesc, 1, &isnull));

		memcpy(data + offsets[r], VARDATA_ANY(t), VARSIZE_ANY_EXHDR(t));
		offsets[r + 1] = offsets[r] + VARSIZE_ANY_EXHDR(t);
		special[r] = DatumGetBool(SPI_getbinval(SPI_tuptable->vals[r], SPI_tuptable->tupdesc, 2,
												&isnull));
	}
	bpe = pgllm_bpe_create((int64) n, data, offsets, special, &status);
	SPI_finish();
	if (bpe == NULL)
	{
		if (status == PGLLM_EINVAL)
			ereport(ERROR,
					(errcode(ERRCODE_DATA_CORRUPTED),
					 errmsg("the vocabulary of model \"%s\" lacks single-byte tokens: it is not a byte-level BPE vocabulary",
							model)));
		pgllm_kernel_status(status, "bpe_create");
	}

	/* drop older tokenizers of this model, keep the new one */
	for (pp = &tok_cache; *pp;)
	{
		if (strcmp((*pp)->model, model) == 0)
		{
			CachedTokenizer *old = *pp;

			*pp = old->next;
			pgllm_bpe_free(old->bpe);
			pfree(old->model);
			pfree(old);
		}
		else
			pp = &(*pp)->next;
	}
	c = MemoryContextAllocZero(TopMemoryContext, sizeof(CachedTokenizer));
	c->model = MemoryContextStrdup(TopMemoryContext, model);
	c->version = version;
	c->bpe = bpe;
	c->next = tok_cache;
	tok_cache = c;
	return bpe;
}

int32 *
pgllm_encode_text(PgllmBPE *bpe, const char *str, int len, int64 *ntokens)
{
	char	   *utf8 = (char *) pg_server_to_any(str, len, PG_UTF8);
	int			ulen = (utf8 == str) ? len : (int) strlen(utf8);
	int64		cap = Min((int64) ulen, (int64) MaxArraySize);
	int32	   *ids = palloc(sizeof(int32) * Max(cap, 1));
	int			status = PGLLM_OK;
	int64		n;

	for (;;)
	{
		CHECK_FOR_INTERRUPTS();
		pgllm_cancel = (INTERRUPTS_CAN_BE_PROCESSED() && !InterruptPending) ?
			(const int *) &InterruptPending : NULL;
		n = pgllm_bpe_encode(bpe, (const uint8 *) utf8, ulen, ids, cap, &status, pgllm_cancel);
		pgllm_cancel = NULL;
		if (n >= 0 || status != PGLLM_INTERRUPTED)
			break;
	}
	if (n < 0 && status == PGLLM_EINVAL)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("the text encodes to more tokens than an array holds (%d)", (int) MaxArraySize)));
	pgllm_kernel_status(n < 0 ? status : PGLLM_OK, "bpe_encode");
	*ntokens = n;
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
static void
bump_tokenizer_version(const char *model)
{
	int			rc;

	rc = SPI_execute_with_args(psprintf("UPDATE %s SET tokenizer_version = nextval('%s'), updated_at = now() "
										"WHERE model = $1",
										pgllm_table("llm_model_config"),
										pgllm_table("llm_model_version_seq")),
							   1, (Oid[]) {TEXTOID}, (Datum[]) {CStringGetTextDatum(model)},
							   NULL, false, 0);
	if (rc != SPI_OK_UPDATE)
		elog(ERROR, "pg_llm: updating llm_model_config failed");
}

static void
require_model(const char *model)
{
	PgllmGPT2Config cfg;

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

	require_model(model);
	rc = pgllm_parse_vocab_json(content, len, &n, &nbytes, NULL, NULL, NULL, &pos);
	if (rc == PGLLM_OK)
	{
		if (n == 0 || n > 16777216)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("%s holds %lld tokens; a vocabulary needs 1 to 16777216", source,
							(long long) n)));
		data = palloc(nbytes + 1);
		offsets = palloc(sizeof(int64) * (n + 1));
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
	SPI_connect();
	spi = SPI_execute_with_args(psprintf("DELETE FROM %s WHERE model = $1", pgllm_table("llm_merges")),
								1, (Oid[]) {TEXTOID}, (Datum[]) {CStringGetTextDatum(model)},
								NULL, false, 0);
	if (spi != SPI_OK_DELETE)
		elog(ERROR, "pg_llm: clearing llm_merges failed");
	if (SPI_processed > 0)
		ereport(NOTICE,
				(errmsg("the merges of model \"%s\" were removed with its old vocabulary", model),
				 errhint("Load merges.txt again.")));
	spi = SPI_execute_with_args(psprintf("DELETE FROM %s WHERE model = $1", pgllm_table("llm_vocab")),
								1, (Oid[]) {TEXTOID}, (Datum[]) {CStringGetTextDatum(model)},
								NULL, false, 0);
	if (spi != SPI_OK_DELETE)
		elog(ERROR, "pg_llm: clearing llm_vocab failed");
	spi = SPI_execute_with_args(psprintf("INSERT INTO %s (model, token_id, token, special) "
										 "SELECT $1, (g.i - 1)::int, g.token, g.special "
										 "FROM unnest($2::bytea[], $3::bool[]) WITH ORDINALITY AS g(token, special, i)",
										 pgllm_table("llm_vocab")),
								3, (Oid[]) {TEXTOID, BYTEAARRAYOID, BOOLARRAYOID},
								(Datum[]) {CStringGetTextDatum(model),
									PointerGetDatum(construct_array(tokens, (int) n, BYTEAOID, -1, false, TYPALIGN_INT)),
									PointerGetDatum(construct_array(flags, (int) n, BOOLOID, 1, true, TYPALIGN_CHAR))},
								NULL, false, 0);
	if (spi != SPI_OK_INSERT || SPI_processed != (uint64) n)
		elog(ERROR, "pg_llm: writing llm_vocab failed");
	bump_tokenizer_version(model);
	SPI_finish();
	return n;
}

static int64
load_merges(const char *model, const uint8 *content, int64 len, const char *source)
{
	PgllmBPE   *bpe;
	int			status;
	int64		count = 0,
				line = 0,
				cap = len / 3 + 1,
				i;
	int32	   *left,
			   *right,
			   *merged;
	int			rc,
				spi;
	uint64		r,
				n;
	int64		total = 0;
	uint8	   *data;
	int64	   *offsets;
	uint8	   *special;
	Datum	   *dl,
			   *dr,
			   *dm;
	bool		isnull;

	require_model(model);
	/*
	 * resolve the merges' tokens with the model's vocabulary; not read_only,
	 * so that a fresh snapshot sees a vocabulary loaded earlier in the same
	 * statement (SELECT load_vocab(...), load_merges(...))
	 */
	SPI_connect();
	rc = SPI_execute_with_args(psprintf("SELECT token, special FROM %s WHERE model = $1 ORDER BY token_id",
										pgllm_table("llm_vocab")),
							   1, (Oid[]) {TEXTOID}, (Datum[]) {CStringGetTextDatum(model)},
							   NULL, false, 0);
	if (rc != SPI_OK_SELECT)
		elog(ERROR, "pg_llm: reading llm_vocab failed");
	n = SPI_processed;
	if (n == 0)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("model \"%s\" has no vocabulary", model),
				 errhint("Load vocab.json with pg_llm_load_bpe_vocab first.")));
	for (r = 0; r < n; r++)
		total += VARSIZE_ANY_EXHDR(DatumGetByteaPP(SPI_getbinval(SPI_tuptable->vals[r],
																 SPI_tuptable->tupdesc, 1, &isnull)));
	data = palloc(total + 1);
	offsets = palloc(sizeof(int64) * (n + 1));
	special = palloc(n);
	offsets[0] = 0;
	for (r = 0; r < n; r++)
	{
		bytea	   *t = DatumGetByteaPP(SPI_getbinval(SPI_tuptable->vals[r],
												  SPI_tuptable->tupdesc, 1, &isnull));

		memcpy(data + offsets[r], VARDATA_ANY(t), VARSIZE_ANY_EXHDR(t));
		offsets[r + 1] = offsets[r] + VARSIZE_ANY_EXHDR(t);
		special[r] = DatumGetBool(SPI_getbinval(SPI_tuptable->vals[r], SPI_tuptable->tupdesc, 2,
												&isnull));
	}
	bpe = pgllm_bpe_create((int64) n, data, offsets, special, &status);
	if (bpe == NULL)
	{
		if (status == PGLLM_EINVAL)
			ereport(ERROR,
					(errcode(ERRCODE_DATA_CORRUPTED),
					 errmsg("the vocabulary of model \"%s\" lacks single-byte tokens", model)));
		pgllm_kernel_status(status, "bpe_create");
	}
	left = palloc(sizeof(int32) * cap);
	right = palloc(sizeof(int32) * cap);
	merged = palloc(sizeof(int32) * cap);
	rc = pgllm_parse_merges(bpe, content, len, left, right, merged, cap, &count, &line);
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

	dl = palloc(sizeof(Datum) * count);
	dr = palloc(sizeof(Datum) * count);
	dm = palloc(sizeof(Datum) * count);
	for (i = 0; i < count; i++)
	{
		dl[i] = Int32GetDatum(left[i]);
		dr[i] = Int32GetDatum(right[i]);
		dm[i] = Int32GetDatum(merged[i]);
	}
	spi = SPI_execute_with_args(psprintf("DELETE FROM %s WHERE model = $1", pgllm_table("llm_merges")),
								1, (Oid[]) {TEXTOID}, (Datum[]) {CStringGetTextDatum(model)},
								NULL, false, 0);
	if (spi != SPI_OK_DELETE)
		elog(ERROR, "pg_llm: clearing llm_merges failed");
	spi = SPI_execute_with_args(psprintf("INSERT INTO %s (model, rank, left_id, right_id, merged_id) "
										 "SELECT $1, (g.i - 1)::int, g.l, g.r, g.m "
										 "FROM unnest($2::int[], $3::int[], $4::int[]) WITH ORDINALITY AS g(l, r, m, i)",
										 pgllm_table("llm_merges")),
								4, (Oid[]) {TEXTOID, INT4ARRAYOID, INT4ARRAYOID, INT4ARRAYOID},
								(Datum[]) {CStringGetTextDatum(model),
									PointerGetDatum(construct_array(dl, (int) count, INT4OID, 4, true, TYPALIGN_INT)),
									PointerGetDatum(construct_array(dr, (int) count, INT4OID, 4, true, TYPALIGN_INT)),
									PointerGetDatum(construct_array(dm, (int) count, INT4OID, 4, true, TYPALIGN_INT))},
								NULL, false, 0);
	if (spi != SPI_OK_INSERT || SPI_processed != (uint64) count)
		elog(ERROR, "pg_llm: writing llm_merges failed");
	bump_tokenizer_version(model);
	SPI_finish();
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
static ArrayType *
int4_array(const int32 *v, int64 n)
{
	Datum	   *d = palloc(sizeof(Datum) * Max(n, 1));
	int64		i;

	for (i = 0; i < n; i++)
		d[i] = Int32GetDatum(v[i]);
	return construct_array(d, (int) n, INT4OID, 4, true, TYPALIGN_INT);
}

ArrayType *
pgllm_int4_array_build(const int32 *v, int64 n)
{
	return int4_array(v, n);
}

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
	PG_RETURN_ARRAYTYPE_P(int4_array(ids, n));
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
