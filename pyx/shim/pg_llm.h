/*
 * pg_llm.h -- what the shim files share.
 *
 * The shims are thin fmgr wrappers: they validate arguments with precise
 * SQLSTATEs, fetch and cache data, call a Cython kernel (pg_llm_kernels.h)
 * and return.  They never compute; kernels never touch PostgreSQL.
 */
#ifndef PG_LLM_SHIM_H
#define PG_LLM_SHIM_H

#include "postgres.h"
#include "fmgr.h"
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
 * Run a restartable kernel call `expr` (which passes pgllm_cancel as its
 * cancel flag).  When it stops on an interrupt, CHECK_FOR_INTERRUPTS()
 * services it: a cancel or timeout raises ERROR; a harmless interrupt
 * (catch-up, barrier, ...) returns and the kernel runs again from scratch.
 */
#define PGLLM_KERNEL(expr) \
	do { \
		int			pgllm_rc_; \
		pgllm_threads_prepare(); \
		for (;;) \
		{ \
			CHECK_FOR_INTERRUPTS(); \
			pgllm_cancel = (INTERRUPTS_CAN_BE_PROCESSED() && !InterruptPending) ? \
				(const int *) &InterruptPending : NULL; \
			pgllm_rc_ = (expr); \
			pgllm_cancel = NULL; \
			if (pgllm_rc_ != PGLLM_INTERRUPTED) \
				break; \
		} \
		pgllm_kernel_status(pgllm_rc_, #expr); \
	} while (0)

/* ---- tensors as float32 bytea ---- */

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

/* a float4[] argument flattened (no NULL elements) */
extern float *pgllm_float4_array(ArrayType *arr, int64 *n, const char *argname);

/* an int4[] argument flattened (no NULL elements) */
extern int32 *pgllm_int4_array(ArrayType *arr, int64 *n, const char *argname);

/* scratch allocation of n floats (huge allocations allowed), within max_memory_mb */
extern float *pgllm_alloc_floats(int64 n, const char *what);

#endif							/* PG_LLM_SHIM_H */
