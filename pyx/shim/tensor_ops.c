/*
 * tensor_ops.c -- SQL functions of the tensor ops and their gradients.
 *
 * Tensors are float32 bytea (little-endian, row-major) with explicit shapes.
 * Each wrapper checks every size and value before calling its kernel:
 *   22P03  a bytea whose length is not a multiple of 4
 *   22000  a tensor whose length does not match its shape or its operand
 *   22023  a shape or hyper-parameter outside its domain
 *   54000  a shape whose size overflows a bytea
 *   22003  a target id outside the vocabulary
 *   22P01  NaN or Infinity in an input of an arithmetic op
 */
#include "pg_llm.h"

#include <float.h>
#include <math.h>

#include "access/htup_details.h"
#include "catalog/pg_type.h"
#include "funcapi.h"
#include "port.h"
#include "utils/array.h"
#include "utils/builtins.h"

/* ---------------------------------------------------------------------------
 * helpers
 * ------------------------------------------------------------------------- */
static int64
shape2(const char *fn, int32 d0, const char *n0, int32 d1, const char *n1)
{
	int32		dims[2] = {d0, d1};
	const char *const names[] = {n0, n1};

	return pgllm_shape_size(fn, 2, dims, names);
}

/* a tensor argument of exactly n floats, checked finite */
static const float *
arith_arg(bytea *b, int64 n, const char *argname, const char *shape)
{
	const float *x = pgllm_tensor_data(b, n, argname, shape);

	pgllm_require_finite(x, n, argname);
	return x;
}

/* a tensor argument of any length, checked finite */
static const float *
arith_arg_any(bytea *b, int64 *n, const char *argname)
{
	*n = pgllm_tensor_len(b, argname);
	pgllm_require_finite((const float *) VARDATA_ANY(b), *n, argname);
	return (const float *) VARDATA_ANY(b);
}

static void
require_nonempty(int64 n, const char *fn, const char *argname)
{
	if (n == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s: %s is an empty tensor", fn, argname)));
}

static void
require_same_len(int64 a, int64 b, const char *fn, const char *an, const char *bn)
{
	if (a != b)
		ereport(ERROR,
				(errcode(ERRCODE_DATA_EXCEPTION),
				 errmsg("%s: %s and %s differ in size (%lld and %lld values)",
						fn, an, bn, (long long) a, (long long) b)));
}

static Datum
return_tensors(FunctionCallInfo fcinfo, int n, bytea **tensors)
{
	TupleDesc	tupdesc;
	Datum		values[8];
	bool		nulls[8];
	int			i;

	if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "pg_llm: function returning a record called in a context that cannot accept it");
	tupdesc = BlessTupleDesc(tupdesc);
	Assert(n <= 8 && tupdesc->natts == n);
	for (i = 0; i < n; i++)
	{
		values[i] = PointerGetDatum(tensors[i]);
		nulls[i] = false;
	}
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(tupdesc, values, nulls)));
}

static const char *
dims_str(int32 a, int32 b)
{
	return psprintf("(%d, %d)", a, b);
}

/* ---------------------------------------------------------------------------
 * matmul
 * ------------------------------------------------------------------------- */

/*
 * A non-finite value in an operand of a product reaches every output it
 * touches (x * Inf is Inf or NaN), so checking the output is enough to catch
 * one, at O(output) instead of O(operands) -- for one row times the
 * embedding matrix, reading the 154 MB operand a second time would double the
 * call.  The operands are scanned only when the output shows a problem, to
 * name the culprit; finite operands with a non-finite product overflowed.
 */
static void
product_finite(const float *out, int64 nout, int nargs, const float *const *args,
			   const int64 *lens, const char *const *names, const char *fn)
{
	int			i;

	if (nout == 0 || pgllm_all_finite(out, nout))
		return;
	for (i = 0; i < nargs; i++)
		pgllm_require_finite(args[i], lens[i], names[i]);
	ereport(ERROR,
			(errcode(ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE),
			 errmsg("%s: the result overflows float32", fn)));
}

/* pg_llm_matmul(a, b, m, k, n) -> (m, k) @ (k, n) */
PG_FUNCTION_INFO_V1(pg_llm_matmul);
Datum
pg_llm_matmul(PG_FUNCTION_ARGS)
{
	int32		m = PG_GETARG_INT32(2),
				k = PG_GETARG_INT32(3),
				n = PG_GETARG_INT32(4);
	int64		mk = shape2("pg_llm_matmul", m, "m", k, "k");
	int64		kn = shape2("pg_llm_matmul", k, "k", n, "n");
	int64		mn = shape2("pg_llm_matmul", m, "m", n, "n");
	const float *A = pgllm_tensor_data(PG_GETARG_BYTEA_P(0), mk, "a", dims_str(m, k));
	const float *B = pgllm_tensor_data(PG_GETARG_BYTEA_P(1), kn, "b", dims_str(k, n));
	float	   *C;
	bytea	   *out = pgllm_new_tensor(mn, &C);

	PGLLM_KERNEL(pgllm_gemm(PGLLM_NO_TRANS, PGLLM_NO_TRANS,
							m, n, k, A, k, B, n, C, n, NULL, PGLLM_OVERWRITE, pgllm_cancel));
	product_finite(C, mn, 2, (const float *const[]) {A, B}, (const int64[]) {mk, kn},
				   (const char *const[]) {"a", "b"}, "pg_llm_matmul");
	PG_RETURN_BYTEA_P(out);
}

/* pg_llm_matmul_backward(a, b, dy, m, k, n) -> (da = dy b^T, db = a^T dy) */
PG_FUNCTION_INFO_V1(pg_llm_matmul_backward);
Datum
pg_llm_matmul_backward(PG_FUNCTION_ARGS)
{
	int32		m = PG_GETARG_INT32(3),
				k = PG_GETARG_INT32(4),
				n = PG_GETARG_INT32(5);
	int64		mk = shape2("pg_llm_matmul_backward", m, "m", k, "k");
	int64		kn = shape2("pg_llm_matmul_backward", k, "k", n, "n");
	int64		mn = shape2("pg_llm_matmul_backward", m, "m", n, "n");
	const float *A = pgllm_tensor_data(PG_GETARG_BYTEA_P(0), mk, "a", dims_str(m, k));
	const float *B = pgllm_tensor_data(PG_GETARG_BYTEA_P(1), kn, "b", dims_str(k, n));
	const float *dY = pgllm_tensor_data(PG_GETARG_BYTEA_P(2), mn, "dy", dims_str(m, n));
	float	   *dA,
			   *dB;
	bytea	   *res[2];

	res[0] = pgllm_new_tensor(mk, &dA);
	res[1] = pgllm_new_tensor(kn, &dB);
	PGLLM_KERNEL(pgllm_gemm(PGLLM_NO_TRANS, PGLLM_TRANS,
							m, k, n, dY, n, B, n, dA, k, NULL, PGLLM_OVERWRITE, pgllm_cancel));
	PGLLM_KERNEL(pgllm_gemm(PGLLM_TRANS, PGLLM_NO_TRANS,
							k, n, m, A, k, dY, n, dB, n, NULL, PGLLM_OVERWRITE, pgllm_cancel));
	/* da involves dy and b, db involves a and dy */
	product_finite(dA, mk, 2, (const float *const[]) {dY, B}, (const int64[]) {mn, kn},
				   (const char *const[]) {"dy", "b"}, "pg_llm_matmul_backward");
	product_finite(dB, kn, 2, (const float *const[]) {A, dY}, (const int64[]) {mk, mn},
				   (const char *const[]) {"a", "dy"}, "pg_llm_matmul_backward");
	return return_tensors(fcinfo, 2, res);
}

/* ---------------------------------------------------------------------------
 * elementwise
 * ------------------------------------------------------------------------- */
PG_FUNCTION_INFO_V1(pg_llm_add);
Datum
pg_llm_add(PG_FUNCTION_ARGS)
{
	int64		na,
				nb;
	const float *a = arith_arg_any(PG_GETARG_BYTEA_P(0), &na, "a");
	const float *b = arith_arg_any(PG_GETARG_BYTEA_P(1), &nb, "b");
	float	   *y;
	bytea	   *out;

	require_same_len(na, nb, "pg_llm_add", "a", "b");
	out = pgllm_new_tensor(na, &y);
	PGLLM_KERNEL(pgllm_add(a, b, y, na));
	PG_RETURN_BYTEA_P(out);
}

PG_FUNCTION_INFO_V1(pg_llm_gelu);
Datum
pg_llm_gelu(PG_FUNCTION_ARGS)
{
	int64		n;
	const float *x = arith_arg_any(PG_GETARG_BYTEA_P(0), &n, "x");
	float	   *y;
	bytea	   *out = pgllm_new_tensor(n, &y);

	PGLLM_KERNEL(pgllm_gelu_forward(x, y, n, pgllm_cancel));
	PG_RETURN_BYTEA_P(out);
}

PG_FUNCTION_INFO_V1(pg_llm_gelu_backward);
Datum
pg_llm_gelu_backward(PG_FUNCTION_ARGS)
{
	int64		n,
				nd;
	const float *x = arith_arg_any(PG_GETARG_BYTEA_P(0), &n, "x");
	const float *dy = arith_arg_any(PG_GETARG_BYTEA_P(1), &nd, "dy");
	float	   *dx;
	bytea	   *out;

	require_same_len(n, nd, "pg_llm_gelu_backward", "x", "dy");
	out = pgllm_new_tensor(n, &dx);
	PGLLM_KERNEL(pgllm_gelu_backward(x, dy, dx, n, pgllm_cancel));
	PG_RETURN_BYTEA_P(out);
}

/* ---------------------------------------------------------------------------
 * softmax: pg_llm_softmax(x) is one row; pg_llm_softmax(x, rows, cols)
 * ------------------------------------------------------------------------- */
static void
rows_cols_args(FunctionCallInfo fcinfo, int argno, int64 n, const char *fn,
			   int64 *rows, int64 *cols)
{
	if (PG_NARGS() > argno)
	{
		int32		r = PG_GETARG_INT32(argno),
					c = PG_GETARG_INT32(argno + 1);

		if (shape2(fn, r, "rows", c, "cols") != n)
			ereport(ERROR,
					(errcode(ERRCODE_DATA_EXCEPTION),
					 errmsg("%s: the tensor holds %lld values, but its shape (%d, %d) needs %lld",
							fn, (long long) n, r, c, (long long) r * c)));
		*rows = r;
		*cols = c;
	}
	else
	{
		require_nonempty(n, fn, "x");
		*rows = 1;
		*cols = n;
	}
}

PG_FUNCTION_INFO_V1(pg_llm_softmax);
Datum
pg_llm_softmax(PG_FUNCTION_ARGS)
{
	int64		n,
				rows,
				cols;
	const float *x = arith_arg_any(PG_GETARG_BYTEA_P(0), &n, "x");
	float	   *y;
	bytea	   *out;

	rows_cols_args(fcinfo, 1, n, "pg_llm_softmax", &rows, &cols);
	out = pgllm_new_tensor(n, &y);
	PGLLM_KERNEL(pgllm_softmax_forward(x, y, rows, cols, pgllm_cancel));
	PG_RETURN_BYTEA_P(out);
}

PG_FUNCTION_INFO_V1(pg_llm_softmax_backward);
Datum
pg_llm_softmax_backward(PG_FUNCTION_ARGS)
{
	int64		n,
				nd,
				rows,
				cols;
	const float *y = arith_arg_any(PG_GETARG_BYTEA_P(0), &n, "y");
	const float *dy = arith_arg_any(PG_GETARG_BYTEA_P(1), &nd, "dy");
	float	   *dx;
	bytea	   *out;

	require_same_len(n, nd, "pg_llm_softmax_backward", "y", "dy");
	rows_cols_args(fcinfo, 2, n, "pg_llm_softmax_backward", &rows, &cols);
	out = pgllm_new_tensor(n, &dx);
	PGLLM_KERNEL(pgllm_softmax_backward(y, dy, dx, rows, cols, pgllm_cancel));
	PG_RETURN_BYTEA_P(out);
}

/* ---------------------------------------------------------------------------
 * layernorm over the last dimension: rows = len(x) / len(gamma)
 * ------------------------------------------------------------------------- */
static void
layernorm_shape(int64 nx, int64 ng, float eps, const char *fn, int64 *rows)
{
	require_nonempty(ng, fn, "gamma");
	if (nx == 0 || nx % ng != 0)
		ereport(ERROR,
				(errcode(ERRCODE_DATA_EXCEPTION),
				 errmsg("%s: x holds %lld values, not a positive multiple of len(gamma) = %lld",
						fn, (long long) nx, (long long) ng)));
	if (!(eps > 0) || isinf(eps))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s: eps must be a positive finite number, got %g", fn, eps)));
	*rows = nx / ng;
}

PG_FUNCTION_INFO_V1(pg_llm_layernorm);
Datum
pg_llm_layernorm(PG_FUNCTION_ARGS)
{
	int64		nx,
				ng,
				nb,
				rows;
	const float *x = arith_arg_any(PG_GETARG_BYTEA_P(0), &nx, "x");
	const float *gamma = arith_arg_any(PG_GETARG_BYTEA_P(1), &ng, "gamma");
	const float *beta = arith_arg_any(PG_GETARG_BYTEA_P(2), &nb, "beta");
	float		eps = PG_GETARG_FLOAT4(3);
	float	   *y;
	bytea	   *out;

	require_same_len(ng, nb, "pg_llm_layernorm", "gamma", "beta");
	layernorm_shape(nx, ng, eps, "pg_llm_layernorm", &rows);
	out = pgllm_new_tensor(nx, &y);
	PGLLM_KERNEL(pgllm_layernorm_forward(x, gamma, beta, y, NULL, NULL, rows, ng, eps,
										 pgllm_cancel));
	PG_RETURN_BYTEA_P(out);
}

/* pg_llm_layernorm_backward(x, dy, gamma, eps) -> (dx, dgamma, dbeta) */
PG_FUNCTION_INFO_V1(pg_llm_layernorm_backward);
Datum
pg_llm_layernorm_backward(PG_FUNCTION_ARGS)
{
	int64		nx,
				nd,
				ng,
				rows;
	const float *x = arith_arg_any(PG_GETARG_BYTEA_P(0), &nx, "x");
	const float *dy = arith_arg_any(PG_GETARG_BYTEA_P(1), &nd, "dy");
	const float *gamma = arith_arg_any(PG_GETARG_BYTEA_P(2), &ng, "gamma");
	float		eps = PG_GETARG_FLOAT4(3);
	float	   *dx,
			   *dgamma,
			   *dbeta;
	bytea	   *res[3];

	require_same_len(nx, nd, "pg_llm_layernorm_backward", "x", "dy");
	layernorm_shape(nx, ng, eps, "pg_llm_layernorm_backward", &rows);
	res[0] = pgllm_new_tensor(nx, &dx);
	res[1] = pgllm_new_tensor(ng, &dgamma);
	res[2] = pgllm_new_tensor(ng, &dbeta);
	PGLLM_KERNEL(pgllm_layernorm_backward(x, dy, gamma, NULL, NULL, eps, dx, dgamma, dbeta,
										  rows, ng, pgllm_cancel));
	return return_tensors(fcinfo, 3, res);
}

/* ---------------------------------------------------------------------------
 * cross-entropy from logits and integer targets
 * ------------------------------------------------------------------------- */

/* logits of `rows` rows and the targets, checked; returns V */
static int64
cross_entropy_args(bytea *logits_b, const int32 *targets, int64 rows, const char *fn,
				   const float **logits)
{
	int64		n;
	int64		V;
	int64		r;

	*logits = arith_arg_any(logits_b, &n, "logits");
	if (rows == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s: targets is empty", fn)));
	if (n == 0 || n % rows != 0)
		ereport(ERROR,
				(errcode(ERRCODE_DATA_EXCEPTION),
				 errmsg("%s: logits hold %lld values, not a positive multiple of the %lld targets",
						fn, (long long) n, (long long) rows)));
	V = n / rows;
	for (r = 0; r < rows; r++)
		if (targets[r] < 0 || targets[r] >= V)
			ereport(ERROR,
					(errcode(ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE),
					 errmsg("%s: target %d is outside the vocabulary [0, %lld)",
							fn, targets[r], (long long) V),
					 rows > 1 ? errdetail("At position %lld of targets.", (long long) r + 1) : 0));
	return V;
}

static Datum
cross_entropy_loss(FunctionCallInfo fcinfo, int32 *targets, int64 rows)
{
	const float *logits;
	int64		V = cross_entropy_args(PG_GETARG_BYTEA_P(0), targets, rows,
									   "pg_llm_cross_entropy", &logits);
	float	   *losses = pgllm_alloc_floats(rows, "cross-entropy losses");

	PGLLM_KERNEL(pgllm_cross_entropy_forward(logits, targets, losses, rows, V, pgllm_cancel));
	PG_RETURN_FLOAT4((float4) pgllm_mean(losses, rows));
}

static Datum
cross_entropy_grad(FunctionCallInfo fcinfo, int32 *targets, int64 rows)
{
	const float *logits;
	int64		V = cross_entropy_args(PG_GETARG_BYTEA_P(0), targets, rows,
									   "pg_llm_cross_entropy_backward", &logits);
	float	   *d;
	bytea	   *out = pgllm_new_tensor(rows * V, &d);

	PGLLM_KERNEL(pgllm_cross_entropy_backward(logits, targets, d, rows, V,
											  (float) (1.0 / rows), pgllm_cancel));
	PG_RETURN_BYTEA_P(out);
}

/* pg_llm_cross_entropy(logits, target int) -> loss of one row */
PG_FUNCTION_INFO_V1(pg_llm_cross_entropy);
Datum
pg_llm_cross_entropy(PG_FUNCTION_ARGS)
{
	int32		target = PG_GETARG_INT32(1);

	return cross_entropy_loss(fcinfo, &target, 1);
}

/* pg_llm_cross_entropy(logits, targets int[]) -> mean loss over rows */
PG_FUNCTION_INFO_V1(pg_llm_cross_entropy_rows);
Datum
pg_llm_cross_entropy_rows(PG_FUNCTION_ARGS)
{
	int64		rows;
	int32	   *targets = pgllm_int4_array(PG_GETARG_ARRAYTYPE_P(1), &rows, "targets");

	return cross_entropy_loss(fcinfo, targets, rows);
}

/* pg_llm_cross_entropy_backward(logits, target int) -> softmax - onehot */
PG_FUNCTION_INFO_V1(pg_llm_cross_entropy_backward);
Datum
pg_llm_cross_entropy_backward(PG_FUNCTION_ARGS)
{
	int32		target = PG_GETARG_INT32(1);

	return cross_entropy_grad(fcinfo, &target, 1);
}

/* pg_llm_cross_entropy_backward(logits, targets int[]) -> d(mean loss)/dlogits */
PG_FUNCTION_INFO_V1(pg_llm_cross_entropy_backward_rows);
Datum
pg_llm_cross_entropy_backward_rows(PG_FUNCTION_ARGS)
{
	int64		rows;
	int32	   *targets = pgllm_int4_array(PG_GETARG_ARRAYTYPE_P(1), &rows, "targets");

	return cross_entropy_grad(fcinfo, targets, rows);
}

/* ---------------------------------------------------------------------------
 * causal self-attention of one sequence with fused QKV
 * ------------------------------------------------------------------------- */
typedef struct AttentionArgs
{
	int64		T,
				D,
				H;
	const float *x,
			   *w_qkv,
			   *b_qkv,
			   *w_o,
			   *b_o;
	float	   *qkv,
			   *att,
			   *ctx;
} AttentionArgs;

/* x, w_qkv, b_qkv, w_o, b_o at args 0..4; n_head, T, D at nh_arg.. */
static void
attention_args(FunctionCallInfo fcinfo, int nh_arg, const char *fn, AttentionArgs *a)
{
	int32		nh = PG_GETARG_INT32(nh_arg),
				T = PG_GETARG_INT32(nh_arg + 1),
				D = PG_GETARG_INT32(nh_arg + 2);

	shape2(fn, T, "T", D, "D");
	if (nh <= 0 || D % nh != 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s: n_head (%d) must be positive and divide D (%d)", fn, nh, D)));
	if ((int64) D * D * 3 > PGLLM_MAX_TENSOR_ELEMS || (int64) nh * T * T > PGLLM_MAX_TENSOR_ELEMS)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("%s: T = %d, D = %d is too large for float32 bytea tensors", fn, T, D)));
	a->T = T;
	a->D = D;
	a->H = nh;
	a->x = arith_arg(PG_GETARG_BYTEA_P(0), a->T * a->D, "x", dims_str(T, D));
	a->w_qkv = arith_arg(PG_GETARG_BYTEA_P(1), a->D * 3 * a->D, "w_qkv", dims_str(D, 3 * D));
	a->b_qkv = arith_arg(PG_GETARG_BYTEA_P(2), 3 * a->D, "b_qkv", psprintf("(%d)", 3 * D));
	a->w_o = arith_arg(PG_GETARG_BYTEA_P(3), a->D * a->D, "w_o", dims_str(D, D));
	a->b_o = arith_arg(PG_GETARG_BYTEA_P(4), a->D, "b_o", psprintf("(%d)", D));
	a->qkv = pgllm_alloc_floats(a->T * 3 * a->D, "attention qkv");
	a->att = pgllm_alloc_floats(a->H * a->T * a->T, "attention probabilities");
	a->ctx = pgllm_alloc_floats(a->T * a->D, "attention context");
}

/* pg_llm_attention(x, w_qkv, b_qkv, w_o, b_o, n_head, T, D) -> y (T, D) */
PG_FUNCTION_INFO_V1(pg_llm_attention);
Datum
pg_llm_attention(PG_FUNCTION_ARGS)
{
	AttentionArgs a;
	float	   *y;
	bytea	   *out;

	attention_args(fcinfo, 5, "pg_llm_attention", &a);
	out = pgllm_new_tensor(a.T * a.D, &y);
	PGLLM_KERNEL(pgllm_attention_forward(a.x, a.w_qkv, a.b_qkv, a.w_o, a.b_o,
										 a.qkv, a.att, a.ctx, y, a.T, a.D, a.H,
										 pgllm_cancel));
	PG_RETURN_BYTEA_P(out);
}

/* pg_llm_attention_backward(x, w_qkv, b_qkv, w_o, b_o, grad_output, n_head, T, D)
 *   -> (dx, dw_qkv, db_qkv, dw_o, db_o) */
PG_FUNCTION_INFO_V1(pg_llm_attention_backward);
Datum
pg_llm_attention_backward(PG_FUNCTION_ARGS)
{
	AttentionArgs a;
	const float *dy;
	float	   *y,
			   *dctx,
			   *dqkv,
			   *dx,
			   *dwq,
			   *dbq,
			   *dwo,
			   *dbo;
	bytea	   *res[5];

	attention_args(fcinfo, 6, "pg_llm_attention_backward", &a);
	dy = arith_arg(PG_GETARG_BYTEA_P(5), a.T * a.D, "grad_output",
				   dims_str((int32) a.T, (int32) a.D));
	y = pgllm_alloc_floats(a.T * a.D, "attention output");
	dctx = pgllm_alloc_floats(a.T * a.D, "attention dctx");
	dqkv = pgllm_alloc_floats(a.T * 3 * a.D, "attention dqkv");
	res[0] = pgllm_new_tensor(a.T * a.D, &dx);
	res[1] = pgllm_new_tensor(a.D * 3 * a.D, &dwq);
	res[2] = pgllm_new_tensor(3 * a.D, &dbq);
	res[3] = pgllm_new_tensor(a.D * a.D, &dwo);
	res[4] = pgllm_new_tensor(a.D, &dbo);
	PGLLM_KERNEL(pgllm_attention_forward(a.x, a.w_qkv, a.b_qkv, a.w_o, a.b_o,
										 a.qkv, a.att, a.ctx, y, a.T, a.D, a.H,
										 pgllm_cancel));
	PGLLM_KERNEL(pgllm_attention_backward(a.x, a.w_qkv, a.w_o, a.qkv, a.att, a.ctx, dy,
										  dctx, dqkv, dx, dwq, dbq, dwo, dbo,
										  a.T, a.D, a.H, pgllm_cancel));
	return return_tensors(fcinfo, 5, res);
}

/* ---------------------------------------------------------------------------
 * dropout (inverted: kept values scaled by 1/(1-p))
 * ------------------------------------------------------------------------- */
static void
dropout_p_check(float p, const char *fn)
{
	if (!(p >= 0 && p <= 1))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s: p must lie in [0, 1], got %g", fn, p)));
}

/* pg_llm_dropout(x, p, training [, seed]); without a seed the mask is random */
PG_FUNCTION_INFO_V1(pg_llm_dropout);
Datum
pg_llm_dropout(PG_FUNCTION_ARGS)
{
	bytea	   *xb = PG_GETARG_BYTEA_P(0);
	int64		n = pgllm_tensor_len(xb, "x");
	float		p = PG_GETARG_FLOAT4(1);
	bool		training = PG_GETARG_BOOL(2);
	uint64		seed = PG_NARGS() > 3 ? (uint64) (uint32) PG_GETARG_INT32(3) : pgllm_random_seed();
	float	   *y;
	bytea	   *out;

	dropout_p_check(p, "pg_llm_dropout");
	if (!training || p == 0)
		PG_RETURN_BYTEA_P(xb);
	out = pgllm_new_tensor(n, &y);
	PGLLM_KERNEL(pgllm_dropout_forward((const float *) VARDATA(xb), y, n, p, seed, pgllm_cancel));
	PG_RETURN_BYTEA_P(out);
}

/* pg_llm_dropout_backward(x, y, dy, p, training): mask read off y */
PG_FUNCTION_INFO_V1(pg_llm_dropout_backward);
Datum
pg_llm_dropout_backward(PG_FUNCTION_ARGS)
{
	int64		nx = pgllm_tensor_len(PG_GETARG_BYTEA_P(0), "x");
	int64		ny = pgllm_tensor_len(PG_GETARG_BYTEA_P(1), "y");
	bytea	   *dyb = PG_GETARG_BYTEA_P(2);
	int64		nd = pgllm_tensor_len(dyb, "dy");
	float		p = PG_GETARG_FLOAT4(3);
	bool		training = PG_GETARG_BOOL(4);
	float	   *dx;
	bytea	   *out;

	require_same_len(nx, ny, "pg_llm_dropout_backward", "x", "y");
	require_same_len(nx, nd, "pg_llm_dropout_backward", "x", "dy");
	dropout_p_check(p, "pg_llm_dropout_backward");
	if (!training || p == 0)
		PG_RETURN_BYTEA_P(dyb);
	out = pgllm_new_tensor(nx, &dx);
	PGLLM_KERNEL(pgllm_dropout_backward_masked((const float *) VARDATA(PG_GETARG_BYTEA_P(0)),
											   (const float *) VARDATA(PG_GETARG_BYTEA_P(1)),
											   (const float *) VARDATA(dyb), dx, nx, p,
											   pgllm_cancel));
	PG_RETURN_BYTEA_P(out);
}

/* pg_llm_dropout_backward(dy, p, training, seed): the forward's mask, exactly */
PG_FUNCTION_INFO_V1(pg_llm_dropout_backward_seeded);
Datum
pg_llm_dropout_backward_seeded(PG_FUNCTION_ARGS)
{
	bytea	   *dyb = PG_GETARG_BYTEA_P(0);
	int64		n = pgllm_tensor_len(dyb, "dy");
	float		p = PG_GETARG_FLOAT4(1);
	bool		training = PG_GETARG_BOOL(2);
	uint64		seed = (uint64) (uint32) PG_GETARG_INT32(3);
	float	   *dx;
	bytea	   *out;

	dropout_p_check(p, "pg_llm_dropout_backward");
	if (!training || p == 0)
		PG_RETURN_BYTEA_P(dyb);
	out = pgllm_new_tensor(n, &dx);
	PGLLM_KERNEL(pgllm_dropout_backward_seeded((const float *) VARDATA(dyb), dx, n, p, seed,
											   pgllm_cancel));
	PG_RETURN_BYTEA_P(out);
}

/* ---------------------------------------------------------------------------
 * layout and constants
 * ------------------------------------------------------------------------- */
PG_FUNCTION_INFO_V1(pg_llm_transpose);
Datum
pg_llm_transpose(PG_FUNCTION_ARGS)
{
	int32		rows = PG_GETARG_INT32(1),
				cols = PG_GETARG_INT32(2);
	int64		n = shape2("pg_llm_transpose", rows, "rows", cols, "cols");
	const float *x = pgllm_tensor_data(PG_GETARG_BYTEA_P(0), n, "x", dims_str(rows, cols));
	float	   *y;
	bytea	   *out = pgllm_new_tensor(n, &y);

	PGLLM_KERNEL(pgllm_transpose(x, y, rows, cols, pgllm_cancel));
	PG_RETURN_BYTEA_P(out);
}

static Datum
filled_like(FunctionCallInfo fcinfo, float value)
{
	int64		n = pgllm_tensor_len(PG_GETARG_BYTEA_P(0), "x");
	float	   *y;
	bytea	   *out = pgllm_new_tensor(n, &y);

	PGLLM_KERNEL(pgllm_fill(y, n, value));
	PG_RETURN_BYTEA_P(out);
}

PG_FUNCTION_INFO_V1(pg_llm_zeros_like);
Datum
pg_llm_zeros_like(PG_FUNCTION_ARGS)
{
	return filled_like(fcinfo, 0.0f);
}

PG_FUNCTION_INFO_V1(pg_llm_ones_like);
Datum
pg_llm_ones_like(PG_FUNCTION_ARGS)
{
	return filled_like(fcinfo, 1.0f);
}

/* ---------------------------------------------------------------------------
 * optimisation
 * ------------------------------------------------------------------------- */
static void
require_in(float v, float lo, bool lo_open, float hi, bool hi_open, const char *fn,
		   const char *name)
{
	bool		ok = !isnan(v) &&
		(lo_open ? v > lo : v >= lo) &&
		(hi_open ? v < hi : v <= hi);

	if (!ok)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s: %s must lie in %c%g, %g%c, got %g", fn, name,
						lo_open ? '(' : '[', lo, hi, hi_open ? ')' : ']', v)));
}

/* pg_llm_adamw_step(weight, grad, m, v, lr, beta1, beta2, eps, weight_decay, step)
 *   -> (weight, m, v) */
PG_FUNCTION_INFO_V1(pg_llm_adamw_step);
Datum
pg_llm_adamw_step(PG_FUNCTION_ARGS)
{
	const char *fn = "pg_llm_adamw_step";
	int64		n,
				ng,
				nm,
				nv;
	const float *w = arith_arg_any(PG_GETARG_BYTEA_P(0), &n, "weight");
	const float *g = arith_arg_any(PG_GETARG_BYTEA_P(1), &ng, "grad");
	const float *m = arith_arg_any(PG_GETARG_BYTEA_P(2), &nm, "m");
	const float *v = arith_arg_any(PG_GETARG_BYTEA_P(3), &nv, "v");
	float		lr = PG_GETARG_FLOAT4(4),
				beta1 = PG_GETARG_FLOAT4(5),
				beta2 = PG_GETARG_FLOAT4(6),
				eps = PG_GETARG_FLOAT4(7),
				wd = PG_GETARG_FLOAT4(8);
	int32		step = PG_GETARG_INT32(9);
	float	   *w2,
			   *m2,
			   *v2;
	bytea	   *res[3];

	require_same_len(n, ng, fn, "weight", "grad");
	require_same_len(n, nm, fn, "weight", "m");
	require_same_len(n, nv, fn, "weight", "v");
	require_in(lr, 0, false, FLT_MAX, false, fn, "lr");
	require_in(beta1, 0, false, 1, true, fn, "beta1");
	require_in(beta2, 0, false, 1, true, fn, "beta2");
	require_in(eps, 0, true, FLT_MAX, false, fn, "eps");
	require_in(wd, 0, false, FLT_MAX, false, fn, "weight_decay");
	if (step < 1)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s: step counts from 1, got %d", fn, step)));
	res[0] = pgllm_new_tensor(n, &w2);
	res[1] = pgllm_new_tensor(n, &m2);
	res[2] = pgllm_new_tensor(n, &v2);
	memcpy(w2, w, n * sizeof(float));
	memcpy(m2, m, n * sizeof(float));
	memcpy(v2, v, n * sizeof(float));
	pgllm_threads_prepare();
	pgllm_kernel_status(pgllm_adamw_step(w2, g, m2, v2, n, lr, beta1, beta2, eps, wd, step, 1.0f),
						"adamw");
	return return_tensors(fcinfo, 3, res);
}

/* pg_llm_grad_clip(grad, max_norm) -> grad scaled to norm <= max_norm */
PG_FUNCTION_INFO_V1(pg_llm_grad_clip);
Datum
pg_llm_grad_clip(PG_FUNCTION_ARGS)
{
	int64		n;
	const float *g = arith_arg_any(PG_GETARG_BYTEA_P(0), &n, "grad");
	float		max_norm = PG_GETARG_FLOAT4(1);
	float	   *out;
	bytea	   *res;

	require_in(max_norm, 0, true, FLT_MAX, false, "pg_llm_grad_clip", "max_norm");
	res = pgllm_new_tensor(n, &out);
	pgllm_threads_prepare();
	(void) pgllm_clip_by_norm(g, out, n, max_norm);
	PG_RETURN_BYTEA_P(res);
}

/* pg_llm_lr_schedule(step, warmup, total, lr_max [, lr_min]): nanoGPT's
 * linear warmup then cosine decay */
PG_FUNCTION_INFO_V1(pg_llm_lr_schedule);
Datum
pg_llm_lr_schedule(PG_FUNCTION_ARGS)
{
	const char *fn = "pg_llm_lr_schedule";
	int32		step = PG_GETARG_INT32(0),
				warmup = PG_GETARG_INT32(1),
				total = PG_GETARG_INT32(2);
	float		lr_max = PG_GETARG_FLOAT4(3);
	float		lr_min = PG_NARGS() > 4 ? PG_GETARG_FLOAT4(4) : 0.0f;

	if (step < 0 || warmup < 0 || total < 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s: step, warmup and total must not be negative", fn)));
	require_in(lr_max, 0, false, FLT_MAX, false, fn, "lr_max");
	require_in(lr_min, 0, false, lr_max, false, fn, "lr_min");
	PG_RETURN_FLOAT4((float4) pgllm_lr_schedule(step, warmup, total, lr_max, lr_min));
}

/* ---------------------------------------------------------------------------
 * float4[] <-> bytea
 * ------------------------------------------------------------------------- */
PG_FUNCTION_INFO_V1(pg_llm_tensor);
Datum
pg_llm_tensor(PG_FUNCTION_ARGS)
{
	int64		n;
	float	   *src = pgllm_float4_array(PG_GETARG_ARRAYTYPE_P(0), &n, "pg_llm_tensor argument");
	float	   *y;
	bytea	   *out = pgllm_new_tensor(n, &y);

	memcpy(y, src, n * sizeof(float));
	PG_RETURN_BYTEA_P(out);
}

PG_FUNCTION_INFO_V1(pg_llm_tensor_array);
Datum
pg_llm_tensor_array(PG_FUNCTION_ARGS)
{
	bytea	   *b = PG_GETARG_BYTEA_P(0);
	int64		n = pgllm_tensor_len(b, "pg_llm_tensor_array argument");
	Datum	   *elems;
	const float *x = (const float *) VARDATA(b);
	int64		i;

	if (n > MaxArraySize)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("pg_llm_tensor_array: %lld values exceed the array size limit",
						(long long) n)));
	elems = palloc(Max(n, 1) * sizeof(Datum));
	for (i = 0; i < n; i++)
		elems[i] = Float4GetDatum(x[i]);
	PG_RETURN_ARRAYTYPE_P(construct_array(elems, (int) n, FLOAT4OID, sizeof(float4), true,
										  TYPALIGN_INT));
}
