/*
 * catalog.c -- the extension's tables as the shims see them: where they are
 * (the extension's schema), how SQL is run on them (one SPI helper), and
 * model configurations, versions and existence checks.
 *
 * Every statement pg_llm runs from C goes through pgllm_spi_begin/_end,
 * which pin search_path to "pg_catalog, pg_temp" for the statement's
 * duration: functions, operators and types then resolve in pg_catalog only,
 * whatever the caller's search_path and whatever other roles created in
 * schemas on it, and the extension's own tables are named schema-qualified
 * (pgllm_table).  Functions such as nextval are qualified as well, so a
 * statement stays safe even if it were run outside the helper.
 */
#include "pg_llm.h"

#include "access/xact.h"
#include "access/xlog.h"
#include "catalog/pg_type.h"
#include "commands/extension.h"
#include "executor/spi.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/lsyscache.h"
#include "utils/timestamp.h"

/* ---------------------------------------------------------------------------
 * SPI with a pinned search_path
 * ------------------------------------------------------------------------- */
#define PGLLM_SEARCH_PATH "pg_catalog, pg_temp"

int
pgllm_spi_begin(void)
{
	int			level;

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "pg_llm: SPI_connect failed");
	/* as a function's SET clause does: undone at pgllm_spi_end, or by the
	 * (sub)transaction's abort on ERROR */
	level = NewGUCNestLevel();
	(void) set_config_option("search_path", PGLLM_SEARCH_PATH, PGC_USERSET, PGC_S_SESSION,
							 GUC_ACTION_SAVE, true, 0, false);
	return level;
}

void
pgllm_spi_end(int level)
{
	AtEOXact_GUC(true, level);
	if (SPI_finish() != SPI_OK_FINISH)
		elog(ERROR, "pg_llm: SPI_finish failed");
}

uint64
pgllm_spi_exec(const char *sql, int nargs, const Oid *types, const Datum *values,
			   const char *nulls, bool read_only, long limit, int expect)
{
	int			rc = SPI_execute_with_args(sql, nargs, (Oid *) types, (Datum *) values, nulls,
										   read_only, limit);

	if (rc != expect)
		elog(ERROR, "pg_llm: internal statement failed (%s): %s", SPI_result_code_string(rc), sql);
	return SPI_processed;
}

/* ---------------------------------------------------------------------------
 * primaries and standbys
 * ------------------------------------------------------------------------- */
void
pgllm_require_primary(const char *fn)
{
	if (RecoveryInProgress())
		ereport(ERROR,
				(errcode(ERRCODE_READ_ONLY_SQL_TRANSACTION),
				 errmsg("%s cannot run on a standby: this server is read-only", fn),
				 errhint("Run it on the primary; its changes reach the standbys by replication.")));
}

/* pg_llm_require_primary(fn text): the same check for functions in SQL */
PG_FUNCTION_INFO_V1(pg_llm_require_primary);
Datum
pg_llm_require_primary(PG_FUNCTION_ARGS)
{
	pgllm_require_primary(text_to_cstring(PG_GETARG_TEXT_PP(0)));
	PG_RETURN_VOID();
}

/* ---------------------------------------------------------------------------
 * the extension's schema
 * ------------------------------------------------------------------------- */
static Oid	schema_ext_oid = InvalidOid;
static char *schema_quoted = NULL;
static Oid	schema_oid = InvalidOid;

const char *
pgllm_table(const char *table)
{
	Oid			ext = get_extension_oid("pg_llm", true);

	if (!OidIsValid(ext))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("extension pg_llm is not installed in this database")));
	if (ext != schema_ext_oid)
	{
		bool		isnull;
		Datum		nsp;
		int			spi = pgllm_spi_begin();

		if (pgllm_spi_exec("SELECT n.nspname::pg_catalog.text, n.oid FROM pg_catalog.pg_extension e "
						   "JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) e.extnamespace "
						   "WHERE e.oid OPERATOR(pg_catalog.=) $1",
						   1, (Oid[]) {OIDOID}, (Datum[]) {ObjectIdGetDatum(ext)},
						   NULL, true, 1, SPI_OK_SELECT) != 1)
			elog(ERROR, "pg_llm: could not find the extension's schema");
		nsp = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
		if (schema_quoted)
			pfree(schema_quoted);
		schema_quoted = MemoryContextStrdup(TopMemoryContext,
											quote_identifier(TextDatumGetCString(nsp)));
		schema_oid = DatumGetObjectId(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2,
													&isnull));
		pgllm_spi_end(spi);
		schema_ext_oid = ext;
	}
	return psprintf("%s.%s", schema_quoted, table);
}

/*
 * The width's column of llm_model_config: n_embd from 0.3.0 on, d_model
 * before.  A database keeps its extension version until ALTER EXTENSION
 * UPDATE, while the library is already the new one: asked of the catalog
 * each time (a syscache lookup), so an update in another session is seen.
 */
const char *
pgllm_embd_column(void)
{
	Oid			rel;

	(void) pgllm_table("llm_model_config");		/* the schema */
	rel = get_relname_relid("llm_model_config", schema_oid);
	return (OidIsValid(rel) && get_attnum(rel, "d_model") != InvalidAttrNumber) ? "d_model" : "n_embd";
}

/* "pg_catalog.nextval('<schema>.llm_model_version_seq'::pg_catalog.regclass)" */
const char *
pgllm_next_version_sql(void)
{
	return psprintf("pg_catalog.nextval(%s::pg_catalog.regclass)",
					quote_literal_cstr(pgllm_table("llm_model_version_seq")));
}

/* ---------------------------------------------------------------------------
 * model configurations
 * ------------------------------------------------------------------------- */
char *
pgllm_model_name_arg(FunctionCallInfo fcinfo, int argno)
{
	if (PG_NARGS() > argno && !PG_ARGISNULL(argno))
		return text_to_cstring(PG_GETARG_TEXT_PP(argno));
	if (pgllm_default_model == NULL || pgllm_default_model[0] == '\0')
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("no model given and pg_llm.default_model is not set")));
	return pstrdup(pgllm_default_model);
}

void
pgllm_model_config(const char *name, PgllmGPT2Config *cfg, int64 *version)
{
	pgllm_model_config_row(name, cfg, version, NULL, NULL, NULL);
}

void
pgllm_model_config_row(const char *name, PgllmGPT2Config *cfg, int64 *version, Oid *table,
					   int64 *updated_at, bool *written_here)
{
	HeapTuple	tup;
	TupleDesc	td;
	bool		isnull;
	char	   *sql = psprintf("SELECT n_layer, n_head, %s, n_positions, vocab, "
							   "layer_norm_eps, version, tableoid, xmin, updated_at FROM %s "
							   "WHERE model OPERATOR(pg_catalog.=) $1",
							   pgllm_embd_column(), pgllm_table("llm_model_config"));
	int			spi = pgllm_spi_begin();

	if (pgllm_spi_exec(sql, 1, (Oid[]) {TEXTOID}, (Datum[]) {CStringGetTextDatum(name)}, NULL,
					   true, 1, SPI_OK_SELECT) == 0)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("model \"%s\" does not exist", name),
				 errhint("See the llm_models view; create one with llm_create_model or import one with pg_llm_import_npz.")));
	tup = SPI_tuptable->vals[0];
	td = SPI_tuptable->tupdesc;
	cfg->n_layer = DatumGetInt32(SPI_getbinval(tup, td, 1, &isnull));
	cfg->n_head = DatumGetInt32(SPI_getbinval(tup, td, 2, &isnull));
	cfg->n_embd = DatumGetInt32(SPI_getbinval(tup, td, 3, &isnull));
	cfg->n_positions = DatumGetInt32(SPI_getbinval(tup, td, 4, &isnull));
	cfg->vocab = DatumGetInt32(SPI_getbinval(tup, td, 5, &isnull));
	cfg->eps = DatumGetFloat4(SPI_getbinval(tup, td, 6, &isnull));
	if (version)
		*version = DatumGetInt64(SPI_getbinval(tup, td, 7, &isnull));
	if (table)
		*table = DatumGetObjectId(SPI_getbinval(tup, td, 8, &isnull));
	if (written_here)
		*written_here = TransactionIdIsCurrentTransactionId(
			DatumGetTransactionId(SPI_getbinval(tup, td, 9, &isnull)));
	if (updated_at)
		*updated_at = DatumGetTimestampTz(SPI_getbinval(tup, td, 10, &isnull));
	pgllm_spi_end(spi);
}

int64
pgllm_model_bump_version(const char *name)
{
	bool		isnull;
	int64		version;
	char	   *sql = psprintf("UPDATE %s SET version = %s, updated_at = pg_catalog.now() "
							   "WHERE model OPERATOR(pg_catalog.=) $1 RETURNING version",
							   pgllm_table("llm_model_config"), pgllm_next_version_sql());
	int			spi = pgllm_spi_begin();

	if (pgllm_spi_exec(sql, 1, (Oid[]) {TEXTOID}, (Datum[]) {CStringGetTextDatum(name)}, NULL,
					   false, 1, SPI_OK_UPDATE_RETURNING) != 1)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("model \"%s\" does not exist", name)));
	version = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1,
										  &isnull));
	pgllm_spi_end(spi);
	return version;
}

/* does a row of `table` (an extension table with a model column) name it? */
static bool
model_row_exists(const char *table, const char *name)
{
	bool		found;
	int			spi = pgllm_spi_begin();

	found = pgllm_spi_exec(psprintf("SELECT 1 FROM %s WHERE model OPERATOR(pg_catalog.=) $1 LIMIT 1",
									pgllm_table(table)),
						   1, (Oid[]) {TEXTOID}, (Datum[]) {CStringGetTextDatum(name)},
						   NULL, true, 1, SPI_OK_SELECT) > 0;
	pgllm_spi_end(spi);
	return found;
}

bool
pgllm_model_exists(const char *name)
{
	return model_row_exists("llm_model_config", name);
}

bool
pgllm_model_has_params(const char *name)
{
	return model_row_exists("llm_param", name);
}

void
pgllm_config_upsert(const char *name, const PgllmGPT2Config *cfg, bool reset_step)
{
	int			spi;

	const char *embd = pgllm_embd_column();

	spi = pgllm_spi_begin();
	pgllm_spi_exec(psprintf("INSERT INTO %s AS c (model, n_layer, n_head, %s, n_positions, vocab) "
							"VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (model) DO UPDATE "
							"SET n_layer = EXCLUDED.n_layer, n_head = EXCLUDED.n_head, "
							"%s = EXCLUDED.%s, n_positions = EXCLUDED.n_positions, "
							"vocab = EXCLUDED.vocab, updated_at = pg_catalog.now()%s",
							pgllm_table("llm_model_config"), embd, embd, embd,
							reset_step ? ", train_step = 0" : ""),
				   6, (Oid[]) {TEXTOID, INT4OID, INT4OID, INT4OID, INT4OID, INT4OID},
				   (Datum[]) {CStringGetTextDatum(name), Int32GetDatum(cfg->n_layer),
					   Int32GetDatum(cfg->n_head), Int32GetDatum(cfg->n_embd),
					   Int32GetDatum(cfg->n_positions), Int32GetDatum(cfg->vocab)},
				   NULL, false, 0, SPI_OK_INSERT);
	pgllm_spi_end(spi);
}

void
pgllm_config_check(const PgllmGPT2Config *cfg, const char *fn)
{
	if (cfg->n_layer < 1 || cfg->n_layer > 256 || cfg->n_head < 1 || cfg->n_embd < 1 ||
		cfg->n_embd > 65536 || cfg->n_positions < 1 || cfg->n_positions > 1048576 ||
		cfg->vocab < 1 || cfg->vocab > 16777216)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s: configuration out of range (n_layer %lld, n_head %lld, n_embd %lld, n_positions %lld, vocab %lld)",
						fn, (long long) cfg->n_layer, (long long) cfg->n_head,
						(long long) cfg->n_embd, (long long) cfg->n_positions,
						(long long) cfg->vocab)));
	if (cfg->n_embd % cfg->n_head != 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s: n_head (%lld) must divide n_embd (%lld)", fn,
						(long long) cfg->n_head, (long long) cfg->n_embd)));
}
