//! postern's memory while a 50 MiB message passes through its SMTP submission relay.
//!
//! Runs the real `postern` binary as a separate process (its own config in a temp dir, in
//! front of a private Dovecot whose submission service relays into the recipients'
//! Maildirs), then:
//!
//! 1. reads postern's VmRSS / VmHWM from `/proc/<pid>/status` after startup;
//! 2. sends one small message through the smtps listener (warm-up: TLS, the upstream
//!    session, the argon2 verification and the SMTP code paths are all exercised once);
//! 3. resets the high-water mark (`echo 5 > /proc/<pid>/clear_refs`) and reads VmRSS;
//! 4. streams a 50 MiB message (generated on the fly, 64 KiB writes) from alice to bob
//!    through the smtps listener, sampling VmRSS every 10 ms meanwhile;
//! 5. reads VmHWM: the peak during the message; growth = peak - baseline.
//!
//! Then checks that the message landed in bob's Maildir with an identical body (SHA-256),
//! and prints a table. The target (README) is growth <= 4 MiB: postern holds at most the
//! header block (64 KiB by default) and streams the rest.
//!
//! Run with `cargo bench --bench smtp_memory`. Set `SMTP_MEMORY_MIB` to change the size.

#[path = "../tests/support/mod.rs"]
mod support;

mod load;

use std::path::PathBuf;
use std::time::Duration;

use load::message::{stored_body_sha256, Generator};
use load::net::{connector, Target};
use load::postern::{PosternProcess, Settings};
use load::procfs;
use load::smtp::{measure_big_message, SmtpClient};
use support::dovecot::DovecotOptions;
use support::Dovecot;

const MIB: u64 = 1024 * 1024;
const TARGET_GROWTH_MIB: f64 = 4.0;
const ALICE: &str = "alice@example.test";
const BOB: &str = "bob@example.test";

fn main() {
    let size_mib: u64 = std::env::var("SMTP_MEMORY_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50);
    // Dovecot's submission refuses messages over submission_max_mail_size (40M in
    // 2.3.19) with 552 5.2.3: leave room above the message for headers and line ends.
    let dovecot = Dovecot::start_with(DovecotOptions {
        submission_max_mail_size_mib: Some(size_mib + 8),
        ..DovecotOptions::default()
    });
    dovecot.add_user("alice", "alice-direct-password");
    dovecot.add_user("bob", "bob-direct-password");

    let postern = PosternProcess::start(
        &dovecot,
        Settings {
            imaps: false,
            smtps: true,
            extra: format!("[smtp]\nmax_message_size = {}\n", (size_mib + 8) * MIB),
            ..Settings::default()
        },
    );
    postern.cli(&[
        "user",
        "add",
        ALICE,
        "--upstream-user",
        "alice",
        "--address",
        ALICE,
    ]);
    let issued = postern.cli(&[
        "app-password",
        "create",
        ALICE,
        "--name",
        "bench",
        "--scopes",
        "smtp",
        "--json",
    ]);
    let issued: serde_json::Value =
        serde_json::from_str(&issued).expect("app-password create --json prints JSON");
    let password = issued["password"]
        .as_str()
        .expect("password in JSON")
        .to_string();

    let pid = postern.pid();
    let target = Target::new(
        "postern",
        postern.smtps.expect("smtps listener"),
        connector(&postern.ca_path, true),
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");

    let started = procfs::memory(pid);

    // Warm-up: one small message through the same listener (TLS, the upstream session,
    // the argon2 verification and the SMTP code paths all run once).
    let small = Generator::new(8 * 1024, ALICE, BOB);
    let small_sha = small.body_sha256();
    runtime
        .block_on(async {
            let mut client = SmtpClient::connect_and_auth(&target, None, ALICE, &password).await?;
            client.send_generated(ALICE, BOB, small).await?;
            client.quit().await
        })
        .unwrap_or_else(|e| panic!("warm-up message: {e:#}\n{}", postern.log()));
    let warm = procfs::memory(pid);
    if std::env::var_os("SMTP_MEMORY_SMAPS").is_some() {
        print_largest_mappings(pid, "after startup and the warm-up message");
    }

    let big = Generator::new(size_mib * MIB, ALICE, BOB);
    let big_sha = big.body_sha256();
    let measured = runtime
        .block_on(measure_big_message(
            pid,
            &target,
            ALICE,
            &password,
            (ALICE, BOB),
            big,
        ))
        .unwrap_or_else(|e| panic!("big message: {e:#}\n{}", postern.log()));
    std::thread::sleep(Duration::from_millis(500));
    let settled = procfs::memory(pid);
    if std::env::var_os("SMTP_MEMORY_SMAPS").is_some() {
        print_largest_mappings(pid, "after the big message");
    }

    // The message landed, body identical.
    let delivered = delivered(&dovecot, "bob");
    assert_eq!(
        delivered.len(),
        2,
        "two messages in bob's Maildir\n{}\n{}",
        dovecot.all_logs(),
        postern.log()
    );
    let (small_file, big_file) = (&delivered[0], &delivered[1]);
    let big_len = std::fs::metadata(big_file).unwrap().len();
    assert_eq!(
        stored_body_sha256(small_file),
        small_sha,
        "warm-up body intact"
    );
    assert_eq!(stored_body_sha256(big_file), big_sha, "big body intact");
    let expected_len = size_mib * MIB;
    assert!(
        big_len >= expected_len && big_len < expected_len + 4096,
        "delivered {big_len} bytes, generated {expected_len} plus headers"
    );

    let growth_mib = measured.growth_mib();
    let mib = |kib: u64| kib as f64 / 1024.0;
    let rate = (size_mib as f64) / measured.data_time.as_secs_f64();

    println!();
    println!("postern RSS while a {size_mib} MiB message passes (smtps -> Dovecot submission)");
    println!("  {:<44} {:>10}", "measurement", "MiB");
    println!(
        "  {:<44} {:>10.1}",
        "RSS after startup",
        mib(started.rss_kib)
    );
    println!(
        "  {:<44} {:>10.1}",
        "RSS after the warm-up message",
        mib(warm.rss_kib)
    );
    println!(
        "  {:<44} {:>10.1}",
        "HWM before reset (startup + warm-up)",
        mib(warm.hwm_kib)
    );
    println!(
        "  {:<44} {:>10.1}",
        "baseline RSS (after HWM reset)",
        mib(measured.baseline_kib)
    );
    println!(
        "  {:<44} {:>10.1}",
        if measured.hwm_reset {
            "peak RSS during the message (VmHWM)"
        } else {
            "peak RSS during the message (sampled)"
        },
        mib(measured.peak_kib)
    );
    println!(
        "  {:<44} {:>10.1}",
        "peak RSS sampled every 10 ms",
        mib(measured.sampled_peak_kib)
    );
    println!(
        "  {:<44} {:>10.1}",
        "RSS right after",
        mib(measured.after_kib)
    );
    println!("  {:<44} {:>10.1}", "RSS 0.5 s later", mib(settled.rss_kib));
    println!(
        "  {:<44} {:>10.2}   (target <= {TARGET_GROWTH_MIB} MiB: {})",
        "growth (peak - baseline)",
        growth_mib,
        if growth_mib <= TARGET_GROWTH_MIB {
            "met"
        } else {
            "MISSED"
        }
    );
    println!(
        "  {:<44} {:>10.2} s   ({rate:.1} MiB/s; whole session {:.2} s)",
        "DATA to the 250 after the final dot",
        measured.data_time.as_secs_f64(),
        measured.total_time.as_secs_f64()
    );
    println!(
        "  delivered to bob: {} bytes ({:.2} MiB), body SHA-256 identical",
        big_len,
        big_len as f64 / MIB as f64
    );
    if !measured.hwm_reset {
        println!("  (could not write /proc/{pid}/clear_refs: peak is the 10 ms sample)");
    }
    postern.stop();
}

/// With `SMTP_MEMORY_SMAPS` set: the mappings holding the most resident memory, to see
/// where RSS sits (heap arenas, thread stacks, the binary).
fn print_largest_mappings(pid: u32, when: &str) {
    println!("largest resident mappings of postern {when}:");
    for (kib, mapping) in procfs::largest_mappings(pid, 8) {
        println!("  {:>8} KiB  {mapping}", kib);
    }
}

/// The files in `user`'s Maildir/new, smallest first.
fn delivered(dovecot: &Dovecot, user: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dovecot.maildir(user).join("new"))
        .map(|d| d.map(|e| e.unwrap().path()).collect())
        .unwrap_or_default();
    files.sort_by_key(|f| std::fs::metadata(f).map(|m| m.len()).unwrap_or(0));
    files
}
