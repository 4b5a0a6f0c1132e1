/*
 * weights_io.c -- pg_llm_import_npz / pg_llm_export_npz: GPT-2 weights in
 * numpy .npz archives (np.savez, np.savez_compressed) and .safetensors
 * files, HuggingFace names with or without "transformer.".
 *
 * The file's bytes are parsed by the kernels' bounds-checked parsers
 * (pyx/parsers.pxi); this file does the I/O, checks names, shapes and dtypes,
 * and writes the model in one transaction: a bad file is an ERROR and leaves
 * nothing behind.  Export writes a temporary file and renames it.
 */
#include "pg_llm.h"

#include <ctype.h>
#include <fcntl.h>
#include <math.h>
#include <sys/stat.h>
#include <unistd.h>

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "storage/fd.h"
#include "utils/builtins.h"

typedef struct WeightEntry
{
	char	   *name;			/* without "transformer." and ".npy" */
	int			is_f32;
	int			fortran;
	int			ndim;
	int64		shape[8];
	/* where the array's bytes are */
	int			method;			/* npz: 0 stored, 8 deflated; safetensors: 0 */
	int64		offset;			/* file offset of the member / the tensor data */
	int64		csize;			/* bytes at offset */
	int64		usize;			/* npz: uncompressed member size */
	int64		data_skip;		/* npz: .npy header length */
	uint32		crc;			/* npz: the member's CRC-32 */
	bool		is_npz;
} WeightEntry;

#define MAX_CD_BYTES ((int64) 256 * 1024 * 1024)
#define NPY_HEAD_MAX ((int64) 65536)

pg_noreturn static void bad_file(const char *path, const char *what);

static void
bad_file(const char *path, const char *what)
{
	/* 22P04: the file's format is wrong (not class XX: nothing internal failed) */
	ereport(ERROR,
			(errcode(ERRCODE_BAD_COPY_FILE_FORMAT),
			 errmsg("file \"%s\" is not a valid weights file: %s", path, what)));
}

static char *
clean_name(const char *raw, int64 len, bool npz)
{
	char	   *s = pnstrdup(raw, len);
	size_t		n = strlen(s);

	if ((int64) n != len)
		return NULL;			/* a NUL inside the name */
	if (npz)
	{
		if (n < 4 || strcmp(s + n - 4, ".npy") != 0)
			return NULL;
		s[n - 4] = '\0';
	}
	if (strncmp(s, "transformer.", 12) == 0)
		return pstrdup(s + 12);
	return s;
}

/* inflate a member, cancellable; returns PGLLM_OK or PGLLM_EFORMAT */
static int
inflate_member(const uint8 *comp, int64 csize, uint8 *out, int64 usize)
{
	int			rc;

	PGLLM_RESTARTABLE(rc, rc = pgllm_inflate(comp, csize, out, usize, pgllm_cancel));
	if (rc != PGLLM_EFORMAT)
		pgllm_kernel_status(rc, "inflate");
	return rc;
}

/* ---------------------------------------------------------------------------
 * reading the directory of a file
 * ------------------------------------------------------------------------- */
static WeightEntry *
npz_entries(int fd, const char *path, int64 size, int *count)
{
	int64		tail_len = Min(size, (int64) 65536 + 22 + 76 + 4096);
	uint8	   *tail = palloc(tail_len);
	int64		cd_off,
				cd_size,
				n,
				pos = 0,
				i;
	uint8	   *cd;
	WeightEntry *entries;

	pgllm_read_exact(fd, path, size - tail_len, tail, tail_len);
	if (pgllm_zip_find_cd(tail, tail_len, size, &cd_off, &cd_size, &n) != PGLLM_OK)
		bad_file(path, "no zip central directory (truncated?)");
	if (cd_size > MAX_CD_BYTES)
		bad_file(path, "central directory too large");
	cd = palloc(cd_size + 1);
	pgllm_read_exact(fd, path, cd_off, cd, cd_size);
	entries = palloc0(sizeof(WeightEntry) * Max(n, 1));
	for (i = 0; i < n; i++)
	{
		PgllmZipEntry z;
		uint8		lh[30];
		int64		skip;
		WeightEntry *e = &entries[i];
		uint8	   *head;
		int64		head_len;
		int64		data_off;

		if (pgllm_zip_next_entry(cd, cd_size, &pos, &z) != PGLLM_OK)
			bad_file(path, "malformed central directory");
		e->is_npz = true;
		e->name = clean_name((const char *) cd + z.name_off, z.name_len, true);
		if (e->name == NULL)
			bad_file(path, "a member of the archive is not a .npy array");
		if (z.method != 0 && z.method != 8)
			bad_file(path, "a member uses a compression other than deflate");
		if (z.local_offset < 0 || z.local_offset + 30 > size)
			bad_file(path, "a member lies outside the file");
		pgllm_read_exact(fd, path, z.local_offset, lh, 30);
		if (pgllm_zip_local_header_len(lh, 30, &skip) != PGLLM_OK)
			bad_file(path, "malformed local file header");
		e->method = z.method;
		e->offset = z.local_offset + skip;
		e->csize = z.csize;
		e->usize = z.usize;
		e->crc = z.crc32;
		if (e->offset > size || e->csize > size - e->offset)
			bad_file(path, "a member extends past the end of the file (truncated?)");
		/*
		 * The .npy header (at most 64 kB): read directly when stored, else
		 * inflated from the start of the member -- a member is inflated
		 * whole only when its tensor is read.
		 */
		head = palloc(NPY_HEAD_MAX);
		if (z.method == 0)
		{
			head_len = Min(e->csize, NPY_HEAD_MAX);
			pgllm_read_exact(fd, path, e->offset, head, head_len);
		}
		else
		{
			int64		clen = Min(e->csize, 4 * NPY_HEAD_MAX);
			uint8	   *comp = palloc(Max(clen, 1));
			int			rc;

			pgllm_read_exact(fd, path, e->offset, comp, clen);
			PGLLM_RESTARTABLE(rc, rc = pgllm_inflate_head(comp, clen, head, Min(e->usize, NPY_HEAD_MAX),
														  &head_len, pgllm_cancel));
			if (rc == PGLLM_EFORMAT)
				bad_file(path, "a compressed member is corrupt");
			pgllm_kernel_status(rc, "inflate");
			pfree(comp);
		}
		if (pgllm_npy_parse_header(head, head_len, &data_off, &e->is_f32, &e->fortran,
								   e->shape, &e->ndim) != PGLLM_OK)
			bad_file(path, "a member has no valid .npy header");
		e->data_skip = data_off;
		pfree(head);
	}
	*count = (int) n;
	return entries;
}

static WeightEntry *
safetensors_entries(int fd, const char *path, int64 size, int *count)
{
	uint8		lenbuf[8];
	int64		hlen,
				n = 0,
				nb = 0,
				err = 0,
				i;
	uint8	   *hdr;
	uint8	   *names;
	int64	   *name_off,
			   *name_len,
			   *shapes,
			   *begin,
			   *end;
	int32	   *dtype,
			   *ndim;
	WeightEntry *entries;

	pgllm_read_exact(fd, path, 0, lenbuf, 8);
	hlen = (int64) ((uint64) lenbuf[0] | (uint64) lenbuf[1] << 8 | (uint64) lenbuf[2] << 16 |
					(uint64) lenbuf[3] << 24 | (uint64) lenbuf[4] << 32 | (uint64) lenbuf[5] << 40 |
					(uint64) lenbuf[6] << 48 | (uint64) lenbuf[7] << 56);
	if (hlen <= 0 || hlen > MAX_CD_BYTES || hlen > size - 8)
		bad_file(path, "the safetensors header length is out of range (truncated?)");
	hdr = palloc(hlen + 1);
	pgllm_read_exact(fd, path, 8, hdr, hlen);
	if (pgllm_safetensors_parse(hdr, hlen, &n, &nb, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
								NULL, &err) != PGLLM_OK)
		bad_file(path, psprintf("malformed safetensors header at byte %lld", (long long) err));
	names = palloc(nb + 1);
	name_off = palloc(sizeof(int64) * Max(n, 1));
	name_len = palloc(sizeof(int64) * Max(n, 1));
	shapes = palloc0(sizeof(int64) * 8 * Max(n, 1));
	begin = palloc(sizeof(int64) * Max(n, 1));
	end = palloc(sizeof(int64) * Max(n, 1));
	dtype = palloc(sizeof(int32) * Max(n, 1));
	ndim = palloc(sizeof(int32) * Max(n, 1));
	if (pgllm_safetensors_parse(hdr, hlen, &n, &nb, names, name_off, name_len, dtype, ndim,
								shapes, begin, end, &err) != PGLLM_OK)
		bad_file(path, "malformed safetensors header");
	entries = palloc0(sizeof(WeightEntry) * Max(n, 1));
	for (i = 0; i < n; i++)
	{
		WeightEntry *e = &entries[i];

		e->name = clean_name((const char *) names + name_off[i], name_len[i], false);
		if (e->name == NULL)
			bad_file(path, "a tensor name contains NUL");
		e->is_f32 = dtype[i];
		e->ndim = ndim[i];
		memcpy(e->shape, shapes + 8 * i, sizeof(int64) * 8);
		if (begin[i] > end[i] || end[i] > size - 8 - hlen)
			bad_file(path, "a tensor's data offsets lie outside the file (truncated?)");
		e->offset = 8 + hlen + begin[i];
		e->csize = end[i] - begin[i];
		e->usize = e->csize;
	}
	*count = (int) n;
	return entries;
}

/* ---------------------------------------------------------------------------
 * import
 * ------------------------------------------------------------------------- */
static WeightEntry *
find_entry(WeightEntry *entries, int n, const char *name)
{
	int			i;
	WeightEntry *found = NULL;

	for (i = 0; i < n; i++)
		if (strcmp(entries[i].name, name) == 0)
		{
			if (found)
				ereport(ERROR,
						(errcode(ERRCODE_BAD_COPY_FILE_FORMAT),
						 errmsg("the file holds tensor \"%s\" twice", name)));
			found = &entries[i];
		}
	return found;
}

/* read an array's floats (as stored in the file: its own layout) into dst */
static void
read_entry(int fd, const char *path, const WeightEntry *e, float *dst, int64 nfloats)
{
	int64		nbytes = nfloats * (int64) sizeof(float);

	if (!e->is_npz)
	{
		if (e->csize != nbytes)
			bad_file(path, psprintf("tensor \"%s\" holds %lld bytes, its shape needs %lld",
									e->name, (long long) e->csize, (long long) nbytes));
		pgllm_read_exact(fd, path, e->offset, dst, nbytes);
		return;
	}
	if (e->usize != e->data_skip + nbytes)
		bad_file(path, psprintf("array \"%s\" holds %lld bytes, its header says %lld",
								e->name, (long long) (e->usize - e->data_skip),
								(long long) nbytes));
	if (e->method == 0)
	{
		uint8	   *head = palloc(e->data_skip);
		uint32		crc;

		pgllm_read_exact(fd, path, e->offset, head, e->data_skip);
		pgllm_read_exact(fd, path, e->offset + e->data_skip, dst, nbytes);
		crc = pgllm_crc32(0, head, e->data_skip);
		crc = pgllm_crc32(crc, (const uint8 *) dst, nbytes);
		if (crc != e->crc)
			bad_file(path, psprintf("array \"%s\" fails its CRC check (corrupt)", e->name));
		pfree(head);
	}
	else
	{
		uint8	   *comp = pgllm_alloc_bytes(Max(e->csize, 1), "a compressed tensor");
		uint8	   *raw = pgllm_alloc_bytes(Max(e->usize, 1), "an inflated tensor");

		pgllm_read_exact(fd, path, e->offset, comp, e->csize);
		if (inflate_member(comp, e->csize, raw, e->usize) != PGLLM_OK)
			bad_file(path, psprintf("array \"%s\" is corrupt (deflate)", e->name));
		if (pgllm_crc32(0, raw, e->usize) != e->crc)
			bad_file(path, psprintf("array \"%s\" fails its CRC check (corrupt)", e->name));
		memcpy(dst, raw + e->data_skip, nbytes);
		pgllm_free(comp, Max(e->csize, 1));
		pgllm_free(raw, Max(e->usize, 1));
	}
}

static bool
is_ignored_buffer(const char *name)
{
	const char *s = name;
	size_t		n = strlen(s);

	if (strcmp(s, "lm_head.weight") == 0)
		return true;
	/* h.<n>.attn.bias and h.<n>.attn.masked_bias: the causal mask buffers */
	if (strncmp(s, "h.", 2) == 0 &&
		((n > 10 && strcmp(s + n - 10, ".attn.bias") == 0) ||
		 (n > 17 && strcmp(s + n - 17, ".attn.masked_bias") == 0)))
		return true;
	return false;
}

PG_FUNCTION_INFO_V1(pg_llm_import_npz);
Datum
pg_llm_import_npz(PG_FUNCTION_ARGS)
{
	char	   *path;
	char	   *model;
	int			fd;
	int64		size;
	uint8		magic[9];
	WeightEntry *entries = NULL;
	int			n,
				i;
	WeightEntry *wte,
			   *wpe;
	PgllmGPT2Config cfg;
	int64		max_layer = -1;
	int64		sizes[PGLLM_NUM_PARAM_TENSORS];
	int64		total;
	float	   *flat,
			   *tmp;
	int			nparams;

	pgllm_require_primary("pg_llm_import_npz");
	if (PG_ARGISNULL(0) || PG_ARGISNULL(1))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("pg_llm_import_npz: path and model must not be NULL")));
	path = text_to_cstring(PG_GETARG_TEXT_PP(0));
	model = text_to_cstring(PG_GETARG_TEXT_PP(1));
	fd = pgllm_open_server_file(path, &size);
	if (size < 9)
		bad_file(path, "too short");
	pgllm_read_exact(fd, path, 0, magic, 9);
	if (magic[0] == 'P' && magic[1] == 'K')
		entries = npz_entries(fd, path, size, &n);
	else if (magic[8] == '{')
		entries = safetensors_entries(fd, path, size, &n);
	else
		bad_file(path, "neither a .npz archive nor a .safetensors file");

	/* the configuration the tensors imply */
	wte = find_entry(entries, n, "wte.weight");
	wpe = find_entry(entries, n, "wpe.weight");
	if (!wte || !wpe || wte->ndim != 2 || wpe->ndim != 2 || wte->shape[1] != wpe->shape[1])
		ereport(ERROR,
				(errcode(ERRCODE_DATA_EXCEPTION),
				 errmsg("file \"%s\" has no GPT-2 embeddings (wte.weight and wpe.weight, (vocab, d) and (positions, d))",
						path)));
	for (i = 0; i < n; i++)
	{
		const char *s = entries[i].name;

		if (strncmp(s, "h.", 2) == 0 && isdigit((unsigned char) s[2]))
			max_layer = Max(max_layer, strtol(s + 2, NULL, 10));
	}
	cfg.vocab = wte->shape[0];
	cfg.n_embd = wte->shape[1];
	cfg.n_positions = wpe->shape[0];
	cfg.n_layer = max_layer + 1;
	cfg.eps = 1e-5f;
	if (!PG_ARGISNULL(2))
		cfg.n_head = PG_GETARG_INT32(2);
	else
	{
		PgllmGPT2Config old;
		bool		exists = pgllm_model_exists(model);

		if (exists)
			pgllm_model_config(model, &old, NULL);
		if (exists && old.n_embd == cfg.n_embd)
			cfg.n_head = old.n_head;
		else if (cfg.n_embd % 64 == 0)
			cfg.n_head = cfg.n_embd / 64;	/* every GPT-2 size has 64-wide heads */
		else
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("pg_llm_import_npz: cannot tell n_head for n_embd %lld",
							(long long) cfg.n_embd),
					 errhint("Pass it: pg_llm_import_npz(path, model, n_head => ...).")));
	}
	if (cfg.n_layer < 1)
		ereport(ERROR,
				(errcode(ERRCODE_DATA_EXCEPTION),
				 errmsg("file \"%s\" has no transformer layers (h.0...)", path)));
	pgllm_config_check(&cfg, "pg_llm_import_npz");

	/* every tensor known, float32, of the right shape; each expected one present */
	for (i = 0; i < n; i++)
	{
		WeightEntry *e = &entries[i];
		int			kind,
					layer;
		int64		rows,
					cols;
		bool		hf_t;

		if (!pgllm_param_lookup(&cfg, e->name, &kind, &layer, &rows, &cols, &hf_t))
		{
			if (is_ignored_buffer(e->name))
				continue;
			ereport(ERROR,
					(errcode(ERRCODE_DATA_EXCEPTION),
					 errmsg("file \"%s\" has a tensor \"%s\" that GPT-2 does not have", path, e->name)));
		}
		if (!e->is_f32)
			ereport(ERROR,
					(errcode(ERRCODE_DATATYPE_MISMATCH),
					 errmsg("tensor \"%s\" in \"%s\" is not float32", e->name, path),
					 errhint("pg_llm stores float32; convert the checkpoint with scripts/convert_gpt2_checkpoint.py.")));
		{
			/* HuggingFace's shape: Conv1D weights are (in, out) */
			int64		want0 = hf_t ? cols : rows,
						want1 = hf_t ? rows : cols;
			bool		ok = (cols == 1) ? (e->ndim == 1 && e->shape[0] == rows)
				: (e->ndim == 2 && e->shape[0] == want0 && e->shape[1] == want1);

			if (!ok)
				ereport(ERROR,
						(errcode(ERRCODE_DATA_EXCEPTION),
						 errmsg("tensor \"%s\" in \"%s\" has the wrong shape", e->name, path),
						 errdetail(cols == 1 ? "Expected (%lld)." : "Expected (%lld, %lld).",
								   (long long) want0, (long long) want1)));
		}
	}
	nparams = pgllm_param_count(&cfg);
	total = pgllm_gpt2_param_sizes(&cfg, sizes);
	flat = pgllm_alloc_params(total, "model parameters");
	tmp = pgllm_alloc_floats(Max(cfg.vocab, 4 * cfg.n_embd) * cfg.n_embd, "a tensor");
	for (i = 0; i < nparams; i++)
	{
		int			kind,
					layer;
		char	   *name = pgllm_param_name(&cfg, i, &kind, &layer);
		WeightEntry *e = find_entry(entries, n, name);
		int64		rows,
					cols,
					count,
					off = pgllm_param_offset(&cfg, kind, layer, &count);
		bool		hf_t;

		CHECK_FOR_INTERRUPTS();
		if (e == NULL)
			ereport(ERROR,
					(errcode(ERRCODE_DATA_EXCEPTION),
					 errmsg("file \"%s\" lacks tensor \"%s\"", path, name)));
		(void) pgllm_param_lookup(&cfg, name, &kind, &layer, &rows, &cols, &hf_t);
		/* a Fortran-ordered (in, out) array is already (out, in) in memory */
		if (cols > 1 && (hf_t != (e->fortran != 0)))
		{
			read_entry(fd, path, e, tmp, count);
			pgllm_require_finite(tmp, count, name);
			/* file's row-major (cols x rows) -> ours (rows x cols) */
			PGLLM_KERNEL(pgllm_transpose(tmp, flat + off, cols, rows, pgllm_cancel));
		}
		else
		{
			read_entry(fd, path, e, flat + off, count);
			pgllm_require_finite(flat + off, count, name);
		}
	}
	/* a separate lm_head must be the tied wte */
	{
		WeightEntry *lm = find_entry(entries, n, "lm_head.weight");

		if (lm)
		{
			int64		count = cfg.vocab * cfg.n_embd;

			if (!lm->is_f32 || lm->ndim != 2 || lm->shape[0] != cfg.vocab || lm->shape[1] != cfg.n_embd)
				ereport(ERROR,
						(errcode(ERRCODE_DATA_EXCEPTION),
						 errmsg("lm_head.weight in \"%s\" is not a float32 (vocab, d) matrix", path)));
			read_entry(fd, path, lm, tmp, count);
			if (memcmp(tmp, flat, count * sizeof(float)) != 0)
				ereport(ERROR,
						(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
						 errmsg("lm_head.weight in \"%s\" differs from wte.weight", path),
						 errdetail("pg_llm's GPT-2 ties the output projection to the token embedding.")));
		}
	}
	CloseTransientFile(fd);
	pfree(tmp);

	/* the configuration and the parameters, in this transaction */
	pgllm_config_upsert(model, &cfg, true);
	pgllm_params_write(model, &cfg, flat, NULL, NULL, true);
	PG_RETURN_INT64(total);
}

/* ---------------------------------------------------------------------------
 * export
 * ------------------------------------------------------------------------- */
static void
write_all(int fd, const char *path, const void *buf, int64 len, int64 *pos)
{
	const char *p = buf;

	while (len > 0)
	{
		ssize_t		chunk = (ssize_t) Min(len, (int64) 64 * 1024 * 1024);
		ssize_t		w;

		CHECK_FOR_INTERRUPTS();
		w = write(fd, p, chunk);
		if (w < 0)
			ereport(ERROR,
					(errcode_for_file_access(),
					 errmsg("could not write file \"%s\": %m", path)));
		p += w;
		len -= w;
		*pos += w;
	}
}

typedef struct OutTensor
{
	char	   *name;
	int			ndim;
	int64		shape[8];
	float	   *data;			/* HuggingFace layout */
	int64		count;
} OutTensor;

static int
out_cmp(const void *a, const void *b)
{
	return strcmp(((const OutTensor *) a)->name, ((const OutTensor *) b)->name);
}

/* tensor i of the model in HuggingFace's layout and shape */
static void
hf_tensor(const PgllmGPT2Config *cfg, const float *flat, int i, OutTensor *t)
{
	int			kind,
				layer;
	int64		rows,
				cols,
				off;
	bool		hf_t;

	t->name = pgllm_param_name(cfg, i, &kind, &layer);
	off = pgllm_param_offset(cfg, kind, layer, &t->count);
	(void) pgllm_param_lookup(cfg, t->name, &kind, &layer, &rows, &cols, &hf_t);
	t->data = (float *) (flat + off);
	t->ndim = cols > 1 ? 2 : 1;
	t->shape[0] = hf_t ? cols : rows;
	t->shape[1] = hf_t ? rows : cols;
	if (hf_t)
	{
		t->data = pgllm_alloc_floats(t->count, "a tensor");
		PGLLM_KERNEL(pgllm_transpose(flat + off, t->data, rows, cols, pgllm_cancel));
	}
}

PG_FUNCTION_INFO_V1(pg_llm_export_npz);
Datum
pg_llm_export_npz(PG_FUNCTION_ARGS)
{
	char	   *path = text_to_cstring(PG_GETARG_TEXT_PP(0));
	char	   *model = text_to_cstring(PG_GETARG_TEXT_PP(1));
	size_t		plen = strlen(path);
	bool		npz = plen > 4 && pg_strcasecmp(path + plen - 4, ".npz") == 0;
	bool		st = plen > 12 && pg_strcasecmp(path + plen - 12, ".safetensors") == 0;
	char	   *tmp_path;
	PgllmGPT2Config cfg;
	int64		sizes[PGLLM_NUM_PARAM_TENSORS];
	float	   *flat;
	int			nparams,
				i;
	volatile int fd;
	int64		pos = 0;
	OutTensor  *ts;

	pgllm_require_file_role(true, "write server files");
	pgllm_check_path(path);
	if (!npz && !st)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("pg_llm_export_npz: the path must end in .npz or .safetensors")));
	pgllm_model_config(model, &cfg, NULL);
	flat = pgllm_alloc_floats(pgllm_gpt2_param_sizes(&cfg, sizes), "model parameters");
	if (!pgllm_params_read(model, &cfg, "data", flat))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("model \"%s\" has no parameters", model)));
	nparams = pgllm_param_count(&cfg);
	ts = palloc0(sizeof(OutTensor) * nparams);
	for (i = 0; i < nparams; i++)
		hf_tensor(&cfg, flat, i, &ts[i]);

	/*
	 * A new file that nobody else can have prepared: O_EXCL fails on
	 * anything already there, a planted symlink included (O_NOFOLLOW says so
	 * for a link to a missing target too), and mode 0600 keeps the weights
	 * to the server's OS user until the rename.
	 */
	tmp_path = psprintf("%s.tmp.%d", path, MyProcPid);
	pgllm_check_path(tmp_path);
	fd = OpenTransientFilePerm(tmp_path, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | PG_BINARY,
							   S_IRUSR | S_IWUSR);
	if (fd < 0)
	{
		int			err = errno;

		ereport(ERROR,
				(errcode_for_file_access(),
				 errmsg("could not create file \"%s\": %m", tmp_path),
				 err == EEXIST ?
				 errhint("Something is already at that temporary path (a file or a link): pg_llm never writes through it. Remove it, or export elsewhere.") : 0));
	}
	PG_TRY();
	{
		if (npz)
		{
			uint8	   *cdir = palloc(nparams * 256 + 256);
			int64		cd_len = 0;
			uint8		buf[512];
			int64		cd_off;

			for (i = 0; i < nparams; i++)
			{
				char	   *member = psprintf("%s.npy", ts[i].name);
				int64		mlen = strlen(member);
				int64		hlen = pgllm_npy_build_header(ts[i].shape, ts[i].ndim, buf);
				int64		nbytes = ts[i].count * (int64) sizeof(float);
				uint32		crc = pgllm_crc32(pgllm_crc32(0, buf, hlen),
											  (const uint8 *) ts[i].data, nbytes);
				uint8		lh[128 + 256];
				int64		local_off = pos;
				int64		lhlen = pgllm_zip_local_header((const uint8 *) member, mlen, crc,
														   hlen + nbytes, lh);

				write_all(fd, tmp_path, lh, lhlen, &pos);
				write_all(fd, tmp_path, buf, hlen, &pos);
				write_all(fd, tmp_path, ts[i].data, nbytes, &pos);
				cd_len += pgllm_zip_central_header((const uint8 *) member, mlen, crc,
												   hlen + nbytes, local_off, cdir + cd_len);
			}
			cd_off = pos;
			write_all(fd, tmp_path, cdir, cd_len, &pos);
			write_all(fd, tmp_path, buf, pgllm_zip_end_records(nparams, cd_off, cd_len, buf),
					  &pos);
		}
		else
		{
			const uint8 **names = palloc(sizeof(uint8 *) * nparams);
			int64	   *name_len = palloc(sizeof(int64) * nparams);
			int32	   *ndim = palloc(sizeof(int32) * nparams);
			int64	   *shapes = palloc0(sizeof(int64) * 8 * nparams);
			int64	   *begin = palloc(sizeof(int64) * nparams);
			int64	   *end = palloc(sizeof(int64) * nparams);
			int64		off = 0,
						hlen;
			uint8	   *hdr;
			uint8		lenbuf[8];
			int			b;

			qsort(ts, nparams, sizeof(OutTensor), out_cmp);
			for (i = 0; i < nparams; i++)
			{
				names[i] = (const uint8 *) ts[i].name;
				name_len[i] = strlen(ts[i].name);
				ndim[i] = ts[i].ndim;
				memcpy(shapes + 8 * i, ts[i].shape, sizeof(int64) * 8);
				begin[i] = off;
				off += ts[i].count * (int64) sizeof(float);
				end[i] = off;
			}
			hlen = pgllm_safetensors_build_header(nparams, names, name_len, ndim, shapes, begin,
												  end, NULL);
			hdr = palloc(hlen);
			(void) pgllm_safetensors_build_header(nparams, names, name_len, ndim, shapes, begin,
												  end, hdr);
			for (b = 0; b < 8; b++)
				lenbuf[b] = (uint8) (((uint64) hlen >> (8 * b)) & 0xFF);
			write_all(fd, tmp_path, lenbuf, 8, &pos);
			write_all(fd, tmp_path, hdr, hlen, &pos);
			for (i = 0; i < nparams; i++)
				write_all(fd, tmp_path, ts[i].data, ts[i].count * (int64) sizeof(float), &pos);
		}
		if (pg_fsync(fd) != 0)
			ereport(ERROR,
					(errcode_for_file_access(),
					 errmsg("could not fsync file \"%s\": %m", tmp_path)));
		if (CloseTransientFile(fd) != 0)
			ereport(ERROR,
					(errcode_for_file_access(),
					 errmsg("could not close file \"%s\": %m", tmp_path)));
		fd = -1;
		(void) durable_rename(tmp_path, path, ERROR);
	}
	PG_CATCH();
	{
		if (fd >= 0)
			CloseTransientFile(fd);
		unlink(tmp_path);
		PG_RE_THROW();
	}
	PG_END_TRY();
	PG_RETURN_INT64(pos);
}
