/*
 * pg_llm.h -- what the shim files share.
 *
 * The shims are thin fmgr wrappers: they validate arguments with precise
 * SQLSTATEs, fetch and cache data, call a Cython kernel (pg_llm_kernels.h)
 * and return.  They never compute; kernels never touch PostgreSQL.
 *
 * One file per concern, each opening with what it owns: catalog.c (tables,
 * the SPI helper), params.c + toast_read.c (parameters in llm_param),
 * model.c (the model cache), inference.c, generate.c, tokenizer.c,
 * dataset.c, train.c, weights_io.c, tensor_ops.c; pg_llm.c is the module
 * entry and settings.  Each SQL function's C entry is named in
 * ARCHITECTURE.md's map, with the kernels it calls.
 */
#ifndef PG_LLM_SHIM_H
#define PG_LLM_SHIM_H

#include "postgres.h"
#include "fmgr.h"
#include "funcapi.h"
#include "pg_compat.h"
#include "miscadmin.h"
#include "utils/array.h"
#include "utils/memutils.h"

#include <limits.h>

#include "pg_llm_kernels.h"

/* ---- settings (GUCs, pg_llm.c) ---- */
extern int	pgllm_num_threads;
extern char *pgllm_default_model;
extern int	pgllm_model_cache_mb;
extern int	pgllm_max_memory_mb;
extern int	pgllm_max_batch_size;

/* ---- threads and kernels ---- */

/*
 * Set the OpenMP team size for this session's next kernels, spawning any new
 * pool threads with every signal blocked so that PostgreSQL's signals always
 * reach the backend's main thread.
 */
extern void pgllm_threads_prepare(void);

/*
 * The cancel flag handed to kernels: &InterruptPending while interrupts can
 * be serviced, NULL otherwise.  Set by PGLLM_KERNEL around each call.
 */
extern const int *pgllm_cancel;

/* Turn a kernel's status into an ERROR (PGLLM_OK returns). */
extern void pgllm_kernel_status(int status, const char *what);

/*
 * Run restartable kernel work: the body (the arguments after rc) is one or
 * more statements that set rc to a kernel status, passing pgllm_cancel as
 * the cancel flag.  When they stop on an interrupt, CHECK_FOR_INTERRUPTS() services it: a cancel
 * or timeout raises ERROR; a harmless interrupt (catch-up, barrier, ...)
 * returns and the body runs again from the start -- so it must write its
 * outputs, not accumulate into them (or zero them first, inside the body).
 * Several kernel calls that must restart together go in one body.
 */
#define PGLLM_RESTARTABLE(rc, ...) \
	do { \
		pgllm_threads_prepare(); \
		for (;;) \
		{ \
			CHECK_FOR_INTERRUPTS(); \
			pgllm_cancel = (INTERRUPTS_CAN_BE_PROCESSED() && !InterruptPending) ? \
				(const int *) &InterruptPending : NULL; \
			__VA_ARGS__; \
			pgllm_cancel = NULL; \
			if ((rc) != PGLLM_INTERRUPTED) \
				break; \
		} \
	} while (0)

/* One restartable kernel call; any status but PGLLM_OK is an ERROR. */
#define PGLLM_KERNEL(expr) \
	do { \
		int			pgllm_rc_; \
		PGLLM_RESTARTABLE(pgllm_rc_, pgllm_rc_ = (expr)); \
		pgllm_kernel_status(pgllm_rc_, #expr); \
	} while (0)

/* ---- tensors as float32 bytea ---- */

/* most elements of an int[] pg_llm returns (within MaxAllocSize too) */
#define PGLLM_MAX_INT4_ARRAY ((int64) MaxArraySize)

/* Largest tensor a bytea can hold (1 GB varlena limit) */
#define PGLLM_MAX_TENSOR_ELEMS ((int64) ((MaxAllocSize - VARHDRSZ) / sizeof(float)))

/* float count of a bytea argument; ERROR if its length is not a multiple of 4 */
extern int64 pgllm_tensor_len(bytea *b, const char *argname);

/* data of a bytea argument that must hold exactly `expect` floats */
extern const float *pgllm_tensor_data(bytea *b, int64 expect, const char *argname,
									  const char *shape);

/* product of dimensions given as SQL ints: each >= 1, product within limits */
extern int64 pgllm_shape_size(const char *what, int ndims, const int32 *dims,
							  const char *const *names);

/* a new zero-length-checked output tensor of n floats; *data points at it */
extern bytea *pgllm_new_tensor(int64 n, float **data);

/* ERROR (22P01) if a tensor holds NaN or Inf */
extern void pgllm_require_finite(const float *x, int64 n, const char *argname);
extern uint64 pgllm_random_seed(void);

/* a float4[] argument flattened (no NULL elements) */
extern float *pgllm_float4_array(ArrayType *arr, int64 *n, const char *argname);

/* an int4[] argument flattened (no NULL elements) */
extern int32 *pgllm_int4_array(ArrayType *arr, int64 *n, const char *argname);

/* a one-dimensional int4[] of n values; ERROR (54000) beyond what an array
 * holds, before anything is allocated */
extern ArrayType *pgllm_int4_array_result(const int32 *v, int64 n, const char *what);

/* set up a materialized set-returning function (InitMaterializedSRF on 15+) */
extern ReturnSetInfo *pgllm_materialized_srf(FunctionCallInfo fcinfo);

/* ERROR unless the user may read (write) server files: superuser or member
 * of pg_read_server_files (pg_write_server_files) */
extern void pgllm_require_file_role(bool write, const char *what);

/* a server file opened for reading (privilege checked), with its size */
extern void pgllm_zero_floats(float *p, int64 n);
extern void pgllm_check_path(const char *path);
extern int	pgllm_open_server_file(const char *path, int64 *size);

/* read exactly len bytes at offset, or ERROR (truncated, I/O error) */
extern void pgllm_read_exact(int fd, const char *path, int64 offset, void *buf, int64 len);

/* a whole server file (privilege checked), NUL-terminated */
extern uint8 *pgllm_read_server_file(const char *path, int64 max_bytes, int64 *len);

/* scratch allocation of n floats (huge allocations allowed), within max_memory_mb */
extern float *pgllm_alloc_floats(int64 n, const char *what);
/* large buffers, counted against pg_llm.max_memory_mb (see pg_llm.c) */
extern void *pgllm_alloc_bytes(int64 bytes, const char *what);
extern void pgllm_free(void *ptr, int64 bytes);
extern int64 pgllm_memory_in_use(void);

/* ---- the model cache (model.c) ---- */

/* A model's parameters cached in this backend: one aligned buffer in the
 * kernels' layout, keyed by (name, version).  Pinned while in use. */
/* ---- the shared cache (shared_cache.c) ---- */

/* a cache file mapped read-only, with a shared lock held */
typedef struct PgllmSharedFile
{
	void	   *base;			/* the mapping (NULL: none) */
	size_t		len;
	int			fd;				/* holds the shared flock */
	const void *data;			/* the contents, after the header */
	int64		data_len;
	char		path[MAXPGPATH];
} PgllmSharedFile;

/* what a cache file holds: one format of one version of one model of this
 * database's llm_model_config */
#define PGLLM_CACHE_FLOAT32		"float32"	/* the weights, in the kernels' layout */
#define PGLLM_CACHE_TOKENIZER	"tokenizer" /* the built tokenizer's image */
typedef struct PgllmCacheKey
{
	const char *model;
	const char *format;			/* PGLLM_CACHE_* */
	Oid			config_table;	/* llm_model_config's OID */
	int64		version;		/* version, or tokenizer_version */
	int64		stamp;			/* what tells a version number handed out again apart:
								 * the config row's updated_at (weights), the xmin
								 * of the vocabulary's first row (tokenizer) */
	bool		best_effort;	/* a small file: no room is NO_ROOM, never an ERROR,
								 * and only files of its own format make room */
} PgllmCacheKey;

/* writes the data_len bytes of a new cache file at dst; ERROR on failure */
typedef void (*PgllmCacheFill) (void *dst, int64 data_len, void *arg);

typedef enum PgllmSharedResult
{
	PGLLM_SHARED_MAPPED,		/* out holds the mapping */
	PGLLM_SHARED_UNAVAILABLE,	/* no file can be had (a WARNING said why) */
	PGLLM_SHARED_NO_ROOM		/* pg_llm.model_cache_mb is full of files in use */
} PgllmSharedResult;

/* map the file of key, built with fill (data_len bytes) when missing or
 * invalid */
extern PgllmSharedResult pgllm_shared_map(const PgllmCacheKey *key, int64 data_len,
										  PgllmCacheFill fill, void *arg, PgllmSharedFile *out);
/* map the file of key if a valid one exists (of any size); never builds */
extern bool pgllm_shared_open(const PgllmCacheKey *key, PgllmSharedFile *out);
/* pg_llm.model_cache_mb in bytes; ERROR (54000) if a model of `need` bytes
 * can never fit (the shared cache and private copies share the bound) */
extern int64 pgllm_model_cache_limit(const char *model, int64 need);
/* the ERROR (54000) of PGLLM_SHARED_NO_ROOM */
extern pg_noreturn void pgllm_shared_no_room(const char *model, int64 data_len);
/* unmap; outdated: a newer version exists, so remove the file if nobody
 * else maps it */
extern void pgllm_shared_unmap(PgllmSharedFile *w, bool outdated);
/* remove the model's files in this database that nobody maps (llm_drop_model) */
extern void pgllm_shared_forget(const char *model);

typedef struct PgllmModel
{
	char	   *name;
	int64		version;
	PgllmGPT2Config cfg;
	const float *params;		/* pgllm_gpt2_param_sizes() floats */
	int64		nfloats;
	PgllmSharedFile shared;		/* shared.base != NULL: params are mapped */
	void	   *alloc;			/* else the private copy, to free */
	int			pins;
	bool		stale;			/* a newer version exists: free when unpinned */
	uint64		last_used;
	int64		hits;			/* calls served from the cache */
	struct PgllmModel *next;
} PgllmModel;

/* the model's parameters, loaded or from the cache, pinned until release */
extern PgllmModel *pgllm_model_acquire(const char *name);
extern void pgllm_model_release(PgllmModel *m);

/* ---- the catalog (catalog.c) ---- */

/*
 * Every statement pg_llm runs goes between pgllm_spi_begin (SPI_connect, and
 * search_path pinned to "pg_catalog, pg_temp") and pgllm_spi_end(level).
 * pgllm_spi_exec runs one statement with parameters and returns the rows
 * processed; ERROR unless SPI answers `expect` (SPI_OK_SELECT, ...).
 * Between the two, palloc takes SPI's memory, which goes at pgllm_spi_end:
 * what must outlive the statement is allocated in the caller's context.
 */
extern int	pgllm_spi_begin(void);
extern void pgllm_spi_end(int level);
extern uint64 pgllm_spi_exec(const char *sql, int nargs, const Oid *types, const Datum *values,
							 const char *nulls, bool read_only, long limit, int expect);

/* ERROR (25006) on a standby: fn changes the database, the primary's job */
extern void pgllm_require_primary(const char *fn);

/* schema-qualified name of one of the extension's tables ("llm_param" ->
 * "\"public\".llm_param"), immune to search_path */
extern const char *pgllm_table(const char *table);

/* the width's column of llm_model_config: n_embd (d_model before 0.3.0) */
extern const char *pgllm_embd_column(void);

/* SQL for the next model version: a qualified nextval of the sequence */
extern const char *pgllm_next_version_sql(void);

/* the model name argument, or pg_llm.default_model when it is NULL */
extern char *pgllm_model_name_arg(FunctionCallInfo fcinfo, int argno);

/* read a model's configuration; ERROR if it does not exist */
extern void pgllm_model_config(const char *name, PgllmGPT2Config *cfg, int64 *version);
/* and the row's identity: the table's OID (new at each CREATE EXTENSION),
 * updated_at (set with every new version: a version number the sequence
 * hands out again, after a restore's setval, comes with another time), and
 * whether this transaction wrote the row (its version may never commit) */
extern void pgllm_model_config_row(const char *name, PgllmGPT2Config *cfg, int64 *version,
								   Oid *table, int64 *updated_at, bool *written_here);

/* does the model have a configuration row / parameter rows? */
extern bool pgllm_model_exists(const char *name);
extern bool pgllm_model_has_params(const char *name);

/* insert or update a model's configuration row (the table's CHECKs validate);
 * reset_step: its train_step starts again from 0 (new weights) */
extern void pgllm_config_upsert(const char *name, const PgllmGPT2Config *cfg, bool reset_step);

/* ERROR unless a configuration is in range and n_head divides n_embd */
extern void pgllm_config_check(const PgllmGPT2Config *cfg, const char *fn);

/* take a new version number for a model (after its parameters changed) */
extern int64 pgllm_model_bump_version(const char *name);

/* ---- parameters in llm_param (params.c) ---- */

/* read one column (data, m or v) of every parameter tensor into a buffer in
 * the kernels' layout; returns false if the model has none of that column */
extern bool pgllm_params_read(const char *name, const PgllmGPT2Config *cfg,
							  const char *column, float *dest);

/* a parameter buffer (n floats) that pgllm_params_write can write from */
extern float *pgllm_alloc_params(int64 n, const char *what);

/* write every tensor of a model from buffers made by pgllm_alloc_params
 * (their contents are unchanged afterwards); m and v may be NULL; replace:
 * the model's rows are deleted and inserted, else updated.  Takes a new
 * version. */
extern void pgllm_params_write(const char *name, const PgllmGPT2Config *cfg, float *params,
							   float *m, float *v, bool replace);

/*
 * HuggingFace name (with or without "transformer.") -> tensor kind, layer,
 * and the shape tables and kernels use (rows, cols; cols = 1 for vectors).
 * hf_transposed: HuggingFace's Conv1D stores this tensor as (cols, rows).
 * False for a name GPT-2 with this configuration does not have.
 */
extern bool pgllm_param_lookup(const PgllmGPT2Config *cfg, const char *name, int *kind,
							   int *layer, int64 *rows, int64 *cols, bool *hf_transposed);

/* number of parameter tensors, and the name / kind / layer of tensor i */
extern int	pgllm_param_count(const PgllmGPT2Config *cfg);
extern char *pgllm_param_name(const PgllmGPT2Config *cfg, int i, int *kind, int *layer);

/* a tensor's shape as llm_param keeps it: int[] {rows} or {rows, cols} */
extern Datum pgllm_shape_datum(int64 rows, int64 cols);

/* where tensor (kind, layer) starts in the kernels' buffer, and its floats */
extern int64 pgllm_param_offset(const PgllmGPT2Config *cfg, int kind, int layer,
								int64 *count);

/* ---- TOAST (toast_read.c) ---- */
typedef struct PgllmToastTarget
{
	Oid			valueid;
	char	   *dest;
	int64		size;
	int64		got;
	int64		chunks;
} PgllmToastTarget;

/* an uncompressed external value: its TOAST relation, value id and size */
extern bool pgllm_toast_external(Datum d, Oid *toastrelid, Oid *valueid, int64 *size);

/* copy the targets' values into their dest with one scan; false: not done,
 * detoast them instead */
extern bool pgllm_toast_fetch_many(Oid toastrelid, PgllmToastTarget *targets, int n);

/* ---- datasets (dataset.c) ---- */

/* the rows of one split of a dataset, in id order, in one counted buffer */
typedef struct PgllmSplit
{
	int32	   *tokens;			/* n_rows x row_len */
	int32	   *targets;		/* n_rows x row_len, in the same allocation */
	int64		n_rows;
	int64		row_len;
	int64		alloc_bytes;
} PgllmSplit;

/* the dataset a call means: given (ERROR listing the datasets if it has no
 * rows), or when NULL "default", else the only dataset there is */
extern char *pgllm_dataset_resolve(const char *given, const char *fn);

/* load a split into ctx (tokens checked against cfg); free it */
extern void pgllm_split_load(const char *dataset, const char *split, PgllmSplit *out,
							 MemoryContext ctx, const PgllmGPT2Config *cfg);
extern void pgllm_split_free(PgllmSplit *s);

/* ---- tokenizer (tokenizer.c) ---- */

/* the model's tokenizer (mapped from the server's cache file, or this
 * backend's own); valid until the transaction ends; ERROR if it has none */
extern PgllmBPE *pgllm_tokenizer_get(const char *model);
/* let the model's tokenizers go when the transaction ends */
extern void pgllm_tokenizer_forget(const char *model);

/* server-encoded text -> token ids (palloc'd) */
extern int32 *pgllm_encode_text(PgllmBPE *bpe, const char *str, int len, int64 *ntokens);

/* ids -> server-encoded text; invalid UTF-8 becomes U+FFFD; with
 * hold_incomplete, trailing bytes of an unfinished character are left out
 * and counted in *held */
extern char *pgllm_decode_text(PgllmBPE *bpe, const int32 *ids, int64 n, bool hold_incomplete,
							   int64 *held);


/* ---- per-backend counters (pg_llm_backend_stats) ---- */
typedef struct PgllmStats
{
	int64		tokens_sampled;	/* tokens produced by generation */
	int64		model_loads;	/* models read from the tables */
	int64		cache_hits;		/* model requests served from the cache */
	int64		model_maps;		/* model versions mapped from the shared cache */
} PgllmStats;

extern PgllmStats pgllm_stats;

/* ---- inference (inference.c) ---- */

/* ERROR (22003) unless every token id lies in [0, vocab) */
extern void pgllm_check_tokens(const int32 *tokens, int64 n, const PgllmGPT2Config *cfg,
							   const char *fn, const char *what);

/* logits (T, vocab) of every position of one sequence (palloc'd) */
extern float *pgllm_forward_all(PgllmModel *m, const int32 *tokens, int64 T);

/* mean cross-entropy of targets[t] given tokens[0..t] */
extern double pgllm_sequence_loss(PgllmModel *m, const int32 *tokens, const int32 *targets,
								  int64 T);

#endif							/* PG_LLM_SHIM_H */
