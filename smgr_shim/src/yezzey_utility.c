/*
 * yezzey_utility.c: a ProcessUtility hook for the database commands that
 * handle data files without the storage manager (see ext/src/utility.rs for
 * what the Rust side decides).
 *
 * The hook is C so that errors raised by the command itself pass through
 * with a plain longjmp, exactly as without yezzey; only the checks before
 * and the bookkeeping after call into Rust.
 */
#include "postgres.h"

#include "commands/dbcommands.h"
#include "commands/defrem.h"
#include "nodes/parsenodes.h"
#include "tcop/utility.h"

#include "yezzey_smgr.h"

static ProcessUtility_hook_type prev_utility_hook = NULL;

/* The template of CREATE DATABASE ... STRATEGY FILE_COPY, or NULL. */
static const char *
file_copy_template(CreatedbStmt *stmt)
{
	const char *template = "template1";
	bool		file_copy = false;
	ListCell   *lc;

	foreach(lc, stmt->options)
	{
		DefElem    *d = lfirst_node(DefElem, lc);

		/* "TEMPLATE = DEFAULT" has no argument: createdb's default applies. */
		if (d->arg == NULL)
			continue;
		if (strcmp(d->defname, "template") == 0)
			template = defGetString(d);
		else if (strcmp(d->defname, "strategy") == 0)
			file_copy = pg_strcasecmp(defGetString(d), "file_copy") == 0;
	}
	return file_copy ? template : NULL;
}

static bool
moves_tablespace(AlterDatabaseStmt *stmt)
{
	ListCell   *lc;

	foreach(lc, stmt->options)
	{
		if (strcmp(lfirst_node(DefElem, lc)->defname, "tablespace") == 0)
			return true;
	}
	return false;
}

static void
yz_process_utility(PlannedStmt *pstmt, const char *queryString,
				   bool readOnlyTree, ProcessUtilityContext context,
				   ParamListInfo params, QueryEnvironment *queryEnv,
				   DestReceiver *dest, QueryCompletion *qc)
{
	Node	   *stmt = pstmt->utilityStmt;
	Oid			dropped = InvalidOid;

	switch (nodeTag(stmt))
	{
		case T_CreatedbStmt:
			{
				const char *template = file_copy_template((CreatedbStmt *) stmt);

				if (template != NULL)
					yezzey_refuse_database_copy(get_database_oid(template, true), template, false);
				break;
			}
		case T_AlterDatabaseStmt:
			{
				AlterDatabaseStmt *s = (AlterDatabaseStmt *) stmt;

				if (moves_tablespace(s))
					yezzey_refuse_database_copy(get_database_oid(s->dbname, true), s->dbname, true);
				break;
			}
		case T_DropdbStmt:
			dropped = get_database_oid(((DropdbStmt *) stmt)->dbname, true);
			break;
		default:
			break;
	}

	if (prev_utility_hook)
		prev_utility_hook(pstmt, queryString, readOnlyTree, context, params,
						  queryEnv, dest, qc);
	else
		standard_ProcessUtility(pstmt, queryString, readOnlyTree, context,
								params, queryEnv, dest, qc);

	/*
	 * The directory is gone once dropdb returns (DROP DATABASE cannot run in
	 * a transaction block, so nothing rolls the removal back).
	 */
	if (OidIsValid(dropped))
		yezzey_forget_dropped_database(dropped);
}

void
yz_utility_install(void)
{
	prev_utility_hook = ProcessUtility_hook;
	ProcessUtility_hook = yz_process_utility;
}
