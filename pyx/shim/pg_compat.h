/*
 * pg_compat.h -- the differences between the PostgreSQL versions pg_llm
 * builds against (14 to 18), each behind a PG_VERSION_NUM guard here and
 * nowhere else: the shims use the names this file defines.
 */
#ifndef PG_LLM_COMPAT_H
#define PG_LLM_COMPAT_H

#include "postgres.h"
#include "fmgr.h"
#include "utils/guc.h"

/* 16 moved the varlena access macros (VARATT_IS_EXTERNAL_ONDISK, ...) to varatt.h */
#if PG_VERSION_NUM >= 160000
#include "varatt.h"
#endif

/*
 * 18 replaced pg_attribute_noreturn(), written after a declarator, by
 * pg_noreturn, written before the declaration; gcc takes the attribute in
 * front as well.
 */
#if PG_VERSION_NUM < 180000
#define pg_noreturn pg_attribute_noreturn()
#endif

/* 18's magic block also names the module and its version, which
 * pg_get_loaded_modules() shows */
#if PG_VERSION_NUM >= 180000
#define PGLLM_MODULE_MAGIC PG_MODULE_MAGIC_EXT(.name = "pg_llm", .version = PG_LLM_VERSION)
#else
#define PGLLM_MODULE_MAGIC PG_MODULE_MAGIC
#endif

/* 15 reserves a settings prefix (unknown pg_llm.* names become errors); 14 warns */
#if PG_VERSION_NUM >= 150000
#define pgllm_reserve_guc_prefix(prefix) MarkGUCPrefixReserved(prefix)
#else
#define pgllm_reserve_guc_prefix(prefix) EmitWarningsOnPlaceholders(prefix)
#endif

/* InitMaterializedSRF() exists from 15 on; pg_llm.c spells it out for 14 */
#define PGLLM_HAVE_INIT_MATERIALIZED_SRF (PG_VERSION_NUM >= 150000)

#endif							/* PG_LLM_COMPAT_H */
