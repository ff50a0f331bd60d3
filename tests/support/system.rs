//! Process and kernel limits for thousands of sessions.

use std::path::PathBuf;

#[repr(C)]
struct Rlimit {
    cur: u64,
    max: u64,
}

extern "C" {
    fn getrlimit(resource: i32, rlim: *mut Rlimit) -> i32;
    fn setrlimit(resource: i32, rlim: *const Rlimit) -> i32;
}

const RLIMIT_NOFILE: i32 = 7;

/// Raises this process's soft open-file limit to its hard limit (children started
/// afterwards, postern and Dovecot, inherit it). Returns (soft, hard) as they are now.
pub fn raise_nofile() -> (u64, u64) {
    let mut limit = Rlimit { cur: 0, max: 0 };
    unsafe {
        if getrlimit(RLIMIT_NOFILE, &mut limit) != 0 {
            return (0, 0);
        }
        if limit.cur < limit.max {
            let raised = Rlimit {
                cur: limit.max,
                max: limit.max,
            };
            if setrlimit(RLIMIT_NOFILE, &raised) == 0 {
                limit.cur = limit.max;
            }
        }
    }
    (limit.cur, limit.max)
}

/// A sysctl raised for the benchmark and put back as it was on drop.
pub struct Sysctl {
    path: PathBuf,
    before: String,
}

impl Sysctl {
    /// Raises `name` (e.g. "fs.inotify.max_user_instances") to at least `value`.
    /// `Ok(None)`: already high enough; `Err(why)`: could not (not root, read-only /proc).
    pub fn raise(name: &str, value: u64) -> Result<Option<Sysctl>, String> {
        let path = PathBuf::from("/proc/sys").join(name.replace('.', "/"));
        let before = std::fs::read_to_string(&path)
            .map_err(|e| format!("read {}: {e}", path.display()))?
            .trim()
            .to_string();
        if before.parse::<u64>().is_ok_and(|v| v >= value) {
            return Ok(None);
        }
        std::fs::write(&path, value.to_string())
            .map_err(|e| format!("write {}: {e}", path.display()))?;
        Ok(Some(Sysctl { path, before }))
    }
}

impl Drop for Sysctl {
    fn drop(&mut self) {
        let _ = std::fs::write(&self.path, &self.before);
    }
}
