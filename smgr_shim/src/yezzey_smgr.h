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
 * The map of offloaded relation forks (yezzey_map.c), in shared memory that
 * grows as needed (a dshash table in a DSA area).  While the server runs it
 * is the authority: WAL records change it first, and the map files in
 * $PGDATA/pg_yezzey/map are its durable image, written eagerly where that
 * can be done and by every checkpoint (which fails while they cannot be).
 */

/*
 * At most this many layers lie over a segment's base object (a re-offload
 * that would add one more merges them into a new base instead).
 */
#define YZ_MAX_LAYERS 8

/*
 * A layer over a segment's base object: blocks a re-offload uploaded, which
 * the object's own footer lists (storage/src/layers.rs).
 */
typedef struct YzLayerInfo
{
	uint8_t		object_id[16];
	uint64_t	raw_len;
	uint64_t	stored_len;
} YzLayerInfo;

/* A segment as readers see it, and as the map lists it. */
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
	/* Bytes of the segment file uploaded, and of its object. */
	uint64_t	raw_len;
	uint64_t	stored_len;
	/*
	 * Layers over the base object (object_id), oldest first: a block is
	 * read from the newest layer holding it, else from the base.  On the
	 * retiring list an entry names one object (object_id) and has none.
	 */
	uint32_t	nlayers;
	YzLayerInfo layers[YZ_MAX_LAYERS];
	/*
	 * A block of the remote range was written locally since the offload, or
	 * the offload has not freed the local copy yet (it frees the pages the
	 * object holds after its record), so
	 * reads must look at the local file first.  While false, every block of
	 * the range is a hole (or still the bytes that were uploaded) and reads
	 * go straight to the object.
	 */
	bool		written;
	/*
	 * While the fork's map is pending (an offload uploading it): a block of
	 * the segment was written out to its local file since the map was put.
	 * Such a block may be newer than the object's copy, so the offload
	 * checks the segment's page LSNs before it frees them; a segment never
	 * touched holds nothing the object lacks, and is freed whole.
	 */
	bool		touched;
	/*
	 * The object's pages carry valid data checksums (the cluster had them
	 * on at the offload).  When the cluster verifies checksums now and the
	 * object's pages have none (pg_checksums --enable after the offload),
	 * reads set them.
	 */
	bool		page_checksums;
} YzSegInfo;

/* What state a fork's map is in. */
typedef enum YzForkState
{
	/* Uploading, not logged yet: readers ignore it; GC keeps its objects. */
	YZ_FORK_PENDING = 1,
	/* Logged: readers serve its remote ranges from the objects. */
	YZ_FORK_LIVE = 2,
	/* Its map file is damaged or missing: every read or write ERRORs. */
	YZ_FORK_BROKEN = 3
} YzForkState;

/* A fork's map, apart from its segments. */
typedef struct YzForkHead
{
	uint32_t	spc;
	uint32_t	db;
	uint32_t	rel;
	int32_t		fork;
	uint8_t		state;			/* YzForkState */
	bool		evicted;		/* the local copies were freed */
	bool		page_checksums; /* see YzSegInfo */
	bool		dirty;			/* its map file is not in step yet */
	int32_t		content;
	int32_t		owner_pid;		/* PENDING: the uploading process */
	uint64_t	writer;
	int64_t		offloaded_at;	/* Unix seconds */
	uint64_t	lsn;			/* the OFFLOAD record's insert position */
	uint64_t	clean_lsn;
	uint64_t	version;		/* bumped by every change */
	uint32_t	nsegs;
} YzForkHead;

/* An object that left the map, until its retired record is durable. */
typedef struct YzRetiring
{
	YzSegInfo	seg;
	int32_t		content;
	uint64_t	lsn;			/* WAL position at or after it left */
	int64_t		at;				/* Unix seconds */
	/*
	 * lsn 0: not retired but held while process owner_pid switches the
	 * fork's map (yz_map_hold): garbage collection keeps it; no retired
	 * record is written for it.
	 */
	int32_t		owner_pid;
	uint8_t		hold;			/* YzHold */
} YzRetiring;

/* Why an object is held (YzRetiring.hold). */
typedef enum YzHold
{
	YZ_HOLD_NONE = 0,
	/* Being uploaded for the switch: the new map will name it. */
	YZ_HOLD_NEW = 1,
	/* Named by the live map; the switch will retire it. */
	YZ_HOLD_SUPERSEDED = 2
} YzHold;

/* How much the map holds and takes. */
typedef struct YzMapUsage
{
	uint64_t	bytes;			/* shared memory of the map's area */
	uint64_t	limit;			/* yezzey.max_map_memory in bytes (0: none) */
	uint32_t	forks;
	uint32_t	segments;
	uint32_t	broken;
	uint32_t	pending;
	uint32_t	retiring;
	uint32_t	dirty;
} YzMapUsage;

/* Defines the map's settings and the shared-memory hooks (from yz_smgr_install). */
extern void yz_map_install(void);
/* Changes whenever what readers see changes (per-relation caches compare it). */
extern uint64_t yz_map_generation(void);
/* Unique per creation of shared memory (a postmaster start or a restart after a crash). */
extern uint64_t yz_boot_id(void);
/* Whether a relation has a LIVE or BROKEN fork. */
extern bool yz_map_rel_has_remote(uint32_t spc, uint32_t db, uint32_t rel);
/* The same, and in *pending whether it has a PENDING fork. */
extern bool yz_map_rel_forks(uint32_t spc, uint32_t db, uint32_t rel, bool *pending);
/* A block of a PENDING fork's segment is being written out (YzSegInfo.touched). */
extern void yz_map_note_pending_write(uint32_t spc, uint32_t db, uint32_t rel,
									  int32_t fork, uint32_t segno);
/*
 * A LIVE fork's segment: 1 found, 0 no such segment or fork, -1 the fork is
 * BROKEN.
 */
extern int	yz_map_get(uint32_t spc, uint32_t db, uint32_t rel, int32_t fork,
					   uint32_t segno, YzSegInfo *out);
/*
 * Inserts or replaces a fork's map (head->state, head->dirty as given).
 * False, changing nothing, when the map would grow past yezzey.max_map_memory
 * (only if `within_limit`) or its segment array cannot be allocated; an
 * ERROR if the tables themselves cannot grow (dynamic shared memory
 * exhausted), leaving the fork as it was.
 */
extern bool yz_map_put_fork(const YzForkHead *head, const YzSegInfo *segs,
							uint32_t nsegs, bool within_limit);
/* A fork's head and up to `max` of its segments; false if it has none. */
extern bool yz_map_get_fork(uint32_t spc, uint32_t db, uint32_t rel, int32_t fork,
							YzForkHead *head, YzSegInfo *segs, uint32_t max);
/*
 * Moves a fork from one state to another (false if it is not in `from`).
 * Allocates nothing: safe in a critical section.
 */
extern bool yz_map_set_state(uint32_t spc, uint32_t db, uint32_t rel, int32_t fork,
							 uint8_t from, uint8_t to);
extern bool yz_map_set_evicted(uint32_t spc, uint32_t db, uint32_t rel, int32_t fork);
/* Clears the dirty flag if the fork is still at `version`. */
extern void yz_map_mark_clean(uint32_t spc, uint32_t db, uint32_t rel, int32_t fork,
							  uint64_t version);
/* Every fork's head (any state), up to `max`; returns how many there are. */
extern uint32_t yz_map_list(YzForkHead *out, uint32_t max);
/*
 * Removes a fork (fork < 0: every fork of the relation).  The segments of a
 * LIVE fork move to the retiring list at `lsn` and `at`; PENDING and BROKEN
 * forks are dropped.  Returns how many forks were removed.
 */
extern int	yz_map_retire(uint32_t spc, uint32_t db, uint32_t rel, int32_t fork,
						  uint64_t lsn, int64_t at);
/* Removes this process's PENDING forks (an offload that failed). */
extern void yz_map_drop_pending(uint32_t spc, uint32_t db, uint32_t rel, int32_t fork);
/* The retiring list, up to `max`; returns its length. */
extern uint32_t yz_map_list_retiring(YzRetiring *out, uint32_t max);
/* Drops an entry of the retiring list (its record is durable). */
extern void yz_map_drop_retiring(const uint8_t *object_id);
/*
 * Records that a block at or after `first` of a segment is about to be
 * written locally; true when this changed the segment's flag (the fork is
 * then dirty, and the caller persists it before writing).
 */
extern bool yz_map_mark_written(uint32_t spc, uint32_t db, uint32_t rel, int32_t fork,
								uint32_t segno, uint32_t first);
/*
 * A re-offload's switch, in three steps around its WAL record.  Before it:
 * yz_map_stage copies the new segment array into the LIVE fork's entry
 * (false, changing nothing, if there is no LIVE fork, another switch is
 * staged, or memory (within_limit: yezzey.max_map_memory) does not allow
 * it), and yz_map_hold keeps objects from garbage collection meanwhile
 * (entries of the retiring list with lsn 0, r->hold saying why; an ERROR
 * if the list cannot grow).  With the record, yz_map_promote makes the
 * staged array the fork's (head's lsn, clean_lsn, offloaded_at, writer and
 * page_checksums with it; the written flags and remote ranges of segments
 * it keeps unchanged are carried over): it touches only the fork's entry
 * and allocates nothing, so it may run in a critical section.  After it,
 * yz_map_unstage(fork, lsn, at) retires the fork's superseded objects at
 * the record, drops its other holds and frees the old array; to abort,
 * yz_map_unstage(fork, 0, 0) drops its holds and the staged array.  A
 * process may stage several forks; one that exits is cleaned up as
 * unstage would for each (superseded objects the live map no longer names
 * retire at the current WAL position, the rest go).
 */
extern bool yz_map_stage(const YzForkHead *head, const YzSegInfo *segs, uint32_t nsegs,
						 bool within_limit);
extern void yz_map_hold(const YzRetiring *r);
extern bool yz_map_promote(const YzForkHead *head);
/* How many switches were promoted since shared memory was made. */
extern uint64_t yz_map_switches(void);
extern void yz_map_unstage(uint32_t spc, uint32_t db, uint32_t rel, int32_t fork,
						   uint64_t lsn, int64_t at);
/* Adds (or updates) an object of the retiring list: redo of a switch that retired it. */
extern void yz_map_add_retiring(const YzRetiring *r);
/*
 * Clears a segment's written flag once its local file holds nothing the
 * object lacks (the caller has made sure nothing writes it meanwhile).
 */
extern bool yz_map_clear_written(uint32_t spc, uint32_t db, uint32_t rel, int32_t fork,
								 uint32_t segno);
/* Clamps remote ranges to a fork's new length in blocks; returns segments changed. */
extern int	yz_map_truncate(uint32_t spc, uint32_t db, uint32_t rel, int32_t fork,
							uint32_t nblocks, uint32_t blocks_per_segment);
/* Whether some fork's map file or the manifest is not in step. */
extern bool yz_map_needs_persist(void);
/* Takes the "set of forks changed" flag (the manifest must be rewritten). */
extern bool yz_map_take_keys_changed(void);
extern void yz_map_set_keys_changed(void);
extern void yz_map_usage(YzMapUsage *out);

/* Blocks per segment file (RELSEG_SIZE of this build). */
extern uint32_t yz_blocks_per_segment(void);

/*
 * True when PostgreSQL verifies the checksum of every page it reads through
 * the storage manager (data checksums on; neither ignore_checksum_failure nor
 * zero_damaged_pages lets a bad page through).  New (all-zero) pages are the
 * exception: they pass without a checksum.
 */
extern bool yz_host_verifies_pages(void);

/* PostgreSQL's data checksum of a page at block `blkno` (storage/checksum.h). */
extern uint16_t yz_page_checksum(const void *page, uint32_t blkno);

/*
 * Implemented by the Rust extension; the C dispatch calls them only for
 * relations with remote segments.  They report failures with ereport.
 */
/* Fills buffers for blocks [first, first + n) of a segment from its object. */
extern void yezzey_remote_read(const YzSegInfo *seg, uint32_t first, uint32_t n, void **buffers);
/* Hints that blocks [first, first + n) of a segment will be read soon. */
extern void yezzey_remote_prefetch(const YzSegInfo *seg, uint32_t first, uint32_t n);
/*
 * Brings the map files of a relation's forks (fork < 0: all of them) in step
 * with the shared map; never ERRORs (what fails stays dirty for the next
 * checkpoint).  Not called inside critical sections.
 */
extern void yezzey_map_persist(uint32_t spc, uint32_t db, uint32_t rel, int32_t fork);
/* Loads the map files into the shared map (the first process that needs it). */
extern void yezzey_map_load(void);
/* From the postmaster whenever it creates shared memory: this start's identity. */
extern void yezzey_shmem_created(void);
/* From every checkpoint and restartpoint: makes pg_yezzey say what the map says (ERRORs if it cannot). */
extern void yezzey_checkpoint(uint64_t redo, int flags);
/* Raises the ERROR for a fork whose map is damaged or missing. */
extern void yezzey_broken_fork(uint32_t spc, uint32_t db, uint32_t rel, int32_t fork);
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
