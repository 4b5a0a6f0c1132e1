/*
 * shared_cache.c -- one copy of each model's weights and tokenizer per
 * server: a cache file per (database, config table, model, version, format)
 * under the data directory, mapped read-only and MAP_SHARED by every
 * backend, so that the page cache holds the one copy.  The format names the
 * contents ("float32" weights, the "tokenizer" image); what goes in a file
 * is the caller's (a fill callback), how files are named, checked, shared,
 * bounded and removed is this file's.  It needs neither
 * shared_preload_libraries nor POSIX shared memory (Docker's /dev/shm is
 * 64 MB).  ARCHITECTURE.md has the decision and its reasons.
 *
 * The table stays the truth; a file is only ever a copy of it:
 *  - a file is written under a temporary name, checksummed, fsynced (when
 *    fsync is on) and renamed, so a crash or kill -9 mid-build leaves no
 *    file under a name that is read (builds are serialized by build.lock, so
 *    a temporary file found by a builder is a dead builder's and removed);
 *  - its header names the server (system identifier), the database, the
 *    llm_model_config table's OID (new at each CREATE EXTENSION, whose
 *    version sequence starts again), the model, the format, the version
 *    with the key's stamp (a restore's setval can hand a number out again,
 *    never with the same stamp), and the size, and has its own CRC; a mismatch of any of them, or a data checksum that
 *    fails, makes it rebuilt; a version written by the calling transaction
 *    itself is never cached (it may never commit, and its number may come
 *    again after a crash);
 *  - the data checksum is verified once per change of the file: a stamp
 *    file (.ok) records the inode, size and ctime it was verified at, and a
 *    file whose stamp does not match them (written to, replaced) is hashed
 *    again before use;
 *  - a backend holds a shared flock on every file it maps; a file is
 *    removed only by whoever takes the exclusive lock, so never while
 *    mapped.  Locks go with their process, even under kill -9.
 * Space is bounded server-wide by pg_llm.model_cache_mb: files nobody maps
 * are removed oldest first to make room.  When a file cannot be written
 * (disk full, read-only directory) the backend keeps a private copy, as
 * before, with a WARNING.
 */
#include "pg_llm.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include "access/xlog.h"
#include "catalog/pg_type.h"
#include "common/hashfn.h"
#include "miscadmin.h"
#include "port/pg_crc32c.h"
#include "storage/fd.h"
#include "utils/builtins.h"
#include "utils/timestamp.h"

#define CACHE_DIR_NAME	"pgsql_tmp_pg_llm_cache"	/* pgsql_tmp*: base backups skip it */
#define CACHE_MAGIC		"pg_llm cache\n"
#define CACHE_LAYOUT	2			/* 2: data_len in bytes, any format */
#define CACHE_DATA_OFFSET 4096		/* the header's page; the data starts page-aligned */
#define CACHE_FORMAT_LEN 16

typedef struct PgllmCacheHeader
{
	char		magic[16];
	uint32		layout;
	pg_crc32c	header_crc;		/* of the header with this field zero */
	uint64		system_identifier;
	Oid			database;
	int32		name_len;
	int64		version;
	Oid			config_table;	/* llm_model_config's OID */
	int32		unused;
	int64		stamp;			/* the key's: PgllmCacheKey.stamp */
	int64		data_len;		/* bytes */
	int64		data_offset;
	uint64		data_checksum;	/* pgllm_checksum64 of the data */
	int64		built_at;		/* TimestampTz */
	char		format[CACHE_FORMAT_LEN];
	char		model[1024];	/* 200 characters of UTF-8 fit */
} PgllmCacheHeader;

StaticAssertDecl(sizeof(PgllmCacheHeader) <= CACHE_DATA_OFFSET, "the header fits its page");

typedef enum
{
	OPEN_OK,
	OPEN_MISSING,
	OPEN_INVALID
} OpenResult;

/* ---------------------------------------------------------------------------
 * names
 * ------------------------------------------------------------------------- */
static const char *
cache_dir(void)
{
	static char *dir = NULL;

	if (dir == NULL)
		dir = MemoryContextStrdup(TopMemoryContext, psprintf("%s/%s", DataDir, CACHE_DIR_NAME));
	return dir;
}

static uint64
model_hash(const char *model)
{
	return hash_bytes_extended((const unsigned char *) model, strlen(model), 0);
}

/* what a file of this format holds, for messages */
static const char *
contents_of(const PgllmCacheKey *key)
{
	return strcmp(key->format, PGLLM_CACHE_TOKENIZER) == 0 ? "tokenizer" : "weights";
}

/* <database oid>.<config table oid>.<model hash>.<version>.<format> */
static char *
cache_file_name(Oid database, const PgllmCacheKey *key)
{
	return psprintf("%u.%u.%016llx.%lld.%s", database, key->config_table,
					(unsigned long long) model_hash(key->model), (long long) key->version,
					key->format);
}

static bool
parse_cache_file_name(const char *name, Oid *database, uint64 *hash, int64 *version,
					  char *format)
{
	unsigned int db,
				table;
	unsigned long long h;
	long long	v;
	int			end = 0;

	if (sscanf(name, "%u.%u.%16llx.%lld.%15[a-z0-9]%n", &db, &table, &h, &v, format, &end) != 5 ||
		name[end] != '\0')
		return false;
	*database = db;
	*hash = h;
	*version = v;
	return true;
}

/* the directory, made on first use; false (with a WARNING) if it can't be */
static bool
cache_dir_ready(void)
{
	if (mkdir(cache_dir(), S_IRWXU) != 0 && errno != EEXIST)
	{
		ereport(WARNING,
				(errcode_for_file_access(),
				 errmsg("pg_llm: could not create the shared cache directory \"%s\": %m",
						cache_dir()),
				 errdetail("This backend keeps its own copies of the models' weights and tokenizers.")));
		return false;
	}
	return true;
}

/* ---------------------------------------------------------------------------
 * the header
 * ------------------------------------------------------------------------- */
static pg_crc32c
header_crc(const PgllmCacheHeader *h)
{
	PgllmCacheHeader copy = *h;
	pg_crc32c	crc;

	copy.header_crc = 0;
	INIT_CRC32C(crc);
	COMP_CRC32C(crc, &copy, sizeof(copy));
	FIN_CRC32C(crc);
	return crc;
}

static void
header_fill(PgllmCacheHeader *h, const PgllmCacheKey *key, int64 data_len)
{
	memset(h, 0, sizeof(*h));
	memcpy(h->magic, CACHE_MAGIC, sizeof(CACHE_MAGIC) - 1);
	h->layout = CACHE_LAYOUT;
	h->system_identifier = GetSystemIdentifier();
	h->database = MyDatabaseId;
	h->name_len = (int32) strlen(key->model);
	h->version = key->version;
	h->config_table = key->config_table;
	h->stamp = key->stamp;
	h->data_len = data_len;
	h->data_offset = CACHE_DATA_OFFSET;
	h->built_at = GetCurrentTimestamp();
	strlcpy(h->format, key->format, sizeof(h->format));
	memcpy(h->model, key->model, Min((size_t) h->name_len, sizeof(h->model) - 1));
}

/* the header is whole, this server's, and of what we want (key NULL: any;
 * data_len -1: any size) */
static bool
header_valid(const PgllmCacheHeader *h, off_t file_size, const PgllmCacheKey *key, int64 data_len)
{
	if (memcmp(h->magic, CACHE_MAGIC, sizeof(CACHE_MAGIC) - 1) != 0 ||
		h->layout != CACHE_LAYOUT || h->header_crc != header_crc(h) ||
		h->system_identifier != GetSystemIdentifier() ||
		h->data_offset != CACHE_DATA_OFFSET || h->data_len <= 0 ||
		h->name_len < 0 || h->name_len >= (int32) sizeof(h->model) ||
		h->model[h->name_len] != '\0' ||
		memchr(h->format, '\0', sizeof(h->format)) == NULL ||
		file_size != h->data_offset + h->data_len)
		return false;
	if (key == NULL)
		return true;
	return h->database == MyDatabaseId && h->config_table == key->config_table &&
		strcmp(h->model, key->model) == 0 && strcmp(h->format, key->format) == 0 &&
		h->version == key->version && h->stamp == key->stamp &&
		(data_len < 0 || h->data_len == data_len);
}

static bool
header_read(int fd, PgllmCacheHeader *h)
{
	return pg_pread(fd, h, sizeof(*h), 0) == (ssize_t) sizeof(*h);
}

/* ---------------------------------------------------------------------------
 * the verification stamp: <file>.ok holds "inode size ctime" of the file
 * as it was when its data checksum last matched
 * ------------------------------------------------------------------------- */
static char *
stamp_text(const struct stat *st)
{
	return psprintf("%llu %lld %lld.%09ld\n", (unsigned long long) st->st_ino,
					(long long) st->st_size, (long long) st->st_ctim.tv_sec,
					(long) st->st_ctim.tv_nsec);
}

static bool
stamp_matches(const char *path, const struct stat *st)
{
	char	   *stamp = psprintf("%s.ok", path);
	char	   *want = stamp_text(st);
	char		buf[128];
	int			fd = open(stamp, O_RDONLY | O_CLOEXEC);
	ssize_t		n;

	if (fd < 0)
		return false;
	n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (n <= 0)
		return false;
	buf[n] = '\0';
	return strcmp(buf, want) == 0;
}

/* written under a temporary name and renamed; a failure only costs a
 * verification next time */
static void
stamp_write(const char *path, const struct stat *st)
{
	char	   *stamp = psprintf("%s.ok", path);
	char	   *tmp = psprintf("%s.ok.tmp%d", path, MyProcPid);
	char	   *text = stamp_text(st);
	int			fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, S_IRUSR | S_IWUSR);
	bool		ok;

	if (fd < 0)
		return;
	ok = write(fd, text, strlen(text)) == (ssize_t) strlen(text);
	close(fd);
	if (!ok || rename(tmp, stamp) != 0)
		unlink(tmp);
}

/* ---------------------------------------------------------------------------
 * opening and mapping
 * ------------------------------------------------------------------------- */
static OpenResult
open_valid(const char *path, const PgllmCacheKey *key, int64 data_len, PgllmSharedFile *out)
{
	int			fd = open(path, O_RDONLY | O_CLOEXEC);
	struct stat st,
				now;
	PgllmCacheHeader h;
	void	   *base;

	if (fd < 0)
		return OPEN_MISSING;
	/* an exclusive holder is removing it; a file replaced meanwhile is not ours */
	if (flock(fd, LOCK_SH | LOCK_NB) != 0 || fstat(fd, &st) != 0 ||
		stat(path, &now) != 0 || now.st_ino != st.st_ino)
	{
		close(fd);
		return OPEN_MISSING;
	}
	if (!header_read(fd, &h) || !header_valid(&h, st.st_size, key, data_len))
	{
		close(fd);
		return OPEN_INVALID;
	}
	base = mmap(NULL, st.st_size, PROT_READ, MAP_SHARED, fd, 0);
	if (base == MAP_FAILED)
	{
		int			save = errno;

		close(fd);
		errno = save;
		ereport(ERROR,
				(errcode(ERRCODE_OUT_OF_MEMORY),
				 errmsg("pg_llm: could not map the shared cache file \"%s\": %m", path)));
	}
	if (!stamp_matches(path, &st))
	{
		if (pgllm_checksum64((const char *) base + h.data_offset, h.data_len) != h.data_checksum)
		{
			munmap(base, st.st_size);
			close(fd);
			return OPEN_INVALID;
		}
		stamp_write(path, &st);
	}
	out->base = base;
	out->len = st.st_size;
	out->fd = fd;
	strlcpy(out->path, path, sizeof(out->path));
	out->data = (const char *) base + h.data_offset;
	out->data_len = h.data_len;
	return OPEN_OK;
}

static bool remove_if_unmapped(const char *path);

void
pgllm_shared_unmap(PgllmSharedFile *w, bool outdated)
{
	if (w->base != NULL)
		munmap(w->base, w->len);
	if (w->fd >= 0)
		close(w->fd);			/* and with it the shared lock */
	w->base = NULL;
	w->fd = -1;
	/* a newer version exists: the last backend to leave this one removes it */
	if (outdated && w->path[0] != '\0')
		remove_if_unmapped(w->path);
}

/* ---------------------------------------------------------------------------
 * removal: only under the exclusive lock, so never a file someone maps
 * ------------------------------------------------------------------------- */
static bool
remove_if_unmapped(const char *path)
{
	int			fd = open(path, O_RDONLY | O_CLOEXEC);
	bool		removed = false;

	if (fd < 0)
		return errno == ENOENT;
	if (flock(fd, LOCK_EX | LOCK_NB) == 0)
	{
		char	   *stamp = psprintf("%s.ok", path);

		removed = unlink(path) == 0;
		unlink(stamp);
		pfree(stamp);
	}
	close(fd);
	return removed;
}

typedef struct CacheFile
{
	char	   *path;
	Oid			database;
	uint64		hash;
	int64		version;
	char		format[CACHE_FORMAT_LEN];
	off_t		size;
	time_t		mtime;
} CacheFile;

/* the cache files in the directory (temporary and stamp files aside) */
static List *
list_cache_files(void)
{
	DIR		   *dir = AllocateDir(cache_dir());
	struct dirent *de;
	List	   *files = NIL;

	if (dir == NULL)
		return NIL;
	while ((de = ReadDir(dir, cache_dir())) != NULL)
	{
		CacheFile  *f;
		struct stat st;
		Oid			database;
		uint64		hash;
		int64		version;
		char		format[CACHE_FORMAT_LEN];
		char	   *path;

		if (!parse_cache_file_name(de->d_name, &database, &hash, &version, format))
			continue;
		path = psprintf("%s/%s", cache_dir(), de->d_name);
		if (stat(path, &st) != 0)
			continue;
		f = palloc(sizeof(CacheFile));
		f->path = path;
		f->database = database;
		f->hash = hash;
		f->version = version;
		strlcpy(f->format, format, sizeof(f->format));
		f->size = st.st_size;
		f->mtime = st.st_mtime;
		files = lappend(files, f);
	}
	FreeDir(dir);
	return files;
}

/*
 * Under build.lock: temporary files of a dead builder (builds are
 * serialized, so any is dead), and stamps a reader did not finish writing a
 * minute ago (a stamp is written in microseconds).
 */
static void
remove_dead_builds(void)
{
	DIR		   *dir = AllocateDir(cache_dir());
	struct dirent *de;
	time_t		now = time(NULL);

	if (dir == NULL)
		return;
	while ((de = ReadDir(dir, cache_dir())) != NULL)
	{
		char	   *path = psprintf("%s/%s", cache_dir(), de->d_name);
		struct stat st;

		if (strstr(de->d_name, ".ok.tmp") != NULL)
		{
			if (stat(path, &st) == 0 && st.st_mtime < now - 60)
				unlink(path);
		}
		else if (strstr(de->d_name, ".tmp") != NULL)
			unlink(path);
		pfree(path);
	}
	FreeDir(dir);
}

static int
oldest_first(const ListCell *a, const ListCell *b)
{
	const CacheFile *fa = lfirst(a);
	const CacheFile *fb = lfirst(b);

	return (fa->mtime > fb->mtime) - (fa->mtime < fb->mtime);
}

int64
pgllm_model_cache_limit(const char *model, int64 need)
{
	int64		limit = (int64) pgllm_model_cache_mb * 1024 * 1024;

	if (need > limit)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("model \"%s\" needs %lld MB, more than pg_llm.model_cache_mb (%d MB)",
						model, (long long) (need >> 20), pgllm_model_cache_mb),
				 errhint("Raise pg_llm.model_cache_mb to %lld or more (ALTER SYSTEM, then pg_reload_conf()).",
						 (long long) (need >> 20) + 1)));
	return limit;
}

void
pgllm_shared_no_room(const char *model, int64 data_len)
{
	int64		need = data_len + CACHE_DATA_OFFSET;

	ereport(ERROR,
			(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
			 errmsg("pg_llm.model_cache_mb (%d MB) cannot hold model \"%s\" (%lld MB) besides the cached models in use",
					pgllm_model_cache_mb, model, (long long) (need >> 20)),
			 errhint("Raise pg_llm.model_cache_mb, or end the sessions that hold other models (the llm_cache view lists them).")));
}

/*
 * Under build.lock, before building the file of key (need bytes): other
 * versions of the model's file of that format in this database go, and then
 * the oldest files nobody maps (of the same format only, for a best-effort
 * key) until the new one fits pg_llm.model_cache_mb.  False if the files in
 * use leave no room.
 */
static bool
make_room(const PgllmCacheKey *key, int64 need)
{
	int64		limit = (int64) pgllm_model_cache_mb * 1024 * 1024;
	uint64		hash = model_hash(key->model);
	List	   *files;
	ListCell   *lc;
	int64		total = 0;

	if (!key->best_effort)
		(void) pgllm_model_cache_limit(key->model, need);	/* ERROR if it can never fit */
	else if (need > limit)
		return false;
	remove_dead_builds();
	files = list_cache_files();
	foreach(lc, files)
	{
		CacheFile  *f = lfirst(lc);

		if (f->database == MyDatabaseId && f->hash == hash && f->version != key->version &&
			strcmp(f->format, key->format) == 0 && remove_if_unmapped(f->path))
			f->size = 0;
		total += f->size;
	}
	list_sort(files, oldest_first);
	foreach(lc, files)
	{
		CacheFile  *f = lfirst(lc);

		if (total + need <= limit)
			break;
		if (key->best_effort && strcmp(f->format, key->format) != 0)
			continue;			/* a small file never costs a model's rebuild */
		if (f->size > 0 && remove_if_unmapped(f->path))
			total -= f->size;
	}
	return total + need <= limit;
}

void
pgllm_shared_forget(const char *model)
{
	uint64		hash = model_hash(model);
	ListCell   *lc;

	foreach(lc, list_cache_files())
	{
		CacheFile  *f = lfirst(lc);

		if (f->database == MyDatabaseId && f->hash == hash)
			remove_if_unmapped(f->path);
	}
}

/* ---------------------------------------------------------------------------
 * building
 * ------------------------------------------------------------------------- */
static int	build_lock_fd = -1;

static void
build_lock_release(void)
{
	if (build_lock_fd >= 0)
		close(build_lock_fd);
	build_lock_fd = -1;
}

/* build.lock, exclusive; waits interruptibly */
static void
build_lock_acquire(void)
{
	char	   *path = psprintf("%s/build.lock", cache_dir());

	build_lock_fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, S_IRUSR | S_IWUSR);
	if (build_lock_fd < 0)
		ereport(ERROR,
				(errcode_for_file_access(),
				 errmsg("pg_llm: could not open \"%s\": %m", path)));
	while (flock(build_lock_fd, LOCK_EX | LOCK_NB) != 0)
	{
		if (errno != EWOULDBLOCK && errno != EINTR)
		{
			int			save = errno;

			build_lock_release();
			errno = save;
			ereport(ERROR,
					(errcode_for_file_access(),
					 errmsg("pg_llm: could not lock \"%s\": %m", path)));
		}
		PG_TRY();
		{
			CHECK_FOR_INTERRUPTS();
		}
		PG_CATCH();
		{
			build_lock_release();
			PG_RE_THROW();
		}
		PG_END_TRY();
		pg_usleep(10 * 1000L);
	}
}

static void
fsync_or_error(int fd, const char *path)
{
	if (enableFsync && pg_fsync(fd) != 0)
		ereport(ERROR,
				(errcode_for_file_access(),
				 errmsg("pg_llm: could not fsync \"%s\": %m", path)));
}

/* write the file of key (fill gives its data); false (with a WARNING) if
 * there is no room on disk */
static bool
build(const char *path, const PgllmCacheKey *key, int64 data_len, PgllmCacheFill fill, void *arg)
{
	char	   *tmp = psprintf("%s.tmp%d", path, MyProcPid);
	off_t		size = CACHE_DATA_OFFSET + data_len;
	PgllmCacheHeader h;
	int			fd,
				rc;
	char	   *volatile base = NULL;

	fd = open(tmp, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, S_IRUSR | S_IWUSR);
	if (fd < 0)
	{
		ereport(WARNING,
				(errcode_for_file_access(),
				 errmsg("pg_llm: could not create the shared cache file \"%s\": %m", tmp),
				 errdetail("This backend keeps its own copy of the %s of model \"%s\".",
						   contents_of(key), key->model)));
		return false;
	}
	/* reserve every block now: a full disk is an error here, not a SIGBUS later */
	rc = posix_fallocate(fd, 0, size);
	if (rc != 0)
	{
		close(fd);
		unlink(tmp);
		errno = rc;
		ereport(WARNING,
				(errcode(rc == ENOSPC ? ERRCODE_DISK_FULL : ERRCODE_IO_ERROR),
				 errmsg("pg_llm: could not write the shared cache file of the %s of model \"%s\" (%lld MB): %m",
						contents_of(key), key->model, (long long) (size >> 20)),
				 errdetail("This backend keeps its own copy of the %s.", contents_of(key)),
				 errhint("Free space in \"%s\".", cache_dir())));
		return false;
	}
	PG_TRY();
	{
		base = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
		if (base == MAP_FAILED)
		{
			base = NULL;
			ereport(ERROR,
					(errcode(ERRCODE_OUT_OF_MEMORY),
					 errmsg("pg_llm: could not map \"%s\": %m", tmp)));
		}
		fill(base + CACHE_DATA_OFFSET, data_len, arg);
		header_fill(&h, key, data_len);
		h.data_checksum = pgllm_checksum64(base + CACHE_DATA_OFFSET, data_len);
		h.header_crc = header_crc(&h);
		memcpy(base, &h, sizeof(h));
		munmap(base, size);
		base = NULL;
		fsync_or_error(fd, tmp);
		if (rename(tmp, path) != 0)
			ereport(ERROR,
					(errcode_for_file_access(),
					 errmsg("pg_llm: could not rename \"%s\" to \"%s\": %m", tmp, path)));
		/* (not fsync_fname: its failure would be a PANIC, for a cache) */
		if (enableFsync)
			fsync_fname_ext(cache_dir(), true, false, ERROR);
	}
	PG_CATCH();
	{
		if (base != NULL)
			munmap(base, size);
		close(fd);
		unlink(tmp);
		PG_RE_THROW();
	}
	PG_END_TRY();
	{
		struct stat st;

		/* what was just hashed from memory needs no second pass */
		if (fstat(fd, &st) == 0)
			stamp_write(path, &st);
	}
	close(fd);
	return true;
}

static void
shared_file_init(PgllmSharedFile *out)
{
	out->base = NULL;
	out->len = 0;
	out->fd = -1;
	out->data = NULL;
	out->data_len = 0;
	out->path[0] = '\0';
}

static char *
cache_path(const PgllmCacheKey *key)
{
	return psprintf("%s/%s", cache_dir(), cache_file_name(MyDatabaseId, key));
}

bool
pgllm_shared_open(const PgllmCacheKey *key, PgllmSharedFile *out)
{
	shared_file_init(out);
	if (access(cache_dir(), F_OK) != 0)
		return false;
	return open_valid(cache_path(key), key, -1, out) == OPEN_OK;
}

/*
 * Map this database's file of key: as it is, or built with fill (data_len
 * bytes) when it is missing or invalid.
 */
PgllmSharedResult
pgllm_shared_map(const PgllmCacheKey *key, int64 data_len, PgllmCacheFill fill, void *arg,
				 PgllmSharedFile *out)
{
	char	   *path;
	int			attempt;

	shared_file_init(out);
	if (!cache_dir_ready())
		return PGLLM_SHARED_UNAVAILABLE;
	path = cache_path(key);
	for (attempt = 0; attempt < 3; attempt++)
	{
		volatile OpenResult r = open_valid(path, key, data_len, out);
		volatile bool built = false;
		volatile bool room = true;

		if (r == OPEN_OK)
			return PGLLM_SHARED_MAPPED;
		build_lock_acquire();
		PG_TRY();
		{
			/* another backend may have built it while we waited */
			r = open_valid(path, key, data_len, out);
			if (r != OPEN_OK)
			{
				if (r == OPEN_INVALID)
				{
					char	   *stamp = psprintf("%s.ok", path);

					/* (anyone still mapping the old inode keeps it) */
					unlink(path);
					unlink(stamp);
				}
				room = make_room(key, data_len + CACHE_DATA_OFFSET);
				if (room)
					built = build(path, key, data_len, fill, arg);
			}
		}
		PG_FINALLY();
		{
			build_lock_release();
		}
		PG_END_TRY();
		if (r == OPEN_OK)
			return PGLLM_SHARED_MAPPED;
		if (!room)
			return PGLLM_SHARED_NO_ROOM;
		if (!built)
			return PGLLM_SHARED_UNAVAILABLE;
	}
	ereport(WARNING,
			(errmsg("pg_llm: the shared cache file of the %s of model \"%s\" was replaced while it was being opened",
					contents_of(key), key->model),
			 errdetail("This backend keeps its own copy of the %s.", contents_of(key))));
	return PGLLM_SHARED_UNAVAILABLE;
}

/* ---------------------------------------------------------------------------
 * SQL: pg_llm_cache_files(), behind the llm_cache view
 * ------------------------------------------------------------------------- */

/* inode -> pids holding a shared flock, from /proc/locks (Linux); NULL elsewhere */
typedef struct LockHolder
{
	unsigned int major,
				minor;
	uint64		inode;
	int			pid;
} LockHolder;

static List *
flock_holders(bool *known)
{
	FILE	   *f = AllocateFile("/proc/locks", "r");
	char		line[256];
	List	   *holders = NIL;

	*known = f != NULL;
	if (f == NULL)
		return NIL;
	while (fgets(line, sizeof(line), f))
	{
		char		type[16],
					kind[16],
					mode[16];
		int			pid;
		unsigned int major,
					minor;
		unsigned long long inode;
		char	   *p = strchr(line, ':');
		LockHolder *h;

		if (p == NULL || strstr(line, "->") != NULL)	/* waiters */
			continue;
		if (sscanf(p + 1, "%15s %15s %15s %d %x:%x:%llu", type, kind, mode, &pid, &major, &minor,
				   &inode) != 7 || strcmp(type, "FLOCK") != 0 || strcmp(mode, "READ") != 0)
			continue;
		h = palloc(sizeof(LockHolder));
		h->major = major;
		h->minor = minor;
		h->inode = inode;
		h->pid = pid;
		holders = lappend(holders, h);
	}
	FreeFile(f);
	return holders;
}

/* pg_llm_cache_files() -> SETOF (model, version, format, mb, built_at, backends int[])
 * of this database */
PG_FUNCTION_INFO_V1(pg_llm_cache_files);
Datum
pg_llm_cache_files(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = pgllm_materialized_srf(fcinfo);
	bool		known;
	List	   *holders = flock_holders(&known);
	ListCell   *lc;

	foreach(lc, list_cache_files())
	{
		CacheFile  *f = lfirst(lc);
		PgllmCacheHeader h;
		struct stat st;
		int			fd;
		bool		ok;
		Datum		values[6];
		bool		nulls[6] = {false, false, false, false, false, false};
		Datum	   *pids;
		int			npids = 0;
		ListCell   *hc;

		if (f->database != MyDatabaseId)
			continue;
		fd = open(f->path, O_RDONLY | O_CLOEXEC);
		if (fd < 0)
			continue;
		ok = fstat(fd, &st) == 0 && header_read(fd, &h) &&
			header_valid(&h, st.st_size, NULL, -1) && h.database == MyDatabaseId;
		close(fd);
		if (!ok)
			continue;
		values[0] = CStringGetTextDatum(h.model);
		values[1] = Int64GetDatum(h.version);
		values[2] = CStringGetTextDatum(h.format);
		values[3] = Float8GetDatum((double) st.st_size / (1024.0 * 1024.0));
		values[4] = TimestampTzGetDatum((TimestampTz) h.built_at);
		pids = palloc(sizeof(Datum) * (list_length(holders) + 1));
		foreach(hc, holders)
		{
			LockHolder *lh = lfirst(hc);

			if (lh->inode == (uint64) st.st_ino && lh->major == major(st.st_dev) &&
				lh->minor == minor(st.st_dev))
				pids[npids++] = Int32GetDatum(lh->pid);
		}
		if (known)
			values[5] = PointerGetDatum(construct_array(pids, npids, INT4OID, sizeof(int32), true,
														TYPALIGN_INT));
		else
			nulls[5] = true;
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	return (Datum) 0;
}
