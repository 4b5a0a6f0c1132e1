/*
 * toast_read.c -- copy large bytea values straight out of their TOAST
 * relation with one sequential scan.
 *
 * Detoasting a value walks the TOAST index chunk by chunk (about 2 us per
 * 2 kB chunk: 0.5 s for gpt2-small's 500 MB).  A model's tensors were
 * written one after another, so their chunks lie together in the TOAST heap;
 * a sequential scan that copies the chunks of the wanted values to their
 * final place reads the same data in about a fifth of the time, with no
 * intermediate copy.  Only uncompressed external values qualify (llm_param's
 * columns have STORAGE EXTERNAL); anything unexpected makes the caller fall
 * back to ordinary detoasting.
 */
#include "pg_llm.h"

#include "access/detoast.h"
#include "access/heaptoast.h"
#include "access/relation.h"
#include "access/table.h"
#include "access/tableam.h"
#include "executor/tuptable.h"
#include "storage/bufmgr.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"

bool
pgllm_toast_external(Datum d, Oid *toastrelid, Oid *valueid, int64 *size)
{
	struct varlena *attr = (struct varlena *) DatumGetPointer(d);
	struct varatt_external ext;

	if (!VARATT_IS_EXTERNAL_ONDISK(attr))
		return false;
	VARATT_EXTERNAL_GET_POINTER(ext, attr);
	if (VARATT_EXTERNAL_IS_COMPRESSED(ext))
		return false;
	*toastrelid = ext.va_toastrelid;
	*valueid = ext.va_valueid;
	*size = VARATT_EXTERNAL_GET_EXTSIZE(ext);
	return true;
}

static int
target_cmp(const void *a, const void *b)
{
	Oid			x = ((const PgllmToastTarget *) a)->valueid;
	Oid			y = ((const PgllmToastTarget *) b)->valueid;

	return (x > y) - (x < y);
}

bool
pgllm_toast_fetch_many(Oid toastrelid, PgllmToastTarget *targets, int n)
{
	Relation	toastrel;
	TableScanDesc scan;
	TupleTableSlot *slot;
	int64		wanted = 0;
	bool		ok = true;
	int			i;
	uint64		ntuples = 0;

	if (n == 0)
		return true;
	for (i = 0; i < n; i++)
	{
		targets[i].got = 0;
		targets[i].chunks = 0;
		wanted += targets[i].size;
	}
	qsort(targets, n, sizeof(PgllmToastTarget), target_cmp);

	toastrel = table_open(toastrelid, AccessShareLock);
	/* scanning a TOAST table much larger than what we want costs more than
	 * the index walk: leave those to ordinary detoasting */
	if ((int64) RelationGetNumberOfBlocks(toastrel) * BLCKSZ > 4 * wanted + 64 * BLCKSZ ||
		RelationGetDescr(toastrel)->natts != 3)
	{
		table_close(toastrel, AccessShareLock);
		return false;
	}
	slot = table_slot_create(toastrel, NULL);
	scan = table_beginscan(toastrel, GetActiveSnapshot(), 0, NULL);
	while (ok && table_scan_getnextslot(scan, ForwardScanDirection, slot))
	{
		PgllmToastTarget key,
				   *t;
		Oid			id;
		int32		seq;
		struct varlena *chunk;
		int64		len,
					off;

		if ((++ntuples & 1023) == 0)
			CHECK_FOR_INTERRUPTS();
		slot_getallattrs(slot);
		if (slot->tts_isnull[0] || slot->tts_isnull[1] || slot->tts_isnull[2])
			continue;
		id = DatumGetObjectId(slot->tts_values[0]);
		key.valueid = id;
		t = bsearch(&key, targets, n, sizeof(PgllmToastTarget), target_cmp);
		if (t == NULL)
			continue;
		seq = DatumGetInt32(slot->tts_values[1]);
		chunk = (struct varlena *) DatumGetPointer(slot->tts_values[2]);
		if (VARATT_IS_EXTENDED(chunk) && !VARATT_IS_SHORT(chunk))
		{
			ok = false;			/* chunks are never compressed or external */
			break;
		}
		len = VARSIZE_ANY_EXHDR(chunk);
		off = (int64) seq * TOAST_MAX_CHUNK_SIZE;
		if (seq < 0 || len <= 0 || off + len > t->size ||
			(off + len < t->size && len != TOAST_MAX_CHUNK_SIZE))
		{
			ok = false;
			break;
		}
		memcpy(t->dest + off, VARDATA_ANY(chunk), len);
		t->got += len;
		t->chunks++;
	}
	table_endscan(scan);
	ExecDropSingleTupleTableSlot(slot);
	table_close(toastrel, AccessShareLock);
	for (i = 0; ok && i < n; i++)
		if (targets[i].got != targets[i].size ||
			targets[i].chunks != (targets[i].size + TOAST_MAX_CHUNK_SIZE - 1) / TOAST_MAX_CHUNK_SIZE)
			ok = false;
	return ok;
}
