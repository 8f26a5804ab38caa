/*
 * yezzey_smgr.h: the C shim between PostgreSQL's pluggable storage manager
 * (gp_patches/postgresql-17) and the yezzey extension.
 *
 * The shim owns yezzey's f_smgr table.  Every call on a permanent relation
 * lands here first and goes straight to md unless the relation has segments
 * in object storage, so relations that were never offloaded pay a branch and
 * a counter increment, and never enter Rust.
 *
 * Only plain C types cross this header so bindgen can bind it without
 * PostgreSQL's headers leaking into Rust.
 */
#ifndef YEZZEY_SMGR_H
#define YEZZEY_SMGR_H

#include <stdbool.h>
#include <stdint.h>

/* Indexes into the per-backend call counters. */
typedef enum YzSmgrCall
{
	YZ_CALL_OPEN = 0,
	YZ_CALL_CLOSE,
	YZ_CALL_CREATE,
	YZ_CALL_EXISTS,
	YZ_CALL_UNLINK,
	YZ_CALL_EXTEND,
	YZ_CALL_ZEROEXTEND,
	YZ_CALL_PREFETCH,
	YZ_CALL_READV,
	YZ_CALL_WRITEV,
	YZ_CALL_WRITEBACK,
	YZ_CALL_NBLOCKS,
	YZ_CALL_TRUNCATE,
	YZ_CALL_IMMEDSYNC,
	YZ_CALL_REGISTERSYNC,
	YZ_CALL_COUNT
} YzSmgrCall;

/* Names of the counters, in YzSmgrCall order. */
extern const char *const yz_smgr_call_names[YZ_CALL_COUNT];

/*
 * Registers the storage manager and installs the selection hook.  Must run
 * from _PG_init while shared_preload_libraries load (smgr_register ERRORs
 * otherwise).  Returns the storage manager id.
 */
extern int	yz_smgr_install(void);

/* True once yz_smgr_install() has run in this process's postmaster. */
extern bool yz_smgr_installed(void);

/* This backend's call counters (YZ_CALL_COUNT entries) and their reset. */
extern const uint64_t *yz_smgr_call_counts(void);
extern void yz_smgr_reset_call_counts(void);

/* How many SMgrRelations this backend opened through yezzey vs md. */
extern uint64_t yz_smgr_opened_yezzey(void);
extern uint64_t yz_smgr_opened_md(void);

#endif							/* YEZZEY_SMGR_H */
