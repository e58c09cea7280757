//! Files that must survive a crash whole (the catalog, stored plugins, compiled-module
//! cache entries), and directories whose entries must.

use std::path::Path;

/// Write through a temporary file (a name of its own, so concurrent writers never
/// share one), fsync, rename, and fsync the directory: a crash leaves the old file or
/// the new one, never half of one, and an acknowledged write survives power loss.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let tmp = path.with_extension(format!(
        "{}.{}.tmp",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        sync_dir(dir)?;
    }
    Ok(())
}

/// Make the names in `dir` durable: a file created, renamed or removed there survives
/// power loss only once its directory is synced.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// A source's or sink's name as a file name: other characters than a-z, 0-9 and _ are
/// escaped.
pub fn file_name(name: &str) -> String {
    name.chars()
        .map(|c| match c {
            'a'..='z' | '0'..='9' | '_' => c.to_string(),
            c => format!("%{:x}", c as u32),
        })
        .collect()
}
