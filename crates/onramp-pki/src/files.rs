use crate::{PkiError, Result};
use std::fs;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
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

/// The user this process runs as: files it trusts must belong to it.
fn effective_uid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// Refuses a path owned by another user: whoever owns it can change its mode
/// and contents behind onramp's back.
fn check_owner(path: &Path, meta: &fs::Metadata) -> Result<()> {
    let me = effective_uid();
    if meta.uid() != me {
        return Err(PkiError::ForeignOwner {
            path: path.display().to_string(),
            owner: meta.uid(),
            me,
        });
    }
    Ok(())
}

/// Refuses a directory that holds keys or the registry when another user
/// could add, replace or remove files in it: it must belong to the user
/// running onramp and be writable by nobody else.
pub fn check_private_dir(path: &Path) -> Result<()> {
    let meta = fs::metadata(path).map_err(io(path))?;
    check_owner(path, &meta)?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o022 != 0 {
        return Err(PkiError::InsecureDirectory {
            path: path.display().to_string(),
            mode,
        });
    }
    Ok(())
}

/// Refuses a key file that anyone but its owner can read or write, or that
/// belongs to another user.
pub fn check_key_file(path: &Path) -> Result<()> {
    let meta = fs::metadata(path).map_err(io(path))?;
    check_owner(path, &meta)?;
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

    #[test]
    fn a_directory_writable_by_others_is_refused_with_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("data");
        fs::create_dir(&d).unwrap();
        fs::set_permissions(&d, fs::Permissions::from_mode(0o700)).unwrap();
        assert!(check_private_dir(&d).is_ok());
        // Readable by others is fine (nothing secret is in a directory listing);
        // writable is not.
        fs::set_permissions(&d, fs::Permissions::from_mode(0o755)).unwrap();
        assert!(check_private_dir(&d).is_ok());
        for mode in [0o770, 0o702, 0o777] {
            fs::set_permissions(&d, fs::Permissions::from_mode(mode)).unwrap();
            let err = check_private_dir(&d).unwrap_err();
            assert!(
                matches!(err, PkiError::InsecureDirectory { mode: m, .. } if m == mode),
                "{err}"
            );
            assert!(
                err.to_string()
                    .contains(&format!("`chmod go-w {}`", d.display())),
                "{err}"
            );
        }
    }

    #[test]
    fn a_path_owned_by_another_user_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (path, owner) = if effective_uid() == 0 {
            // root may give a directory away; `/` would be its own.
            let d = dir.path().join("theirs");
            fs::create_dir(&d).unwrap();
            std::os::unix::fs::chown(&d, Some(12345), None).unwrap();
            (d, 12345)
        } else {
            (Path::new("/").to_path_buf(), 0)
        };
        let err = check_private_dir(&path).unwrap_err();
        assert!(
            matches!(err, PkiError::ForeignOwner { owner: o, .. } if o == owner),
            "{err}"
        );
        assert!(
            err.to_string()
                .contains(&format!("`chown {} {}`", effective_uid(), path.display())),
            "{err}"
        );
        // The positive control: the same check passes on our own directory.
        assert!(check_private_dir(dir.path()).is_ok());
    }
}
