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

/* This backend's call counters (YZ_CALL_COUNT entries) and their reset. */
extern const uint64_t *yz_smgr_call_counts(void);
extern void yz_smgr_reset_call_counts(void);

/* How many SMgrRelations this backend opened through yezzey vs md. */
extern uint64_t yz_smgr_opened_yezzey(void);
extern uint64_t yz_smgr_opened_md(void);

/*
 * The map of offloaded segments (yezzey_map.c), in shared memory.
 */
typedef struct YzSegInfo
{
	uint32_t	spc;
	uint32_t	db;
	uint32_t	rel;
	int32_t		fork;
	uint32_t	segno;
	/* Blocks [0, remote_blocks) of the segment are backed by the object. */
	uint32_t	remote_blocks;
	uint8_t		object_id[16];
	/* The lineage member that wrote the object (0: before lineages). */
	uint64_t	writer;
	/*
	 * WAL insert position before the relation was flushed for its upload:
	 * a page of the remote range whose LSN is at most this holds nothing the
	 * object lacks but hint bits (when hint bits are WAL-logged), so it is
	 * never written back locally.  0: no such promise (older maps).
	 */
	uint64_t	clean_lsn;
	/*
	 * A block of the remote range was written locally since the offload, so
	 * reads must look at the local file first.  While false, every block of
	 * the range is a hole (or still the bytes that were uploaded) and reads
	 * go straight to the object.
	 */
	bool		written;
} YzSegInfo;

extern int	yz_max_segments;

/* Defines yezzey.max_segments and the shared-memory hooks (from yz_smgr_install). */
extern void yz_map_install(void);
extern uint64_t yz_map_generation(void);
extern bool yz_map_rel_has_remote(uint32_t spc, uint32_t db, uint32_t rel);
extern bool yz_map_get(uint32_t spc, uint32_t db, uint32_t rel, int32_t fork,
					   uint32_t segno, YzSegInfo *out);
/* Inserts or replaces; false when the map is full. */
extern bool yz_map_put(const YzSegInfo *seg);
/* Removes every segment of a fork (fork < 0: of every fork); returns how many. */
extern int	yz_map_remove(uint32_t spc, uint32_t db, uint32_t rel, int32_t fork);
/*
 * Records that a block at or after `first` of a segment is about to be
 * written locally; true when this changed the segment's flag (the caller
 * then persists it before writing).
 */
extern bool yz_map_mark_written(uint32_t spc, uint32_t db, uint32_t rel, int32_t fork,
								uint32_t segno, uint32_t first);
/* Clamps remote ranges to a fork's new length in blocks; returns entries changed. */
extern int	yz_map_truncate(uint32_t spc, uint32_t db, uint32_t rel, int32_t fork,
							uint32_t nblocks, uint32_t blocks_per_segment);

/* Blocks per segment file (RELSEG_SIZE of this build). */
extern uint32_t yz_blocks_per_segment(void);

/*
 * True when PostgreSQL verifies the checksum of every page it reads through
 * the storage manager (data checksums on; neither ignore_checksum_failure nor
 * zero_damaged_pages lets a bad page through).  New (all-zero) pages are the
 * exception: they pass without a checksum.
 */
extern bool yz_host_verifies_pages(void);

/*
 * Implemented by the Rust extension; the C dispatch calls them only for
 * relations with remote segments.  They report failures with ereport.
 */
/* Fills buffers for blocks [first, first + n) of a segment from its object. */
extern void yezzey_remote_read(const YzSegInfo *seg, uint32_t first, uint32_t n, void **buffers);
/* Hints that blocks [first, first + n) of a segment will be read soon. */
extern void yezzey_remote_prefetch(const YzSegInfo *seg, uint32_t first, uint32_t n);
/* Rewrites the durable map file of a fork after the shared map changed
 * underneath it (truncate, unlink, relfilenumber reuse, a first local write). */
extern void yezzey_map_persist(uint32_t spc, uint32_t db, uint32_t rel, int32_t fork);
/* Loads the durable map into shared memory (postmaster start and restart). */
extern void yezzey_map_load(void);
/* ERRORs if database `db` (InvalidOid: none) has offloaded relations, which
 * CREATE DATABASE ... FILE_COPY (is_move false) or ALTER DATABASE ... SET
 * TABLESPACE (is_move true) would copy as files. */
extern void yezzey_refuse_database_copy(uint32_t db, const char *name, bool is_move);
/* Forgets the maps of a database DROP DATABASE has just removed. */
extern void yezzey_forget_dropped_database(uint32_t db);

/* Installs the ProcessUtility hook of yezzey_utility.c (from _PG_init). */
extern void yz_utility_install(void);

/* Installs the base-backup hooks of yezzey_backup.c (from _PG_init). */
extern void yz_backup_install(void);
/* A base backup started: registers it (ERRORs if it cannot, aborting it). */
extern void yezzey_backup_started(const char *label, uint64_t start_lsn, uint32_t timeline);
/* A base backup stopped: records its stop point (warns if it cannot). */
extern void yezzey_backup_stopped(uint64_t start_lsn, uint64_t stop_lsn);

#endif							/* YEZZEY_SMGR_H */
