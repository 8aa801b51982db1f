//! `onramp`: the server (`onramp serve`) and the admin CLI.

mod admin;
mod cli;
mod cli_artifacts;
mod cli_events;
mod cli_jobs;
mod cli_provisioning;
mod config;
mod credentials;
mod serve;
mod sqlite_memory;
mod telemetry;

use clap::Parser;
use std::process::ExitCode;

/// jemalloc, for its memory use over a long life: an idle connection's
/// allocations pack without per-allocation headers, and memory freed when
/// connections close goes back to the system instead of staying with the
/// process (glibc's malloc kept the peak of an idle-connection ramp after
/// every connection had closed). Built unprefixed, it serves `malloc` for
/// the C libraries linked in too (SQLite's page cache, aws-lc's handshake
/// state), so their memory is returned the same way.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, read when it starts: a background thread purges
/// pages freed more than 5 s ago (`dirty_decay_ms`) straight back to the
/// system (`muzzy_decay_ms:0`: pages only marked lazily free still count
/// in the resident set). `slab_sizes` trades the allocator's descriptors
/// (one per slab, about 128 bytes, never freed) against pages pinned by a
/// survivor once a connection storm is over: the classes every connection
/// uses most (512, 1024 and 4096 bytes) get slabs of 4 pages instead of 1,
/// and the classes where a few long-lived objects were left scattered after
/// a storm, which jemalloc would give slabs of 3 to 7 pages, get one page
/// (48, 80, 160, 224, 384, 448 and 1280 bytes). With both, 19,800 closed
/// connections leave about 1 MiB less behind (BENCHMARKS.md).
/// `MALLOC_CONF` in the environment overrides any of them.
#[repr(transparent)]
struct MallocConf(*const std::ffi::c_char);
// SAFETY: the pointer is to a static, immutable, NUL-terminated string.
unsafe impl Sync for MallocConf {}
#[unsafe(export_name = "malloc_conf")]
static MALLOC_CONF: MallocConf = MallocConf(
    c"background_thread:true,dirty_decay_ms:5000,muzzy_decay_ms:0,\
         slab_sizes:512-512:4|1024-1024:4|4096-4096:4|48-48:1|80-80:1|160-160:1|\
         224-224:1|384-384:1|448-448:1|1280-1280:1"
        .as_ptr(),
);

/// Set to 1 to print a backtrace with an error. RUST_BACKTRACE alone does
/// not: an operator's error is the message chain, not the stack.
const BACKTRACE_VAR: &str = "ONRAMP_BACKTRACE";

fn main() -> ExitCode {
    if std::env::var(BACKTRACE_VAR).is_ok_and(|v| v == "1") {
        // SAFETY: no other thread exists yet; the runtime is built below.
        // anyhow captures a backtrace only when this variable asks for it.
        unsafe { std::env::set_var("RUST_LIB_BACKTRACE", "1") };
    } else {
        // RUST_BACKTRACE in the environment is for panics; errors skip the cost.
        // SAFETY: as above, still single-threaded.
        unsafe { std::env::set_var("RUST_LIB_BACKTRACE", "0") };
    }
    // Before anything opens a database. It cannot fail this early; if it
    // did, SQLite would keep the shared heap, which only costs memory.
    if let Err(e) = sqlite_memory::install() {
        eprintln!("warning: {e}");
    }
    let json = std::env::args_os().any(|a| a == "--json");
    let args = match cli::Cli::try_parse() {
        Ok(args) => args,
        Err(e) => {
            use clap::error::ErrorKind;
            if json && !matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
                let text = e.to_string();
                let first = text.lines().next().unwrap_or_default();
                print_json_error("usage", first.trim_start_matches("error: "));
                return ExitCode::from(2);
            }
            e.exit()
        }
    };
    let json = args.json();
    let result = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(anyhow::Error::from)
        .and_then(|rt| rt.block_on(cli::run(args)));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let code = e
                .chain()
                .find_map(|c| c.downcast_ref::<admin::AdminError>())
                .map_or("error", |a| a.code.as_str());
            if json {
                print_json_error(code, &format!("{e:#}"));
            } else {
                eprintln!("error: {e:#}");
            }
            if std::env::var(BACKTRACE_VAR).is_ok_and(|v| v == "1") {
                eprintln!("{}", e.backtrace());
            }
            ExitCode::FAILURE
        }
    }
}

fn print_json_error(code: &str, message: &str) {
    let body = serde_json::json!({"error": {"code": code, "message": message}});
    eprintln!("{body}");
}
