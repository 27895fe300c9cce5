//! Backup and restore of a control plane's state: the store (SQLite copied with
//! `VACUUM INTO` while the server runs; PostgreSQL with the `pg_dump` line printed) and the
//! CA and server identity in `pki/` (without them every agent would have to enroll again)
//! and the admin token.
//!
//! A backup is a directory: `manifest.json`, `vantage.db` (SQLite), `pki/…`, `admin-token`.
//! It is written under a temporary name and renamed when complete, so a failed backup
//! leaves no directory that looks whole. Restore checks everything before it writes
//! anything, and refuses a data dir that already holds a store or a CA.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::app::ADMIN_TOKEN_FILE;
use crate::store::{Store, StoreError};

/// The backup format this build writes and reads.
pub const FORMAT: u32 = 1;
const MANIFEST: &str = "manifest.json";
const SQLITE_FILE: &str = "vantage.db";
const PKI_DIR: &str = "pki";

/// What a backup holds, written last.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    pub format: u32,
    pub created_at_ms: i64,
    /// `sqlite` or `postgres`.
    pub backend: String,
    pub version: String,
    /// Files of the backup, relative to its directory.
    pub files: Vec<String>,
}

/// Why a backup or restore was refused or failed; nothing was changed unless it says so.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("{0} already exists; give a new directory")]
    Exists(PathBuf),
    #[error("{0} is not a Vantage backup: {1}")]
    NotABackup(PathBuf, String),
    #[error(
        "{0} already holds a store or a CA; restore into an empty data dir (the server stopped)"
    )]
    Occupied(PathBuf),
    #[error("the backed-up store fails its integrity check: {0}")]
    Corrupt(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> BackupError + '_ {
    move |source| BackupError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Copies the regular files of `from` into `to` (created 0700), keeping their modes.
fn copy_dir(from: &Path, to: &Path) -> Result<Vec<String>, BackupError> {
    fs::create_dir_all(to).map_err(io(to))?;
    fs::set_permissions(to, fs::Permissions::from_mode(0o700)).map_err(io(to))?;
    let mut names = Vec::new();
    for entry in fs::read_dir(from).map_err(io(from))? {
        let entry = entry.map_err(io(from))?;
        let path = entry.path();
        if !entry.file_type().map_err(io(&path))?.is_file() {
            continue;
        }
        let target = to.join(entry.file_name());
        fs::copy(&path, &target).map_err(io(&target))?;
        names.push(entry.file_name().to_string_lossy().into_owned());
    }
    names.sort();
    Ok(names)
}

/// What `backup` wrote.
#[derive(Debug, Clone)]
pub struct BackupReport {
    pub dir: PathBuf,
    pub manifest: Manifest,
    /// For PostgreSQL: the command that dumps the store beside this backup.
    pub pg_dump_hint: Option<String>,
}

/// Writes a backup of `store` and `data_dir`'s identity into the new directory `out`.
///
/// # Errors
/// `out` exists, the data dir has no CA, I/O or store errors (then no `out` is left).
pub async fn backup(
    store: &Store,
    data_dir: &Path,
    out: &Path,
) -> Result<BackupReport, BackupError> {
    if out.exists() {
        return Err(BackupError::Exists(out.to_owned()));
    }
    let pki = data_dir.join(PKI_DIR);
    if !pki.join("ca.pem").exists() || !pki.join("ca.key").exists() {
        return Err(BackupError::NotABackup(
            data_dir.to_owned(),
            "the data dir has no CA (pki/ca.pem, pki/ca.key)".into(),
        ));
    }
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "backup".into());
    let partial = out.with_file_name(format!(".{name}.partial"));
    let _ = fs::remove_dir_all(&partial);
    fs::create_dir_all(&partial).map_err(io(&partial))?;
    fs::set_permissions(&partial, fs::Permissions::from_mode(0o700)).map_err(io(&partial))?;
    let result = write_backup(store, data_dir, &partial, out).await;
    match result {
        Ok((manifest, pg_dump_hint)) => {
            fs::rename(&partial, out).map_err(io(out))?;
            Ok(BackupReport {
                dir: out.to_owned(),
                manifest,
                pg_dump_hint,
            })
        }
        Err(error) => {
            let _ = fs::remove_dir_all(&partial);
            Err(error)
        }
    }
}

async fn write_backup(
    store: &Store,
    data_dir: &Path,
    dir: &Path,
    out: &Path,
) -> Result<(Manifest, Option<String>), BackupError> {
    let mut files = Vec::new();
    let mut hint = None;
    match store {
        Store::Sqlite(pool) => {
            // A consistent copy from one read transaction; the server keeps writing.
            let target = dir.join(SQLITE_FILE);
            sqlx::query("VACUUM INTO $1")
                .bind(target.to_string_lossy().into_owned())
                .execute(pool)
                .await
                .map_err(StoreError::from)?;
            files.push(SQLITE_FILE.to_owned());
        }
        Store::Postgres(_) => {
            hint = Some(format!(
                "pg_dump --format=custom --file {} \"$DATABASE_URL\"",
                out.join("vantage.pgdump").display()
            ));
        }
    }
    for name in copy_dir(&data_dir.join(PKI_DIR), &dir.join(PKI_DIR))? {
        files.push(format!("{PKI_DIR}/{name}"));
    }
    let token = data_dir.join(ADMIN_TOKEN_FILE);
    if token.exists() {
        let target = dir.join(ADMIN_TOKEN_FILE);
        fs::copy(&token, &target).map_err(io(&target))?;
        fs::set_permissions(&target, fs::Permissions::from_mode(0o600)).map_err(io(&target))?;
        files.push(ADMIN_TOKEN_FILE.to_owned());
    }
    let manifest = Manifest {
        format: FORMAT,
        created_at_ms: crate::store::now_ms(),
        backend: store.backend().to_owned(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        files,
    };
    let path = dir.join(MANIFEST);
    let text = serde_json::to_vec_pretty(&manifest).unwrap_or_default();
    fs::write(&path, text).map_err(io(&path))?;
    Ok((manifest, hint))
}

/// Reads and checks a backup's manifest and files.
///
/// # Errors
/// A missing or unreadable manifest, another format, a listed file missing.
pub fn read_manifest(from: &Path) -> Result<Manifest, BackupError> {
    let not = |why: String| BackupError::NotABackup(from.to_owned(), why);
    let text = fs::read(from.join(MANIFEST)).map_err(|e| not(format!("no {MANIFEST} ({e})")))?;
    let manifest: Manifest = serde_json::from_slice(&text)
        .map_err(|e| not(format!("{MANIFEST} does not parse: {e}")))?;
    if manifest.format != FORMAT {
        return Err(not(format!(
            "format {} (this build reads {FORMAT})",
            manifest.format
        )));
    }
    for file in &manifest.files {
        let path = Path::new(file);
        if path.is_absolute() || path.components().any(|c| c.as_os_str() == "..") {
            return Err(not(format!("{file:?} is outside the backup")));
        }
        if !from.join(path).is_file() {
            return Err(not(format!("{file} is missing")));
        }
    }
    for needed in ["pki/ca.pem", "pki/ca.key"] {
        if !manifest.files.iter().any(|f| f == needed) {
            return Err(not(format!("{needed} is missing")));
        }
    }
    if manifest.backend == "sqlite" && !manifest.files.iter().any(|f| f == SQLITE_FILE) {
        return Err(not(format!("{SQLITE_FILE} is missing")));
    }
    Ok(manifest)
}

/// What `restore` wrote.
#[derive(Debug, Clone)]
pub struct RestoreReport {
    pub manifest: Manifest,
    pub files: Vec<PathBuf>,
}

/// Restores the backup in `from` into `data_dir`, which must hold no store and no CA.
///
/// # Errors
/// See [`BackupError`]; every check runs before the first write.
pub async fn restore(from: &Path, data_dir: &Path) -> Result<RestoreReport, BackupError> {
    let manifest = read_manifest(from)?;
    if data_dir.join(SQLITE_FILE).exists() || data_dir.join(PKI_DIR).exists() {
        return Err(BackupError::Occupied(data_dir.to_owned()));
    }
    if manifest.backend == "sqlite" {
        let options = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(from.join(SQLITE_FILE))
            .read_only(true);
        let pool = sqlx::SqlitePool::connect_with(options)
            .await
            .map_err(StoreError::from)?;
        let verdict: String = sqlx::query_scalar("PRAGMA integrity_check")
            .fetch_one(&pool)
            .await
            .map_err(StoreError::from)?;
        pool.close().await;
        if verdict != "ok" {
            return Err(BackupError::Corrupt(verdict));
        }
    }
    fs::create_dir_all(data_dir).map_err(io(data_dir))?;
    let mut written = Vec::new();
    for file in &manifest.files {
        let target = data_dir.join(file);
        if let Some(parent) = target.parent() {
            fs::create_dir_all(parent).map_err(io(parent))?;
        }
        fs::copy(from.join(file), &target).map_err(io(&target))?;
        written.push(target);
    }
    fs::set_permissions(data_dir.join(PKI_DIR), fs::Permissions::from_mode(0o700))
        .map_err(io(data_dir))?;
    Ok(RestoreReport {
        manifest,
        files: written,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(path: &Path, text: &str) {
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, text).unwrap();
    }

    #[test]
    fn manifests_that_reach_outside_or_miss_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let from = dir.path();
        assert!(matches!(
            read_manifest(from),
            Err(BackupError::NotABackup(..))
        ));
        write(&from.join("pki/ca.pem"), "x");
        write(&from.join("pki/ca.key"), "x");
        let mut manifest = Manifest {
            format: FORMAT,
            created_at_ms: 0,
            backend: "postgres".into(),
            version: "0".into(),
            files: vec!["pki/ca.pem".into(), "pki/ca.key".into()],
        };
        let save =
            |m: &Manifest| fs::write(from.join(MANIFEST), serde_json::to_vec(m).unwrap()).unwrap();
        save(&manifest);
        assert_eq!(read_manifest(from).unwrap(), manifest);
        for (files, why) in [
            (vec!["../etc/passwd"], "outside"),
            (vec!["/etc/passwd"], "outside"),
            (vec!["pki/ca.pem", "pki/ca.key", "nope"], "missing"),
            (vec!["pki/ca.pem"], "pki/ca.key is missing"),
        ] {
            manifest.files = files.into_iter().map(String::from).collect();
            save(&manifest);
            let error = read_manifest(from).unwrap_err().to_string();
            assert!(error.contains(why), "{error}");
        }
        manifest.files = vec!["pki/ca.pem".into(), "pki/ca.key".into()];
        manifest.backend = "sqlite".into();
        save(&manifest);
        assert!(
            read_manifest(from)
                .unwrap_err()
                .to_string()
                .contains("vantage.db is missing")
        );
        manifest.format = 9;
        save(&manifest);
        assert!(
            read_manifest(from)
                .unwrap_err()
                .to_string()
                .contains("format 9")
        );
    }
}
