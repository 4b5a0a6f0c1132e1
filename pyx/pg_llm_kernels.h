/*
 * pg_llm_kernels.h -- the C ABI of the Cython kernels (pyx/_kernels.pyx).
 *
 * Included by the PostgreSQL shims (which never include Python.h) and by the
 * Cython module itself (`cdef extern from "pg_llm_kernels.h"`), so gcc checks
 * that every `cdef public` definition matches its prototype here.
 *
 * Conventions
 *   - tensors are float32, row-major, contiguous unless a leading dimension
 *     (ld*) is given; sizes are int64_t;
 *   - every long kernel takes `const int *cancel` (PostgreSQL's
 *     InterruptPending, or NULL), polls it once per tile and returns
 *     PGLLM_INTERRUPTED with its output incomplete.  Such kernels are
 *     restartable: they write their outputs, never accumulate into them
 *     (documented exceptions say "accumulates");
 *   - kernels never allocate PostgreSQL memory, never raise, never block
 *     signals; scratch memory they need is malloc'ed and freed inside.
 */
#ifndef PG_LLM_KERNELS_H
#define PG_LLM_KERNELS_H

#include <stdint.h>
#include <stddef.h>

/* Status codes returned by kernels */
#define PGLLM_OK            0
#define PGLLM_INTERRUPTED   1   /* *cancel was set: output incomplete */
#define PGLLM_ENOMEM        2   /* scratch allocation failed */
#define PGLLM_EINVAL        3   /* input the shim should have rejected */
#define PGLLM_EFORMAT       4   /* a parser found malformed bytes */

/* Read a flag that a signal handler may set (InterruptPending is a volatile
 * sig_atomic_t); a macro so that Cython needn't know about `volatile`. */
#define PGLLM_CANCELLED(p) ((p) != 0 && *(const volatile int *) (p) != 0)

/*
 * Code-generation targets.  The default build is x86-64-v3 (AVX2 + FMA);
 * the few kernels whose speed depends on register blocking have an AVX-512
 * twin compiled for x86-64-v4 through this attribute and chosen at run time
 * (pgllm_cpu_has_avx512).  gcc merges an attribute on a prototype into the
 * later definition, which is how a Cython `cdef public` function gets it.
 */
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#define PGLLM_TARGET_AVX512 \
	__attribute__((target("avx512f,avx512vl,avx512bw,avx512dq,avx2,fma,prefer-vector-width=512")))
#else
#define PGLLM_TARGET_AVX512
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* ---- run-time CPU dispatch and threads ---- */
int		pgllm_cpu_has_avx512(void);
/* Force the portable path (1) or the default choice (0); for tests/benchmarks */
void	pgllm_set_force_portable(int force);
int		pgllm_omp_team_size(void);

/* value i of the counter-based random stream `seed` (a pure function) */
uint64_t	pgllm_rand_u64(uint64_t seed, uint64_t i);

/* ---- GEMM: C(M,N) [+]= op(A)(M,K) @ op(B)(K,N) [+ bias(N)] ----
 * op(A) = A (stored M x K, row stride lda) or A^T (A stored K x M) when transA;
 * op(B) = B (stored K x N, row stride ldb) or B^T (B stored N x K) when transB.
 * PGLLM_OVERWRITE sets C (restartable); PGLLM_ACCUMULATE adds to it. */
enum
{
	PGLLM_NO_TRANS = 0,
	PGLLM_TRANS = 1,
	PGLLM_OVERWRITE = 0,
	PGLLM_ACCUMULATE = 1
};
int		pgllm_gemm(int transA, int transB, int64_t M, int64_t N, int64_t K,
				   const float *A, int64_t lda, const float *B, int64_t ldb,
				   float *C, int64_t ldc, const float *bias, int accumulate,
				   const int *cancel);
/* C[i, j] [+]= dot(A[i], B[j]) (+ bias[j]) with each element computed the same
 * way whatever M (row-invariant: batched decoding equals single decoding) */
int		pgllm_gemm_rowinv(int64_t M, int64_t N, int64_t K, const float *A, int64_t lda,
						  const float *B, int64_t ldb, float *C, int64_t ldc,
						  const float *bias, int accumulate, const int *cancel);
/* the same product with the plain triple loop (reference, tests) */
int		pgllm_gemm_reference(int transA, int transB, int64_t M, int64_t N, int64_t K,
							 const float *A, int64_t lda, const float *B, int64_t ldb,
							 float *C, int64_t ldc, const float *bias, int accumulate,
							 const int *cancel);

/* micro-kernels: MR x NR tile [+]= L panel (element (r, p) at L[r*l_rs + p*l_cs])
 * @ R panel (rows r_rs apart); the AVX-512 one is a twin chosen at run time */
PGLLM_TARGET_AVX512
void	pgllm_micro_avx512(int64_t kc, const float *L, int64_t l_rs, int64_t l_cs,
						   const float *R, int64_t r_rs, const float *prefetch,
						   float *C, int64_t ldc, const float *bias, int overwrite);
void	pgllm_micro_avx2(int64_t kc, const float *L, int64_t l_rs, int64_t l_cs,
						 const float *R, int64_t r_rs, const float *prefetch,
						 float *C, int64_t ldc, const float *bias, int overwrite);

/* ---- elementwise and row-wise ops ---- */
int		pgllm_add(const float *a, const float *b, float *out, int64_t n);
int		pgllm_gelu_forward(const float *x, float *y, int64_t n, const int *cancel);
int		pgllm_gelu_backward(const float *x, const float *dy, float *dx, int64_t n,
							const int *cancel);
int		pgllm_softmax_forward(const float *x, float *y, int64_t rows, int64_t cols,
							  const int *cancel);
int		pgllm_softmax_backward(const float *y, const float *dy, float *dx,
							   int64_t rows, int64_t cols, const int *cancel);
/* mean/rstd (rows each) are optional outputs (NULL: not kept) */
int		pgllm_layernorm_forward(const float *x, const float *gamma, const float *beta,
								float *y, float *mean, float *rstd,
								int64_t rows, int64_t cols, float eps, const int *cancel);
/* mean/rstd from the forward, or NULL to recompute them with eps;
 * dx, dgamma, dbeta are written */
int		pgllm_layernorm_backward(const float *x, const float *dy, const float *gamma,
								 const float *mean, const float *rstd, float eps,
								 float *dx, float *dgamma, float *dbeta,
								 int64_t rows, int64_t cols, const int *cancel);
/* column sums of X(rows, cols) into out(cols), written */
int		pgllm_colsum(const float *X, float *out, int64_t rows, int64_t cols,
					 const int *cancel);
/* per-row losses; targets must lie in [0, V) (checked by the caller) */
int		pgllm_cross_entropy_forward(const float *logits, const int32_t *targets,
									float *losses, int64_t rows, int64_t V,
									const int *cancel);
/* dlogits = scale * (softmax(logits) - onehot(target)) */
int		pgllm_cross_entropy_backward(const float *logits, const int32_t *targets,
									 float *dlogits, int64_t rows, int64_t V, float scale,
									 const int *cancel);
int		pgllm_dropout_forward(const float *x, float *y, int64_t n, float p,
							  uint64_t seed, const int *cancel);
int		pgllm_dropout_backward_seeded(const float *dy, float *dx, int64_t n, float p,
									  uint64_t seed, const int *cancel);
int		pgllm_dropout_backward_masked(const float *x, const float *y, const float *dy,
									  float *dx, int64_t n, float p, const int *cancel);
int		pgllm_transpose(const float *x, float *y, int64_t rows, int64_t cols,
						const int *cancel);
int		pgllm_fill(float *x, int64_t n, float value);
/* AdamW in place (bias-corrected, decoupled weight decay); step >= 1 */
int		pgllm_adamw_step(float *w, const float *g, float *m, float *v, int64_t n,
						 float lr, float beta1, float beta2, float eps,
						 float weight_decay, int64_t step, float grad_scale);
double	pgllm_sum_squares(const float *x, int64_t n);
/* a 64-bit checksum of nbytes (the shared weight cache's files); the same
 * for any thread count */
uint64_t pgllm_checksum64(const void *data, int64_t nbytes);
double	pgllm_mean(const float *x, int64_t n);
/* the factor torch's clip_grad_norm_ scales g by: min(1, max_norm / (||g|| + 1e-6)),
 * 1 when max_norm <= 0 (clipping off); ||g|| goes to *norm */
double	pgllm_clip_scale(const float *g, int64_t n, double max_norm, double *norm);
/* out = g * pgllm_clip_scale(g, max_norm); returns ||g|| */
double	pgllm_clip_by_norm(const float *g, float *out, int64_t n, float max_norm);
int		pgllm_scale(float *x, int64_t n, float alpha);
/* 1 if every element is finite */
int		pgllm_all_finite(const float *x, int64_t n);
double	pgllm_lr_schedule(int64_t step, int64_t warmup, int64_t total,
						  double lr_max, double lr_min);

/* ---- causal multi-head self-attention ----
 * Core (no projections), batched as in GPT-2:
 *   qkv(B,T,3C) -> att(B,NH,T,T) softmax probabilities (0 above the
 *   diagonal), out(B,T,C).  Backward writes dqkv(B,T,3C). */
int		pgllm_attention_core_forward(const float *qkv, float *att, float *out,
									 int64_t B, int64_t T, int64_t C, int64_t NH,
									 const int *cancel);
int		pgllm_attention_core_backward(const float *qkv, const float *att,
									  const float *dout, float *dqkv,
									  int64_t B, int64_t T, int64_t C, int64_t NH,
									  const int *cancel);
/* One sequence with fused QKV and output projections:
 * x(T,D), w_qkv(D,3D), b_qkv(3D), w_o(D,D), b_o(D) -> y(T,D); qkv(T,3D),
 * att(H,T,T), ctx(T,D) are kept for the backward. */
int		pgllm_attention_forward(const float *x, const float *w_qkv, const float *b_qkv,
								const float *w_o, const float *b_o,
								float *qkv, float *att, float *ctx, float *y,
								int64_t T, int64_t D, int64_t n_head, const int *cancel);
/* gradients are written; scratch dctx(T,D) and dqkv(T,3D) */
int		pgllm_attention_backward(const float *x, const float *w_qkv, const float *w_o,
								 const float *qkv, const float *att, const float *ctx,
								 const float *dy, float *dctx, float *dqkv,
								 float *dx, float *dw_qkv, float *db_qkv,
								 float *dw_o, float *db_o,
								 int64_t T, int64_t D, int64_t n_head, const int *cancel);

/* ---- GPT-2 ----
 * Parameters live in one buffer in llm.c's order (PGLLM_P_* below); linear
 * weights are kept as (out, in), like torch.nn.Linear, so that every product
 * reads a weight matrix row by row (HuggingFace's Conv1D layout is (in, out):
 * the shims transpose on the way in and out of the tables). */
typedef struct PgllmGPT2Config
{
	int64_t		n_layer;
	int64_t		n_head;
	int64_t		n_embd;
	int64_t		n_positions;
	int64_t		vocab;
	float		eps;			/* layernorm epsilon */
} PgllmGPT2Config;

enum
{
	PGLLM_P_WTE,				/* (V, C) */
	PGLLM_P_WPE,				/* (maxT, C) */
	PGLLM_P_LN1W,				/* (L, C) */
	PGLLM_P_LN1B,				/* (L, C) */
	PGLLM_P_QKVW,				/* (L, 3C, C) */
	PGLLM_P_QKVB,				/* (L, 3C) */
	PGLLM_P_ATTPROJW,			/* (L, C, C) */
	PGLLM_P_ATTPROJB,			/* (L, C) */
	PGLLM_P_LN2W,				/* (L, C) */
	PGLLM_P_LN2B,				/* (L, C) */
	PGLLM_P_FCW,				/* (L, 4C, C) */
	PGLLM_P_FCB,				/* (L, 4C) */
	PGLLM_P_FCPROJW,			/* (L, C, 4C) */
	PGLLM_P_FCPROJB,			/* (L, C) */
	PGLLM_P_LNFW,				/* (C) */
	PGLLM_P_LNFB,				/* (C) */
	PGLLM_NUM_PARAM_TENSORS
};

/* The one parameter table: tensor kind -> its HuggingFace name suffix (after
 * "h.<layer>." when per_layer), whether HuggingFace's Conv1D stores it as
 * (in, out), and its shape (rows, cols; cols 1 for vectors) in the kernels'
 * layout.  PGLLM_EINVAL for a kind out of range. */
int		pgllm_gpt2_param_spec(const PgllmGPT2Config *cfg, int kind, const char **suffix,
							  int *per_layer, int *hf_transposed, int64_t *rows, int64_t *cols);
/* floats of each parameter tensor (all layers); returns the total */
int64_t	pgllm_gpt2_param_sizes(const PgllmGPT2Config *cfg, int64_t *sizes);
/* GPT-2's initialisation from a seed: N(0, 0.02), residual projections
 * N(0, 0.02/sqrt(2 n_layer)), biases 0, layernorm weights 1 */
int		pgllm_gpt2_init(const PgllmGPT2Config *cfg, float *params, uint64_t seed,
							const int *cancel);

/* Inference with a KV cache: B sequences, Tn new tokens each after `past`
 * cached positions.  kv is (B, L, 2, kv_cap, C); work holds
 * pgllm_gpt2_work_floats(cfg, B, Tn) floats; logits gets (B, V) for each
 * sequence's last new token, or (B, Tn, V) when all_positions. */
int64_t	pgllm_gpt2_work_floats(const PgllmGPT2Config *cfg, int64_t B, int64_t Tn);
int		pgllm_gpt2_forward_cached(const PgllmGPT2Config *cfg, const float *params,
									  const int32_t *tokens, int64_t B, int64_t Tn,
									  int64_t past, float *kv, int64_t kv_cap,
									  float *work, float *logits, int all_positions,
									  const int *cancel);
/* One decoding step of a batch of sequences of their own lengths: row r is
 * token tokens[r] of the sequence in KV slot slots[r] (distinct slots, each
 * (L, 2, kv_cap, C) in kv) at position positions[r]; logits (n, V).  Row r's
 * logits are bit-identical to pgllm_gpt2_forward_cached of that sequence
 * alone (B = 1, Tn = 1).  work: pgllm_gpt2_work_floats(cfg, n, 1) floats. */
int		pgllm_gpt2_forward_rows(const PgllmGPT2Config *cfg, const float *params,
									const int32_t *tokens, const int64_t *slots,
									const int64_t *positions, int64_t n, float *kv,
									int64_t kv_cap, float *work, float *logits,
									const int *cancel);
/* kv rows of sequence src[b] -> sequence b, for b < B (beam reordering);
 * scratch holds one sequence's cache */
int		pgllm_gpt2_kv_reorder(const PgllmGPT2Config *cfg, float *kv, int64_t B,
								  int64_t kv_cap, int64_t len, const int32_t *src,
								  float *scratch);

/* ---- training (llm.c's fused forward/backward) ----
 * One buffer of pgllm_gpt2_train_floats(cfg, B, T) floats holds the
 * activations the backward needs and its scratch.  tokens, targets: (B, T).
 * dropout (GPT-2's three sites: embeddings, attention probabilities,
 * residual branches) draws its masks from `seed`; the backward recomputes
 * them from the same seed.  The forward overwrites the buffer
 * (restartable); the backward ADDS into grads (gradient accumulation):
 * restart a step from zeroed grads. */
int64_t	pgllm_gpt2_train_floats(const PgllmGPT2Config *cfg, int64_t B, int64_t T);
/* *loss = mean cross-entropy of targets (targets may be NULL: logits only) */
int		pgllm_gpt2_train_forward(const PgllmGPT2Config *cfg, const float *params,
								 const int32_t *tokens, const int32_t *targets, int64_t B,
								 int64_t T, float dropout, uint64_t seed, float *acts,
								 double *loss, const int *cancel);
/* grads += d(loss_scale * sum of the B*T losses)/dparams */
int		pgllm_gpt2_train_backward(const PgllmGPT2Config *cfg, const float *params,
								  float *grads, const int32_t *tokens, const int32_t *targets,
								  int64_t B, int64_t T, float dropout, uint64_t seed,
								  float *acts, float loss_scale, const int *cancel);
/* AdamW on every tensor, weight decay on 2-D ones only (as nanoGPT);
 * grads scaled by grad_scale (clipping); step counts from 1 */
int		pgllm_gpt2_adamw(const PgllmGPT2Config *cfg, float *params, const float *grads,
						 float *m, float *v, float lr, float beta1, float beta2, float eps,
						 float weight_decay, int64_t step, float grad_scale);

/* ---- decoding (decode.pxi) ----
 * Next token from logits (modified in place): repetition penalty on the
 * tokens of history (CTRL / HuggingFace rule), then greedy argmax when
 * temperature == 0, else temperature, top-k (0: off), top-p (1: off) and a
 * draw from the counter-based stream (seed, step).  work: 2*V floats. */
int32_t	pgllm_sample_token(float *logits, int64_t V, const int32_t *history,
						   int64_t nhist, float repetition_penalty, float temperature,
						   int64_t topk, float topp, uint64_t seed, uint64_t step,
						   float *work);

/*
 * Beam search of width W: the whole state lives in one caller-allocated
 * buffer of pgllm_beams_bytes(W, max_tokens), with named pointers into it.
 * Live beams are rows 0..live-1, best first; finished hypotheses (a beam's
 * tokens when it picks eos, without the eos) keep only the best W, ranked in
 * done_rank.  A hypothesis scores its summed log-probability over
 * max(len, 1)^length_penalty.
 */
typedef struct PgllmBeams
{
	int64_t		width;			/* W */
	int64_t		max_tokens;		/* maxN: tokens a hypothesis may hold */
	int64_t		vocab;			/* V */
	int32_t		eos;			/* -1: none */
	double		length_penalty;
	int64_t		live;			/* live beams */
	int64_t		len;			/* tokens each live beam holds */
	int64_t		n_done;			/* finished hypotheses kept (<= W) */
	int32_t    *tokens;			/* (W, maxN) live beams' tokens */
	int32_t    *next_tokens;	/* (W, maxN) scratch */
	double	   *logprob;		/* (W) live beams' summed log-probabilities */
	double	   *next_logprob;	/* (W) scratch */
	int32_t    *parent;			/* (W) the beam of the last step each live beam continues */
	int32_t    *last;			/* (W) each live beam's last token: the next input */
	float	   *lse;			/* (W) scratch: each row's log-sum-exp */
	void	   *cand;			/* (2W) scratch: the step's best continuations */
	int32_t    *done_tokens;	/* (W, maxN) finished hypotheses, by slot */
	int64_t    *done_len;		/* (W) by slot */
	double	   *done_logprob;	/* (W) by slot */
	double	   *done_score;		/* (W) by slot */
	int32_t    *done_rank;		/* (W) slots, best first */
} PgllmBeams;

int64_t	pgllm_beams_bytes(int64_t width, int64_t max_tokens);
/* the state in buf, holding one live empty beam (the prompt); PGLLM_EINVAL
 * unless width, max_tokens and vocab are positive and width * vocab < 2^31 */
int		pgllm_beams_init(PgllmBeams *s, void *buf, int64_t width, int64_t max_tokens,
						 int64_t vocab, int32_t eos, double length_penalty);
/* One step: logits (live, V) are each live beam's next-token logits (the
 * first step: the prompt's last position), modified.  The best 2W
 * continuations by summed log-probability, in order: eos ends a hypothesis;
 * the others become the new live beams until W of them, beam b continuing
 * parent[b] -- the caller reorders its KV cache with parent, then feeds
 * last.  *finished: no live beam left, maxN tokens reached, or the best live
 * beam scores below the W-th finished hypothesis.  Restartable; PGLLM_EINVAL
 * when nothing is live or maxN is reached. */
int		pgllm_beam_step(PgllmBeams *s, float *logits, int *finished, const int *cancel);
/* live beams become hypotheses of their length; returns how many are ranked */
int64_t	pgllm_beams_finish(PgllmBeams *s);

/* ---- GPT-2's byte-level BPE (tiktoken's algorithm) ----
 * A tokenizer is built from its vocabulary: token i's bytes are
 * data[offsets[i] .. offsets[i+1]); special tokens (<|endoftext|>) are never
 * produced by merges.  Merge priority is the merged token's id, as in
 * tiktoken, whose ranks equal GPT-2's ids. */
typedef struct PgllmBPE PgllmBPE;

/* the largest vocabulary a tokenizer is built from */
#define PGLLM_BPE_MAX_TOKENS 16777216
#define PGLLM_BPE_MAX_BYTES  (1 << 30)

/* *out: a tokenizer built from any vocabulary, in time linear in its bytes;
 * PGLLM_EINVAL: not byte-level (a byte has no token), more than 16777216
 * tokens or 1 GB of token bytes, or offsets that decrease; restartable
 * (PGLLM_INTERRUPTED frees what it built) */
int			pgllm_bpe_create(int64_t n_tokens, const uint8_t *data, const int64_t *offsets,
							 const uint8_t *special, PgllmBPE **out, const int *cancel);
void		pgllm_bpe_free(PgllmBPE *bpe);
/* A built tokenizer's tables as one flat block (an image) that another
 * process can use in place: pgllm_bpe_image_size bytes, written by
 * pgllm_bpe_image_write (deterministic; PGLLM_EINVAL if size is not the
 * image's).  pgllm_bpe_from_image makes a tokenizer that reads the image,
 * which must outlive it and stay unchanged, and keeps only its piece cache
 * to itself; PGLLM_EINVAL if the image is not one (every size, id and probe
 * sequence is checked, so a damaged image cannot lead outside it). */
int64_t		pgllm_bpe_image_size(const PgllmBPE *bpe);
int			pgllm_bpe_image_write(const PgllmBPE *bpe, void *out, int64_t size);
int			pgllm_bpe_from_image(const void *image, int64_t size, PgllmBPE **out);
int64_t		pgllm_bpe_n_tokens(const PgllmBPE *bpe);
/* UTF-8 text -> ids (at most cap of them, *n_ids of them); PGLLM_EINVAL
 * when cap is too small; restartable */
int			pgllm_bpe_encode(PgllmBPE *bpe, const uint8_t *text, int64_t len, int32_t *ids,
							 int64_t cap, int64_t *n_ids, const int *cancel);
/* bytes of the decoded ids (-1 if an id is out of range) */
int64_t		pgllm_bpe_decoded_len(const PgllmBPE *bpe, const int32_t *ids, int64_t n);
int64_t		pgllm_bpe_decode(const PgllmBPE *bpe, const int32_t *ids, int64_t n, uint8_t *out);
/* the character GPT-2's vocab.json writes byte b as (bytes_to_unicode) */
uint32_t	pgllm_gpt2_byte_char(uint8_t b);
/* id of a (mergeable) token given its bytes, or -1 */
int32_t		pgllm_bpe_token_id(const PgllmBPE *bpe, const uint8_t *bytes, int64_t len);
/* id of a special token (<|endoftext|>) given its bytes, or -1 */
int32_t		pgllm_bpe_special_id(const PgllmBPE *bpe, const uint8_t *bytes, int64_t len);

/* Valid UTF-8 from any bytes: each maximal invalid subpart becomes U+FFFD
 * (as Python's errors="replace").  out needs 3*len bytes; returns its length.
 * With hold_incomplete, a truncated sequence at the end is left out and its
 * length returned in *held (streaming: it may complete with the next token).
 * With replace_nul, NUL becomes U+FFFD too: PostgreSQL's text cannot hold it. */
int64_t		pgllm_utf8_sanitize(const uint8_t *in, int64_t len, uint8_t *out,
								int hold_incomplete, int64_t *held, int replace_nul);

/* vocab.json: a JSON object of token strings (GPT-2's byte alphabet) to ids.
 * Pass 1 (ids == NULL) counts tokens and their bytes; pass 2 fills
 * data/offsets/special by id (ids must be exactly 0 .. n-1).  On a format
 * error returns PGLLM_EFORMAT with *err_pos at the offending byte. */
int			pgllm_parse_vocab_json(const uint8_t *json, int64_t len, int64_t *n_tokens,
								   int64_t *n_bytes, uint8_t *data, int64_t *offsets,
								   uint8_t *special, int64_t *err_pos);
/* merges.txt: "#version" line, then "left right" per line; each line's ids
 * (resolved with bpe) into left/right/merged (cap entries).  *count gets the
 * number of merges; errors: PGLLM_EFORMAT / PGLLM_EINVAL with *err_line. */
int			pgllm_parse_merges(const PgllmBPE *bpe, const uint8_t *text, int64_t len,
							   int32_t *left, int32_t *right, int32_t *merged, int64_t cap,
							   int64_t *count, int64_t *err_line);

/* ---- checkpoint files: .npz (zip of .npy) and .safetensors ----
 * Parsers of outside bytes: every read is bounds-checked; malformed input
 * returns PGLLM_EFORMAT, never reads outside the buffer. */
typedef struct PgllmZipEntry
{
	int64_t		name_off;		/* within the central directory buffer */
	int64_t		name_len;
	int32_t		method;			/* 0 stored, 8 deflated */
	uint32_t	crc32;
	int64_t		csize;			/* compressed size */
	int64_t		usize;			/* uncompressed size */
	int64_t		local_offset;	/* of the local file header */
} PgllmZipEntry;

/* From the last tail_len bytes of a file of file_size bytes: where the
 * central directory is and how many entries it has (zip64 aware). */
int			pgllm_zip_find_cd(const uint8_t *tail, int64_t tail_len, int64_t file_size,
							  int64_t *cd_offset, int64_t *cd_size, int64_t *n_entries);
/* the entry at *pos of the central directory; advances *pos */
int			pgllm_zip_next_entry(const uint8_t *cd, int64_t cd_len, int64_t *pos,
								 PgllmZipEntry *e);
/* from a local file header (at least 30 bytes): bytes before the data */
int			pgllm_zip_local_header_len(const uint8_t *hdr, int64_t len, int64_t *data_skip);
/* raw deflate -> exactly out_len bytes; restartable */
int			pgllm_inflate(const uint8_t *in, int64_t in_len, uint8_t *out, int64_t out_len,
						  const int *cancel);
/* the first bytes of a raw deflate stream: up to out_len of them (*got) */
int			pgllm_inflate_head(const uint8_t *in, int64_t in_len, uint8_t *out, int64_t out_len,
							   int64_t *got, const int *cancel);
uint32_t	pgllm_crc32(uint32_t crc, const uint8_t *buf, int64_t len);

/* .npy header (first bytes of the member): float32 little-endian only
 * (*is_f32), shape (ndim <= 8), fortran order, and where the data starts */
int			pgllm_npy_parse_header(const uint8_t *buf, int64_t len, int64_t *data_offset,
								   int *is_f32, int *fortran, int64_t *shape, int *ndim);
/* .npy header for a C-order float32 array; returns its length (out: 256+) */
int64_t		pgllm_npy_build_header(const int64_t *shape, int ndim, uint8_t *out);

/* zip records written around stored members (zip64 where needed); each
 * returns its length.  out needs 128 bytes + name. */
int64_t		pgllm_zip_local_header(const uint8_t *name, int64_t name_len, uint32_t crc,
								   int64_t size, uint8_t *out);
int64_t		pgllm_zip_central_header(const uint8_t *name, int64_t name_len, uint32_t crc,
									 int64_t size, int64_t local_offset, uint8_t *out);
int64_t		pgllm_zip_end_records(int64_t n_entries, int64_t cd_offset, int64_t cd_size,
								  uint8_t *out);

/* .safetensors: an 8-byte little-endian header length, a JSON header
 * {"name": {"dtype": "F32", "shape": [..], "data_offsets": [b, e]}, ...},
 * then the data.  Pass 1 (names == NULL) counts entries and name bytes;
 * pass 2 fills per-entry arrays (names decoded into names, offsets into
 * name_off/name_len; dtype 1 = F32, 0 = other; shapes 8 per entry). */
int			pgllm_safetensors_parse(const uint8_t *json, int64_t len, int64_t *n_entries,
									int64_t *names_len, uint8_t *names, int64_t *name_off,
									int64_t *name_len, int32_t *dtype, int32_t *ndim,
									int64_t *shapes, int64_t *begin, int64_t *end,
									int64_t *err_pos);
/* the JSON header for tensors (names sorted by the caller), padded with
 * spaces to a multiple of 8; returns its length (pass out == NULL to size) */
int64_t		pgllm_safetensors_build_header(int64_t n, const uint8_t *const *names,
										   const int64_t *name_len, const int32_t *ndim,
										   const int64_t *shapes, const int64_t *begin,
										   const int64_t *end, uint8_t *out);

#ifdef __cplusplus
}
#endif
#endif							/* PG_LLM_KERNELS_H */
