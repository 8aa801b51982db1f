//! SQLite's memory in an allocator arena of its own.
//!
//! SQLite keeps what it allocates for a long time: page cache, prepared
//! statements, the schema of every connection. Allocated from the same
//! slabs as connection state during a connection storm, a few of these
//! objects stay in pages the storm has otherwise freed, and those pages
//! cannot be given back. In an arena of its own, SQLite's objects share
//! pages only with each other.

use libsqlite3_sys as ffi;
use std::ffi::{c_int, c_void};
use std::sync::atomic::{AtomicI32, AtomicU32, Ordering};
use tikv_jemalloc_sys as je;

/// `mallocx` flags: SQLite's arena, no thread cache (a cached object would
/// be handed to the next allocation of its size, whoever makes it).
static FLAGS: AtomicI32 = AtomicI32::new(je::MALLOCX_TCACHE_NONE);

/// SQLite's arena, once created (0, the first arena, is never SQLite's).
static ARENA: AtomicU32 = AtomicU32::new(0);

fn flags() -> c_int {
    FLAGS.load(Ordering::Relaxed)
}

/// SQLite asks for `n` > 0; jemalloc must never be asked for 0 bytes.
fn size(n: c_int) -> usize {
    usize::try_from(n).unwrap_or(0).max(1)
}

unsafe extern "C" fn x_malloc(n: c_int) -> *mut c_void {
    // SAFETY: a non-zero size and valid flags.
    unsafe { je::mallocx(size(n), flags()) }
}

unsafe extern "C" fn x_free(p: *mut c_void) {
    if !p.is_null() {
        // SAFETY: `p` came from `x_malloc` or `x_realloc`.
        unsafe { je::dallocx(p, je::MALLOCX_TCACHE_NONE) }
    }
}

unsafe extern "C" fn x_realloc(p: *mut c_void, n: c_int) -> *mut c_void {
    // SAFETY: SQLite passes a pointer it had from `x_malloc`; on failure
    // rallocx returns null and leaves it valid, as SQLite expects.
    unsafe { je::rallocx(p, size(n), flags()) }
}

unsafe extern "C" fn x_size(p: *mut c_void) -> c_int {
    if p.is_null() {
        return 0;
    }
    // SAFETY: `p` is a live allocation of ours.
    let n = unsafe { je::sallocx(p, 0) };
    c_int::try_from(n).unwrap_or(c_int::MAX)
}

unsafe extern "C" fn x_roundup(n: c_int) -> c_int {
    // SAFETY: nallocx only computes a size.
    let rounded = unsafe { je::nallocx(size(n), 0) };
    c_int::try_from(rounded).unwrap_or(n)
}

unsafe extern "C" fn x_init(_: *mut c_void) -> c_int {
    ffi::SQLITE_OK
}

unsafe extern "C" fn x_shutdown(_: *mut c_void) {}

/// Gives SQLite its own arena. Must run before SQLite is first used (the
/// first database opened); later, SQLite refuses and keeps the default.
/// Returns why it did not take effect, if it did not.
pub fn install() -> Result<(), String> {
    // SAFETY: `arenas.create` reads as an unsigned int, the new arena's index.
    let arena: u32 = unsafe { tikv_jemalloc_ctl::raw::read(b"arenas.create\0") }
        .map_err(|e| format!("creating an allocator arena: {e}"))?;
    ARENA.store(arena, Ordering::Relaxed);
    let arena = usize::try_from(arena).map_err(|e| e.to_string())?;
    FLAGS.store(
        je::MALLOCX_ARENA(arena) | je::MALLOCX_TCACHE_NONE,
        Ordering::Relaxed,
    );
    let methods = ffi::sqlite3_mem_methods {
        xMalloc: Some(x_malloc),
        xFree: Some(x_free),
        xRealloc: Some(x_realloc),
        xSize: Some(x_size),
        xRoundup: Some(x_roundup),
        xInit: Some(x_init),
        xShutdown: Some(x_shutdown),
        pAppData: std::ptr::null_mut(),
    };
    // SAFETY: SQLITE_CONFIG_MALLOC takes a pointer to the methods, which
    // SQLite copies; the functions above are valid for the process's life.
    let rc = unsafe { ffi::sqlite3_config(ffi::SQLITE_CONFIG_MALLOC, &methods) };
    if rc == ffi::SQLITE_OK {
        Ok(())
    } else {
        Err(format!("SQLite refused its allocator (code {rc})"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_runs_on_its_own_arena() {
        // The first use of SQLite in this test process.
        install().expect("installed before SQLite was used");
        let mut db: *mut ffi::sqlite3 = std::ptr::null_mut();
        // SAFETY: plain SQLite C API use on a private in-memory database.
        unsafe {
            assert_eq!(
                ffi::sqlite3_open(c":memory:".as_ptr(), &mut db),
                ffi::SQLITE_OK
            );
            let sql = c"CREATE TABLE t(x); INSERT INTO t VALUES (randomblob(100000)); \
                        UPDATE t SET x = randomblob(200000); DELETE FROM t;";
            let rc = ffi::sqlite3_exec(
                db,
                sql.as_ptr(),
                None,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
            );
            assert_eq!(rc, ffi::SQLITE_OK);
            // SQLite's own accounting goes through x_size: it must see memory in use.
            assert!(ffi::sqlite3_memory_used() > 0);
            let p = ffi::sqlite3_malloc(1000);
            assert!(!p.is_null());
            assert!(x_size(p.cast()) >= 1000);
            let q = ffi::sqlite3_realloc(p, 100_000);
            assert!(!q.is_null());
            assert!(x_size(q.cast()) >= 100_000);
            // The block is in SQLite's arena, not the shared heap.
            let arena = ARENA.load(Ordering::Relaxed);
            assert_ne!(arena, 0);
            let in_arena = || {
                tikv_jemalloc_ctl::epoch::advance().unwrap();
                let name = format!("stats.arenas.{arena}.large.allocated\0");
                tikv_jemalloc_ctl::raw::read::<usize>(name.as_bytes()).unwrap()
            };
            assert!(in_arena() >= 100_000, "{}", in_arena());
            ffi::sqlite3_free(q);
            assert!(in_arena() < 100_000, "{}", in_arena());
            assert_eq!(ffi::sqlite3_close(db), ffi::SQLITE_OK);
        }
    }
}
