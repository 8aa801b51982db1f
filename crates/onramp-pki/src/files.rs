use crate::{PkiError, Result};
use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> PkiError + '_ {
    move |source| PkiError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Writes a secret (a private key, an HMAC key) readable by its owner only.
/// The file is created with mode 0600 so it is never briefly world-readable.
pub fn write_private_file(path: &Path, contents: &[u8]) -> Result<()> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(io(dir))?;
    }
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(io(path))?;
    // A pre-existing file keeps its old mode through open(); force it.
    f.set_permissions(fs::Permissions::from_mode(0o600))
        .map_err(io(path))?;
    f.write_all(contents).map_err(io(path))?;
    f.sync_all().map_err(io(path))?;
    Ok(())
}

/// Refuses a key file that anyone but its owner can read or write.
pub fn check_key_file(path: &Path) -> Result<()> {
    let meta = fs::metadata(path).map_err(io(path))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(PkiError::InsecureKeyFile {
            path: path.display().to_string(),
            mode,
        });
    }
    Ok(())
}

/// Reads a key file after checking its permissions.
pub(crate) fn read_key_file(path: &Path) -> Result<String> {
    check_key_file(path)?;
    fs::read_to_string(path).map_err(io(path))
}

pub(crate) fn read_file(path: &Path) -> Result<String> {
    fs::read_to_string(path).map_err(io(path))
}

pub(crate) fn write_public_file(path: &Path, contents: &[u8]) -> Result<()> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(io(dir))?;
    }
    fs::write(path, contents).map_err(io(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_files_are_0600_and_a_world_readable_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k.pem");
        write_private_file(&p, b"secret").unwrap();
        let mode = fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(check_key_file(&p).is_ok());
        fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            check_key_file(&p),
            Err(PkiError::InsecureKeyFile { mode: 0o644, .. })
        ));
        // Rewriting tightens the mode again.
        write_private_file(&p, b"secret").unwrap();
        assert!(check_key_file(&p).is_ok());
    }
}
