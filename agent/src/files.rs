//! Writing state files: atomically (temp file, fsync, rename, fsync of the directory) and with
//! an exact mode, so a crash never leaves a half-written key or identity, a rename survives a
//! power cut, and private files are never readable by others, not even for a moment.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Replaces `path` with `contents`, mode `mode`, atomically and durably.
///
/// # Errors
/// The I/O error of the step that failed.
pub fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)?;
    file.write_all(contents)?;
    file.sync_all()?;
    // The mode given at creation is masked by the umask; set it exactly.
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))?;
    std::fs::rename(&tmp, path)?;
    sync_parent(path)
}

/// Fsyncs the directory holding `path`, so renames and removals in it are durable.
///
/// # Errors
/// The I/O error of opening or syncing the directory.
pub fn sync_parent(path: &Path) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    std::fs::File::open(dir)?.sync_all()
}
