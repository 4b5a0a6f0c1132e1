/*
 * pg_llm.c -- module entry: settings, the OpenMP pool, helpers shared by the
 * fmgr wrappers (argument checks with SQLSTATEs, tensor allocation).
 */
#include "pg_llm.h"

#include <limits.h>
#include <sched.h>
#include <signal.h>
#include <pthread.h>
#include <sys/mman.h>
#include <omp.h>

#include "catalog/pg_type.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/lsyscache.h"
#include "utils/tuplestore.h"
#include "catalog/pg_authid.h"
#include "storage/fd.h"
#include "utils/acl.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

PGLLM_MODULE_MAGIC;

void		_PG_init(void);

int			pgllm_num_threads = 0;
char	   *pgllm_default_model = NULL;
int			pgllm_model_cache_mb = 8192;
int			pgllm_max_memory_mb = 8192;
int			pgllm_max_batch_size = 32;

const int  *pgllm_cancel = NULL;

/* largest team spawned so far with signals blocked */
static int	pool_threads_started = 0;

/* the CPUs this process may run on, as OpenMP counts them (its affinity) */
static int
cpus_available(void)
{
	cpu_set_t	set;

	if (sched_getaffinity(0, sizeof(set), &set) == 0)
		return Max(CPU_COUNT(&set), 1);
	return Max((int) sysconf(_SC_NPROCESSORS_ONLN), 1);
}

/* more threads than CPUs only spin: capped, and said so */
static bool
check_num_threads(int *newval, void **extra, GucSource source)
{
	int			cpus = cpus_available();

	if (*newval > cpus)
	{
		ereport(source >= PGC_S_INTERACTIVE ? WARNING : LOG,
				(errmsg("pg_llm.num_threads %d is more than the %d CPUs this server may use: set to %d",
						*newval, cpus, cpus)));
		*newval = cpus;
	}
	return true;
}

void
_PG_init(void)
{
	/*
	 * Only settings here: this may run in the postmaster (preloaded), where
	 * an OpenMP region would leave a thread pool that every forked backend
	 * inherits without its threads, and deadlocks.
	 */
	DefineCustomIntVariable("pg_llm.num_threads",
							"OpenMP threads used by this session's kernels.",
							"0 uses every CPU the server may run on; more than that is capped, with a warning.",
							&pgllm_num_threads, 0, 0, 1024,
							PGC_USERSET, 0, check_num_threads, NULL, NULL);
	DefineCustomStringVariable("pg_llm.default_model",
							   "Model used when a function is given none.",
							   NULL, &pgllm_default_model, "gpt2-small",
							   PGC_USERSET, 0, NULL, NULL, NULL);
	/* 8 GB: gpt2-xl (5.9 GB) and a smaller model fit, shared by every backend */
	DefineCustomIntVariable("pg_llm.model_cache_mb",
							"Server-wide bound of the shared cache of model weights and tokenizers (files in the data directory).",
							"A backend that cannot use the shared cache keeps a private copy, under the same bound.",
							&pgllm_model_cache_mb, 8192, 0, INT_MAX / 2,
							PGC_SIGHUP, GUC_UNIT_MB, NULL, NULL, NULL);
	DefineCustomIntVariable("pg_llm.max_memory_mb",
							"Largest memory pg_llm buffers may take in a backend at once (activations, KV caches, training state), besides the model cache.",
							NULL, &pgllm_max_memory_mb, 8192, 1, INT_MAX / 2,
							PGC_SUSET, GUC_UNIT_MB, NULL, NULL, NULL);
	DefineCustomIntVariable("pg_llm.max_batch_size",
							"Largest number of sequences llm_generate_batch decodes together.",
							"The batch is also bounded by pg_llm.max_memory_mb (a KV cache per sequence).",
							&pgllm_max_batch_size, 32, 1, 1024,
							PGC_USERSET, 0, NULL, NULL, NULL);
	pgllm_reserve_guc_prefix("pg_llm");
}

/* ---------------------------------------------------------------------------
 * threads
 * ------------------------------------------------------------------------- */
void
pgllm_threads_prepare(void)
{
	/* never more threads than CPUs: oversubscribed OpenMP teams only spin */
	int			procs = omp_get_num_procs();
	int			want = pgllm_num_threads > 0 ? Min(pgllm_num_threads, procs) : procs;

	omp_set_num_threads(want);
	if (want > pool_threads_started)
	{
		sigset_t	all,
					old;

		/*
		 * libgomp keeps its pool and new threads inherit the creating
		 * thread's signal mask: spawning the team once under a full mask is
		 * enough (again whenever the team grows).
		 */
		sigfillset(&all);
		pthread_sigmask(SIG_BLOCK, &all, &old);
		(void) pgllm_omp_team_size();
		pthread_sigmask(SIG_SETMASK, &old, NULL);
		pool_threads_started = want;
	}
}

void
pgllm_kernel_status(int status, const char *what)
{
	switch (status)
	{
		case PGLLM_OK:
			return;
		case PGLLM_ENOMEM:
			ereport(ERROR,
					(errcode(ERRCODE_OUT_OF_MEMORY),
					 errmsg("pg_llm: out of memory for kernel scratch space")));
			break;
		case PGLLM_INTERRUPTED:
			/* interrupts can't be serviced here (held off): rerun gave up */
			ereport(ERROR,
					(errcode(ERRCODE_QUERY_CANCELED),
					 errmsg("pg_llm: kernel interrupted")));
			break;
		default:
			ereport(ERROR,
					(errcode(ERRCODE_INTERNAL_ERROR),
					 errmsg("pg_llm: kernel failed with status %d", status),
					 errdetail("%s", what)));
	}
}

/* ---------------------------------------------------------------------------
 * tensors
 * ------------------------------------------------------------------------- */
int64
pgllm_tensor_len(bytea *b, const char *argname)
{
	Size		len = VARSIZE_ANY_EXHDR(b);

	if (len % sizeof(float) != 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_BINARY_REPRESENTATION),
				 errmsg("%s is not a float32 tensor: its length %zu is not a multiple of 4",
						argname, len)));
	return (int64) (len / sizeof(float));
}

const float *
pgllm_tensor_data(bytea *b, int64 expect, const char *argname, const char *shape)
{
	int64		n = pgllm_tensor_len(b, argname);

	if (n != expect)
		ereport(ERROR,
				(errcode(ERRCODE_DATA_EXCEPTION),
				 errmsg("%s holds %lld float32 values, but its shape %s needs %lld",
						argname, (long long) n, shape, (long long) expect)));
	return (const float *) VARDATA_ANY(b);
}

int64
pgllm_shape_size(const char *what, int ndims, const int32 *dims, const char *const *names)
{
	int64		n = 1;
	int			i;

	for (i = 0; i < ndims; i++)
	{
		if (dims[i] <= 0)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("%s: dimension %s must be positive, got %d",
							what, names[i], dims[i])));
		/* dims are < 2^31, so n * dims[i] can't overflow while n <= limit */
		n *= dims[i];
		if (n > PGLLM_MAX_TENSOR_ELEMS)
			ereport(ERROR,
					(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
					 errmsg("%s: tensor of shape too large", what),
					 errdetail("A float32 tensor in a bytea holds at most %lld values.",
							   (long long) PGLLM_MAX_TENSOR_ELEMS)));
	}
	return n;
}

bytea *
pgllm_new_tensor(int64 n, float **data)
{
	bytea	   *out;

	if (n < 0 || n > PGLLM_MAX_TENSOR_ELEMS)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("pg_llm: result tensor of %lld values exceeds the bytea limit",
						(long long) n)));
	if ((int64) (n * sizeof(float) / (1024 * 1024)) > pgllm_max_memory_mb)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("pg_llm: result tensor of %lld MB exceeds pg_llm.max_memory_mb (%d MB)",
						(long long) (n * sizeof(float) / (1024 * 1024)), pgllm_max_memory_mb)));
	out = (bytea *) palloc(VARHDRSZ + n * sizeof(float));
	SET_VARSIZE(out, VARHDRSZ + n * sizeof(float));
	*data = (float *) VARDATA(out);
	return out;
}

void
pgllm_require_finite(const float *x, int64 n, const char *argname)
{
	if (n > 0 && !pgllm_all_finite(x, n))
		ereport(ERROR,
				(errcode(ERRCODE_FLOATING_POINT_EXCEPTION),
				 errmsg("%s contains NaN or Infinity", argname),
				 errhint("pg_llm's arithmetic ops reject non-finite inputs rather than return NaN.")));
}

/* a seed for sampling and dropout when the caller gives none */
uint64
pgllm_random_seed(void)
{
	uint64		seed;

	if (!pg_strong_random(&seed, sizeof(seed)))
		ereport(ERROR,
				(errcode(ERRCODE_INTERNAL_ERROR),
				 errmsg("pg_llm: could not generate a random seed")));
	return seed;
}

/* ---------------------------------------------------------------------------
 * Working memory, bounded by pg_llm.max_memory_mb
 *
 * Every large buffer (activations, KV caches, logits, training state, data)
 * comes from pgllm_alloc_bytes, which counts what this backend holds at once
 * -- the buffers of the running call plus a training state kept between
 * calls; the model cache has its own bound -- and refuses with an ERROR
 * what would go past the setting, before the operating system is asked.
 * The count of each memory context is given back by a reset callback when
 * the context goes (at the end of a call, or of a training state), or by
 * pgllm_free earlier.
 * ------------------------------------------------------------------------- */
typedef struct MemAccount
{
	MemoryContextCallback cb;
	MemoryContext ctx;
	int64		bytes;
	struct MemAccount *next;
} MemAccount;

static MemAccount *accounts = NULL;
static int64 mem_in_use = 0;

static void
account_release(void *arg)
{
	MemAccount *a = (MemAccount *) arg;
	MemAccount **pp;

	mem_in_use -= a->bytes;
	for (pp = &accounts; *pp; pp = &(*pp)->next)
		if (*pp == a)
		{
			*pp = a->next;
			break;
		}
}

static MemAccount *
account_of(MemoryContext ctx)
{
	MemAccount *a;

	for (a = accounts; a; a = a->next)
		if (a->ctx == ctx)
			return a;
	a = MemoryContextAllocZero(ctx, sizeof(MemAccount));
	a->ctx = ctx;
	a->cb.func = account_release;
	a->cb.arg = a;
	MemoryContextRegisterResetCallback(ctx, &a->cb);
	a->next = accounts;
	accounts = a;
	return a;
}

int64
pgllm_memory_in_use(void)
{
	return mem_in_use;
}

void *
pgllm_alloc_bytes(int64 bytes, const char *what)
{
	int64		limit = (int64) pgllm_max_memory_mb * 1024 * 1024;
	void	   *ptr;
	MemAccount *a;

	if (bytes < 0 || bytes > (int64) (SIZE_MAX / 2))
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("pg_llm: %s: size overflow", what)));
	if (bytes > limit - mem_in_use)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("pg_llm: %s needs %.1f MB, and with the %.1f MB already in use that is more than pg_llm.max_memory_mb (%d MB)",
						what, bytes / 1048576.0, mem_in_use / 1048576.0,
						pgllm_max_memory_mb),
				 errhint("Use a smaller batch, context or model, or have a superuser raise pg_llm.max_memory_mb.")));
	a = account_of(CurrentMemoryContext);
	ptr = MemoryContextAllocHuge(CurrentMemoryContext, bytes > 0 ? bytes : 1);
	a->bytes += bytes;
	mem_in_use += bytes;
#ifdef MADV_HUGEPAGE
	/*
	 * Large buffers (weights, activations, logits) are walked by every step:
	 * with transparent huge pages in "madvise" mode they need asking for.
	 * Untouched yet, so the whole 2 MB pieces inside get huge pages.
	 */
	if (bytes >= 4 * 1024 * 1024)
	{
		uintptr_t	start = TYPEALIGN(4096, (uintptr_t) ptr);
		uintptr_t	end = TYPEALIGN_DOWN(4096, (uintptr_t) ptr + bytes);

		(void) madvise((void *) start, end - start, MADV_HUGEPAGE);
	}
#endif
	return ptr;
}

float *
pgllm_alloc_floats(int64 n, const char *what)
{
	if (n < 0 || n > (int64) (SIZE_MAX / sizeof(float) / 2))
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("pg_llm: %s: size overflow", what)));
	return (float *) pgllm_alloc_bytes(n * (int64) sizeof(float), what);
}

/* free a buffer of pgllm_alloc_bytes before its memory context goes */
void
pgllm_free(void *ptr, int64 bytes)
{
	MemAccount *a = account_of(GetMemoryChunkContext(ptr));

	a->bytes -= bytes;
	mem_in_use -= bytes;
	pfree(ptr);
}

/*
 * Zero a large buffer in slices, answering interrupts between them: the
 * first touch of fresh memory faults its pages in (measured here: 1 s for
 * 0.5 GB), which must not delay a cancel.
 */
void
pgllm_zero_floats(float *p, int64 n)
{
	const int64 slice = (int64) 8 * 1024 * 1024;	/* 32 MB */
	int64		i;

	for (i = 0; i < n; i += slice)
	{
		memset(p + i, 0, Min(slice, n - i) * sizeof(float));
		CHECK_FOR_INTERRUPTS();
	}
}

static void
pgllm_array_check(ArrayType *arr, const char *argname)
{
	if (ARR_NDIM(arr) > 1)
		ereport(ERROR,
				(errcode(ERRCODE_ARRAY_SUBSCRIPT_ERROR),
				 errmsg("%s must be a one-dimensional array", argname)));
	if (array_contains_nulls(arr))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("%s must not contain NULL elements", argname)));
}

float *
pgllm_float4_array(ArrayType *arr, int64 *n, const char *argname)
{
	pgllm_array_check(arr, argname);
	if (ARR_ELEMTYPE(arr) != FLOAT4OID)
		ereport(ERROR,
				(errcode(ERRCODE_DATATYPE_MISMATCH),
				 errmsg("%s must be a float4[] array", argname)));
	*n = ArrayGetNItems(ARR_NDIM(arr), ARR_DIMS(arr));
	return (float *) ARR_DATA_PTR(arr);
}

int32 *
pgllm_int4_array(ArrayType *arr, int64 *n, const char *argname)
{
	pgllm_array_check(arr, argname);
	if (ARR_ELEMTYPE(arr) != INT4OID)
		ereport(ERROR,
				(errcode(ERRCODE_DATATYPE_MISMATCH),
				 errmsg("%s must be an int4[] array", argname)));
	*n = ArrayGetNItems(ARR_NDIM(arr), ARR_DIMS(arr));
	return (int32 *) ARR_DATA_PTR(arr);
}

ArrayType *
pgllm_int4_array_result(const int32 *v, int64 n, const char *what)
{
	ArrayType  *a;
	Size		bytes;

	if (n < 0 || n > PGLLM_MAX_INT4_ARRAY)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("%s: %lld values are more than an int[] holds (%lld)", what,
						(long long) n, (long long) PGLLM_MAX_INT4_ARRAY)));
	if (n == 0)
		return construct_empty_array(INT4OID);
	bytes = ARR_OVERHEAD_NONULLS(1) + (Size) n * sizeof(int32);
	a = (ArrayType *) palloc(bytes);
	SET_VARSIZE(a, bytes);
	a->ndim = 1;
	a->dataoffset = 0;
	a->elemtype = INT4OID;
	ARR_DIMS(a)[0] = (int) n;
	ARR_LBOUND(a)[0] = 1;
	memcpy(ARR_DATA_PTR(a), v, (Size) n * sizeof(int32));
	return a;
}

ReturnSetInfo *
pgllm_materialized_srf(FunctionCallInfo fcinfo)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
#if PGLLM_HAVE_INIT_MATERIALIZED_SRF
	InitMaterializedSRF(fcinfo, 0);
#else
	TupleDesc	tupdesc;
	MemoryContext old;

	if (rsinfo == NULL || !IsA(rsinfo, ReturnSetInfo) ||
		!(rsinfo->allowedModes & SFRM_Materialize))
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("set-valued function called in context that cannot accept a set")));
	if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "return type must be a row type");
	old = MemoryContextSwitchTo(rsinfo->econtext->ecxt_per_query_memory);
	rsinfo->returnMode = SFRM_Materialize;
	rsinfo->setResult = tuplestore_begin_heap(true, false, work_mem);
	rsinfo->setDesc = CreateTupleDescCopy(tupdesc);
	MemoryContextSwitchTo(old);
#endif
	return rsinfo;
}

/* ---------------------------------------------------------------------------
 * server files
 * ------------------------------------------------------------------------- */
void
pgllm_require_file_role(bool write, const char *what)
{
	Oid			role = write ? ROLE_PG_WRITE_SERVER_FILES : ROLE_PG_READ_SERVER_FILES;

	if (!superuser() && !has_privs_of_role(GetUserId(), role))
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("permission denied to %s", what),
				 errdetail("Only superusers and roles with privileges of the \"%s\" role may %s.",
						   write ? "pg_write_server_files" : "pg_read_server_files", what)));
}

/* a path the file system would refuse for its length: a plain ERROR first */
void
pgllm_check_path(const char *path)
{
	const char *p = path;
	size_t		component = 0;

	if (strlen(path) >= MAXPGPATH)
		ereport(ERROR,
				(errcode(ERRCODE_NAME_TOO_LONG),
				 errmsg("file path is too long (%zu bytes; at most %d)", strlen(path), MAXPGPATH - 1)));
	for (; *p; p++)
	{
		component = (*p == '/') ? 0 : component + 1;
		if (component > NAME_MAX)
			ereport(ERROR,
					(errcode(ERRCODE_NAME_TOO_LONG),
					 errmsg("a file name in the path is longer than %d bytes", NAME_MAX)));
	}
	if (path[0] == '\0')
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("the file path is empty")));
}

int
pgllm_open_server_file(const char *path, int64 *size)
{
	int			fd;
	struct stat st;

	pgllm_require_file_role(false, "read server files");
	pgllm_check_path(path);

	/*
	 * Only regular files are read: O_NOFOLLOW refuses a symbolic link as the
	 * last component, and O_NONBLOCK keeps a FIFO (or a device) from blocking
	 * the open forever -- fstat then refuses it.
	 */
	fd = OpenTransientFile(path, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | PG_BINARY);
	if (fd < 0)
	{
		int			err = errno;

		if (err == ELOOP)
			ereport(ERROR,
					(errcode(ERRCODE_WRONG_OBJECT_TYPE),
					 errmsg("\"%s\" is a symbolic link, not a regular file", path),
					 errhint("pg_llm reads regular files only; give the path of the file itself.")));
		ereport(ERROR,
				(errcode_for_file_access(),
				 errmsg("could not open file \"%s\" for reading: %m", path)));
	}
	if (fstat(fd, &st) < 0)
		ereport(ERROR,
				(errcode_for_file_access(),
				 errmsg("could not stat file \"%s\": %m", path)));
	if (!S_ISREG(st.st_mode))
		ereport(ERROR,
				(errcode(ERRCODE_WRONG_OBJECT_TYPE),
				 errmsg("\"%s\" is not a regular file", path),
				 errdetail("It is a %s.", S_ISDIR(st.st_mode) ? "directory" :
						   S_ISFIFO(st.st_mode) ? "FIFO" : S_ISSOCK(st.st_mode) ? "socket" :
						   S_ISLNK(st.st_mode) ? "symbolic link" : "device"),
				 errhint("pg_llm reads regular files only.")));
	*size = (int64) st.st_size;
	return fd;
}

void
pgllm_read_exact(int fd, const char *path, int64 offset, void *buf, int64 len)
{
	char	   *p = buf;

	while (len > 0)
	{
		ssize_t		chunk = (ssize_t) Min(len, (int64) 64 * 1024 * 1024);
		ssize_t		got;

		CHECK_FOR_INTERRUPTS();
		got = pg_pread(fd, p, chunk, (off_t) offset);
		if (got < 0)
			ereport(ERROR,
					(errcode_for_file_access(),
					 errmsg("could not read file \"%s\": %m", path)));
		if (got == 0)
			ereport(ERROR,
					(errcode(ERRCODE_BAD_COPY_FILE_FORMAT),
					 errmsg("file \"%s\" is truncated: it ends at byte %lld", path,
							(long long) offset)));
		p += got;
		offset += got;
		len -= got;
	}
}

uint8 *
pgllm_read_server_file(const char *path, int64 max_bytes, int64 *len)
{
	int64		size;
	int			fd = pgllm_open_server_file(path, &size);
	uint8	   *buf;

	if (size > max_bytes)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("file \"%s\" is too large (%lld bytes, at most %lld)", path,
						(long long) size, (long long) max_bytes)));
	buf = MemoryContextAllocHuge(CurrentMemoryContext, size + 1);
	pgllm_read_exact(fd, path, 0, buf, size);
	buf[size] = '\0';
	CloseTransientFile(fd);
	*len = size;
	return buf;
}

/* pg_llm_info() -> text: build and run-time facts, for bug reports */
PG_FUNCTION_INFO_V1(pg_llm_info);
Datum
pg_llm_info(PG_FUNCTION_ARGS)
{
	int			team;

	pgllm_threads_prepare();
	team = pgllm_omp_team_size();
	PG_RETURN_TEXT_P(cstring_to_text(psprintf("pg_llm %s; threads %d; simd %s",
											  PG_LLM_VERSION, team,
											  pgllm_cpu_has_avx512() ? "avx512" : "avx2")));
}
