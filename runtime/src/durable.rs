//! Files that must survive a crash whole: the catalog, stored plugins, compiled-module
//! cache entries.

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
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}
