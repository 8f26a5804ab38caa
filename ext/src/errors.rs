//! The one way yezzey raises errors: every error a user can meet carries
//! an SQLSTATE a client can act on, the message, and a hint saying what to
//! check. Storage-core errors are grouped by what an operator does about
//! them ([`report`]); file-system errors by their kind ([`io`]).
use pgrx::pg_sys::panic::ErrorReport;
use pgrx::{PgLogLevel, PgSqlErrorCode};
use yezzey_storage::Error;

/// Raises `err` as an ERROR; `context` says what yezzey was doing.
pub fn report(err: Error, context: &str) -> ! {
    let (code, hint): (PgSqlErrorCode, String) = match &err {
        Error::Corrupt { .. } => (
            PgSqlErrorCode::ERRCODE_DATA_CORRUPTED,
            "The object failed verification and was not used. Check that yezzey.storage_url points at this cluster's objects and that the object was not modified; restore it from a backup if it was.".into(),
        ),
        Error::UnknownKey { key_id, .. } => (
            PgSqlErrorCode::ERRCODE_INVALID_AUTHORIZATION_SPECIFICATION,
            format!("Add the key with id {key_id:08x} to the file named by yezzey.key_file (old keys stay readable while listed there)."),
        ),
        Error::KeyRequired { .. } => (
            PgSqlErrorCode::ERRCODE_INVALID_AUTHORIZATION_SPECIFICATION,
            "Set yezzey.key_file to the file holding the key the object was written with.".into(),
        ),
        Error::BadKey(_) => (
            PgSqlErrorCode::ERRCODE_CONFIG_FILE_ERROR,
            "A key file holds 64 hexadecimal digits per line; generate one with `yezzey-tool keygen`.".into(),
        ),
        Error::NotFound(m) if m.contains("bucket") => (
            PgSqlErrorCode::ERRCODE_UNDEFINED_OBJECT,
            "Create the bucket, or fix yezzey.storage_url.".into(),
        ),
        Error::NotFound(_) => (
            PgSqlErrorCode::ERRCODE_UNDEFINED_FILE,
            "The object is missing from the store: check yezzey.storage_url; if it was deleted, restore it from a backup.".into(),
        ),
        Error::AccessDenied(_) => (
            PgSqlErrorCode::ERRCODE_INVALID_AUTHORIZATION_SPECIFICATION,
            "Check yezzey.s3_access_key_id and yezzey.s3_secret_access_key (or AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY) and the key's permissions on the bucket.".into(),
        ),
        Error::Timeout(_) => (
            PgSqlErrorCode::ERRCODE_CONNECTION_FAILURE,
            "The object store did not answer within yezzey.timeout; check that it is running and reachable.".into(),
        ),
        Error::Store(_) => (
            PgSqlErrorCode::ERRCODE_CONNECTION_FAILURE,
            "Check yezzey.s3_endpoint and that the object store is running and reachable.".into(),
        ),
        Error::Config(_) => (
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            "Set yezzey.storage_url (s3://bucket/prefix or an absolute directory) and the yezzey.* settings in postgresql.conf, then reload.".into(),
        ),
        Error::Io { source, .. } if source.kind() == std::io::ErrorKind::StorageFull => (
            PgSqlErrorCode::ERRCODE_DISK_FULL,
            "Free space on the file system named in the message.".into(),
        ),
        Error::Io { .. } => (PgSqlErrorCode::ERRCODE_IO_ERROR, "Check free space and permissions.".into()),
    };
    ErrorReport::new(code, format!("{context}: {err}"), "yezzey")
        .set_hint(hint)
        .report(PgLogLevel::ERROR);
    unreachable!("ERROR does not return")
}

/// Raises a file-system failure as an ERROR; `context` says what yezzey
/// was doing.
pub fn io(err: std::io::Error, context: &str) -> ! {
    let (code, hint) = match err.kind() {
        std::io::ErrorKind::StorageFull => (
            PgSqlErrorCode::ERRCODE_DISK_FULL,
            "Free space on the file system of the data directory.",
        ),
        std::io::ErrorKind::PermissionDenied => (
            PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
            "Check the ownership and permissions of the data directory's pg_yezzey folder.",
        ),
        _ if err.raw_os_error() == Some(libc::EMFILE)
            || err.raw_os_error() == Some(libc::ENFILE) =>
        {
            (
                PgSqlErrorCode::ERRCODE_INSUFFICIENT_RESOURCES,
                "Raise the server's open-file limit (ulimit -n) or lower max_files_per_process.",
            )
        }
        _ => (
            PgSqlErrorCode::ERRCODE_IO_ERROR,
            "Check the server log and the file system of the data directory.",
        ),
    };
    error(code, format!("{context}: {err}"), hint)
}

/// [`io`] with a detail, and a hint of the caller's.
pub fn io_detail(err: std::io::Error, context: &str, detail: &str, hint: &str) -> ! {
    let code = match err.kind() {
        std::io::ErrorKind::StorageFull => PgSqlErrorCode::ERRCODE_DISK_FULL,
        std::io::ErrorKind::PermissionDenied => PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
        _ => PgSqlErrorCode::ERRCODE_IO_ERROR,
    };
    error_detail(code, format!("{context}: {err}"), detail.into(), hint)
}

/// Raises a plain ERROR with an SQLSTATE, a message and a hint.
pub fn error(code: PgSqlErrorCode, message: String, hint: &str) -> ! {
    ErrorReport::new(code, message, "yezzey")
        .set_hint(hint.to_string())
        .report(PgLogLevel::ERROR);
    unreachable!("ERROR does not return")
}

/// Raises an ERROR with an SQLSTATE, a message, a detail and a hint.
pub fn error_detail(code: PgSqlErrorCode, message: String, detail: String, hint: &str) -> ! {
    ErrorReport::new(code, message, "yezzey")
        .set_detail(detail)
        .set_hint(hint.to_string())
        .report(PgLogLevel::ERROR);
    unreachable!("ERROR does not return")
}

/// Sends a NOTICE with a detail and a hint (advice; the command goes on).
pub fn notice(message: String, detail: String, hint: &str) {
    ErrorReport::new(
        PgSqlErrorCode::ERRCODE_SUCCESSFUL_COMPLETION,
        message,
        "yezzey",
    )
    .set_detail(detail)
    .set_hint(hint.to_string())
    .report(PgLogLevel::NOTICE);
}

/// Raises an ERROR unless the session's role is a superuser; `what` names
/// the action ("offload relations").
pub fn require_superuser(what: &str) {
    if !crate::pg::is_superuser() {
        error(
            PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
            format!("permission denied to {what}"),
            &format!("Only superusers can {what}."),
        );
    }
}
