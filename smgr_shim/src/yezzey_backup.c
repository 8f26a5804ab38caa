/*
 * yezzey_backup.c: the base-backup hooks (gp_patches/0003).
 *
 * Every base backup the server takes, pg_backup_start() or BASE_BACKUP,
 * whatever tool asked for it, is registered by the extension when it starts
 * (after its start checkpoint, before any file is copied: an ERROR aborts
 * it) and marked stopped when it stops, so that garbage collection keeps
 * every object the backup may need for as long as the backup exists.
 */
#include "postgres.h"

#include "access/xlog.h"
#include "access/xlogbackup.h"

#include "yezzey_smgr.h"

static backup_hook_type prev_start_hook = NULL;
static backup_hook_type prev_stop_hook = NULL;

static void
yz_backup_start(const BackupState *state)
{
	if (prev_start_hook)
		prev_start_hook(state);
	yezzey_backup_started(state->name, state->startpoint, state->starttli);
}

static void
yz_backup_stop(const BackupState *state)
{
	if (prev_stop_hook)
		prev_stop_hook(state);
	yezzey_backup_stopped(state->startpoint, state->stoppoint);
}

void
yz_backup_install(void)
{
	prev_start_hook = backup_start_hook;
	backup_start_hook = yz_backup_start;
	prev_stop_hook = backup_stop_hook;
	backup_stop_hook = yz_backup_stop;
}
