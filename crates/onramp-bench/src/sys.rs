//! What the operating system allows and what a process uses: the open-file
//! limit (raised with `setrlimit`), and a process's resident memory, open
//! file descriptors and limits read from `/proc`.

use anyhow::{Context, Result};

/// The open-file limit of this process after trying to raise it.
#[derive(Debug, Clone)]
pub struct Nofile {
    pub soft: u64,
    pub hard: u64,
    /// Why the hard limit could not be raised to what was wanted, if it
    /// could not.
    pub refused: Option<String>,
}

impl Nofile {
    pub fn line(&self) -> String {
        match &self.refused {
            None => format!("soft {} / hard {}", self.soft, self.hard),
            Some(why) => format!("soft {} / hard {} ({why})", self.soft, self.hard),
        }
    }
}

#[cfg(target_os = "linux")]
mod rlimit {
    /// `struct rlimit` (`rlim_t` is 64 bits on Linux).
    #[repr(C)]
    pub struct RLimit {
        pub cur: u64,
        pub max: u64,
    }

    /// `RLIMIT_NOFILE` on the Linux architectures with the generic numbering
    /// (x86, x86-64, ARM, AArch64, RISC-V).
    pub const RLIMIT_NOFILE: i32 = 7;

    unsafe extern "C" {
        pub fn getrlimit(resource: i32, rlim: *mut RLimit) -> i32;
        pub fn setrlimit(resource: i32, rlim: *const RLimit) -> i32;
    }

    pub fn get() -> std::io::Result<(u64, u64)> {
        let mut r = RLimit { cur: 0, max: 0 };
        // SAFETY: `r` is a valid, writable `struct rlimit`.
        if unsafe { getrlimit(RLIMIT_NOFILE, &mut r) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok((r.cur, r.max))
    }

    pub fn set(soft: u64, hard: u64) -> std::io::Result<()> {
        let r = RLimit {
            cur: soft,
            max: hard,
        };
        // SAFETY: `r` is a valid `struct rlimit` that outlives the call.
        if unsafe { setrlimit(RLIMIT_NOFILE, &r) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }
}

/// Raises this process's open-file limit: the hard limit to `wanted` if it
/// is lower (which needs `CAP_SYS_RESOURCE`), then the soft limit to the
/// hard one. Child processes inherit the result.
#[cfg(target_os = "linux")]
pub fn raise_nofile(wanted: u64) -> Result<Nofile> {
    let (_, hard) = rlimit::get().context("getrlimit(RLIMIT_NOFILE)")?;
    let mut refused = None;
    let raised = hard < wanted
        && match rlimit::set(wanted, wanted) {
            Ok(()) => true,
            Err(e) => {
                refused = Some(format!(
                    "raising the hard limit to {wanted} was refused: {e}"
                ));
                false
            }
        };
    if !raised {
        rlimit::set(hard, hard).context("setrlimit(RLIMIT_NOFILE) soft = hard")?;
    }
    let (soft, hard) = rlimit::get().context("getrlimit(RLIMIT_NOFILE)")?;
    Ok(Nofile {
        soft,
        hard,
        refused,
    })
}

#[cfg(not(target_os = "linux"))]
pub fn raise_nofile(_wanted: u64) -> Result<Nofile> {
    anyhow::bail!("raising the open-file limit is implemented for Linux only")
}

/// A `kB` field of `/proc/<pid>/status` (`VmRSS`, `VmHWM`, ...), in KiB.
pub fn status_kib(pid: u32, field: &str) -> Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let prefix = format!("{field}:");
    status
        .lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("no {field} in {path}"))
}

/// Resident set size now (`VmRSS`), in KiB.
pub fn rss_kib(pid: u32) -> Result<u64> {
    status_kib(pid, "VmRSS")
}

/// Resets a process's peak resident set size (`VmHWM`) to its current one,
/// so that the next reading is the peak since now.
pub fn reset_peak_rss(pid: u32) -> Result<()> {
    let path = format!("/proc/{pid}/clear_refs");
    std::fs::write(&path, "5").with_context(|| format!("writing {path}"))
}

/// Open file descriptors of a process, and how many of them are sockets.
pub fn fds(pid: u32) -> Result<(usize, usize)> {
    let dir = format!("/proc/{pid}/fd");
    let mut total = 0;
    let mut sockets = 0;
    for entry in std::fs::read_dir(&dir).with_context(|| format!("reading {dir}"))? {
        let Ok(entry) = entry else { continue };
        total += 1;
        if std::fs::read_link(entry.path())
            .is_ok_and(|target| target.to_string_lossy().starts_with("socket:"))
        {
            sockets += 1;
        }
    }
    Ok((total, sockets))
}

/// A process's open-file limit (soft, hard) from `/proc/<pid>/limits`.
pub fn nofile_of(pid: u32) -> Result<(String, String)> {
    let path = format!("/proc/{pid}/limits");
    let limits = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .with_context(|| format!("no `Max open files` in {path}"))?;
    let mut values = line["Max open files".len()..].split_whitespace();
    let soft = values.next().unwrap_or("?").to_string();
    let hard = values.next().unwrap_or("?").to_string();
    Ok((soft, hard))
}

/// The local port range connections are given ports from.
pub fn ephemeral_ports() -> Result<(u16, u16)> {
    let path = "/proc/sys/net/ipv4/ip_local_port_range";
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
    let mut it = text.split_whitespace().map(str::parse::<u16>);
    match (it.next(), it.next()) {
        (Some(Ok(lo)), Some(Ok(hi))) => Ok((lo, hi)),
        _ => anyhow::bail!("unexpected format of {path}: {text}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_process_is_readable() {
        let pid = std::process::id();
        assert!(rss_kib(pid).expect("VmRSS") > 0);
        let (total, _) = fds(pid).expect("fds");
        assert!(total >= 1);
        let (soft, hard) = nofile_of(pid).expect("limits");
        assert!(!soft.is_empty() && !hard.is_empty());
    }

    #[test]
    fn soft_limit_reaches_the_hard_one() {
        let n = raise_nofile(0).expect("raise");
        assert_eq!(n.soft, n.hard);
        assert!(n.refused.is_none());
    }
}
