//! Directory sign-in and the account lifecycle against a real OpenLDAP (Debian's slapd,
//! `tests/support/ldap.rs`): people sign in to the portal with their directory password
//! (OpenLDAP and Active Directory presets), get a postern user at their first sign-in with
//! the directory's upstream identity and addresses, wrong passwords, locked accounts and
//! filter injection are refused alike, the directory down is "try again later"; people
//! who are disabled or removed in the directory lose their app passwords and live sessions
//! at the next sync, and come back when the directory says so.

mod support;

use std::process::Command;

use support::imap_client::ImapClient;
use support::ldap::{Slapd, BASE_DN};
use support::postern::{remember_secrets, Options, Postern};
use support::Dovecot;

/// postern with the portal signing in through `slapd` (preset `preset`, over LDAPS), no
/// second factor (postern's own MFA is the portal tests' business), syncing every `sync`.
async fn postern(dovecot: &Dovecot, slapd: &Slapd, preset: &str, sync: &str) -> Postern {
    postern_with(dovecot, slapd, &slapd.portal_config(preset), sync).await
}

async fn postern_with(dovecot: &Dovecot, slapd: &Slapd, ldap: &str, sync: &str) -> Postern {
    for who in support::ldap::PEOPLE {
        remember_secrets([slapd.password(who).to_string()]);
    }
    Postern::start_with(
        dovecot,
        Options {
            extra_config: format!(
                "[portal]\nbind = \"127.0.0.1:0\"\nsign_in = \"ldap\"\nrequire_mfa = false\n\
                 [portal.notifications]\nenabled = false\n{}\
                 [directory]\nsync_interval = \"{sync}\"\n",
                ldap
            ),
            ..Options::default()
        },
    )
    .await
}

/// Signs in with curl: the status and the page (or redirect) that answers.
fn sign_in(postern: &Postern, login: &str, password: &str) -> (u16, String) {
    let jar = tempfile::NamedTempFile::new().unwrap();
    let jar = jar.path().to_str().unwrap().to_string();
    let base = format!(
        "https://localhost:{}",
        postern.portal.expect("the portal listens").port()
    );
    let curl = |args: &[&str], path: &str| {
        let output = Command::new("curl")
            .args(["-sS", "-i", "--cacert"])
            .arg(&postern.ca_path)
            .args(["-c", &jar, "-b", &jar])
            .args(args)
            .arg(format!("{base}{path}"))
            .output()
            .expect("run curl");
        let text = String::from_utf8_lossy(&output.stdout).to_string();
        let status = text
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        (status, text)
    };
    let (_, page) = curl(&[], "/");
    let csrf = page
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("the form carries a token")
        .to_string();
    curl(
        &[
            "--data-urlencode",
            &format!("csrf={csrf}"),
            "--data-urlencode",
            &format!("login={login}"),
            "--data-urlencode",
            &format!("password={password}"),
        ],
        "/sign-in",
    )
}

/// The refusal a sign-in page shows.
fn error(page: &str) -> String {
    page.split("id=\"error\">")
        .nth(1)
        .and_then(|rest| rest.split('<').next())
        .unwrap_or_default()
        .to_string()
}

const REFUSED: &str = "The email address or password is not right.";

/// OpenLDAP: the first sign-in makes the user from the entry (login = mail, upstream =
/// uid, every mail value an address); a wrong password, a locked account, an unknown
/// name and a filter injection are refused alike; a uid full of filter metacharacters
/// signs in; the directory down is "try again later".
#[tokio::test(flavor = "multi_thread")]
async fn openldap_people_sign_in_and_get_a_user() {
    let slapd = Slapd::start();
    let dovecot = Dovecot::start();
    let postern = postern(&dovecot, &slapd, "openldap", "0s").await;

    let (status, page) = sign_in(&postern, "alice", slapd.password("alice"));
    assert_eq!(status, 303, "{page}\n{}", slapd.log());
    assert!(page.contains("location: /app-passwords"), "{page}");
    let alice = postern
        .store
        .user("alice@example.test")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(alice.upstream_user, "alice");
    assert_eq!(alice.addresses, ["alice@example.test"]);

    let (status, _) = sign_in(&postern, "dave@example.test", slapd.password("dave"));
    assert_eq!(status, 303);
    let dave = postern
        .store
        .user("dave@example.test")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        dave.addresses,
        [
            "dave.lister@example.test",
            "dave@example.test",
            "postmaster@example.test"
        ]
    );

    let (status, _) = sign_in(&postern, "erin*(it)", slapd.password("erin"));
    assert_eq!(status, 303, "an escaped uid signs in");

    for (login, password) in [
        ("alice", "not-her-password"),
        ("carol", slapd.password("carol")),
        ("nobody", "whatever"),
        ("*", slapd.password("alice")),
        ("alice)(uid=*", slapd.password("alice")),
        ("*)(|(uid=*", "x"),
    ] {
        let (status, page) = sign_in(&postern, login, password);
        assert_eq!((status, error(&page).as_str()), (200, REFUSED), "{login}");
    }
    assert!(postern
        .store
        .user("carol@example.test")
        .await
        .unwrap()
        .is_none());
    let users = postern.cli(&["user", "list", "--json"]);
    let users: serde_json::Value = serde_json::from_slice(&users.stdout).unwrap();
    assert_eq!(users.as_array().unwrap().len(), 3, "{users}");

    slapd.stop();
    let (status, page) = sign_in(&postern, "alice", slapd.password("alice"));
    assert_eq!(status, 200);
    assert_eq!(
        error(&page),
        "Signing in is not possible right now. Try again in a few minutes."
    );
    postern.stop().await;
}

/// In a real browser: alice signs in with her uid and directory password and lands on
/// her app passwords.
#[tokio::test(flavor = "multi_thread")]
async fn a_person_signs_in_with_the_directory_in_a_browser() {
    let slapd = Slapd::start();
    let dovecot = Dovecot::start();
    let postern = postern(&dovecot, &slapd, "openldap", "0s").await;
    let base = format!("https://localhost:{}", postern.portal.unwrap().port());
    let result =
        support::browser::run(&base, "alice", slapd.password("alice"), &["directory"]).await;
    assert_eq!(result["landed"], "/app-passwords", "{result}");
    assert_eq!(result["title"], "App passwords");
    postern.stop().await;
}

/// Active Directory (here over StartTLS): bob signs in by his account name; his user is
/// his UPN, with the SMTP addresses of proxyAddresses (not X500 or SIP); disabled dan is
/// refused.
#[tokio::test(flavor = "multi_thread")]
async fn active_directory_people_sign_in_by_account_name() {
    let slapd = Slapd::start();
    let dovecot = Dovecot::start();
    let ldap = slapd.portal_config_starttls("active-directory");
    let postern = postern_with(&dovecot, &slapd, &ldap, "0s").await;
    let (status, page) = sign_in(&postern, "bob", slapd.password("bob"));
    assert_eq!(status, 303, "{page}\n{}", slapd.log());
    let bob = postern
        .store
        .user("bob@example.test")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(bob.upstream_user, "bob@example.test");
    assert_eq!(
        bob.addresses,
        [
            "bob@example.test",
            "bob@sales.example.test",
            "robert@example.test"
        ]
    );
    let (status, page) = sign_in(&postern, "dan@example.test", slapd.password("dan"));
    assert_eq!((status, error(&page).as_str()), (200, REFUSED));
    assert!(
        slapd.log().contains("STARTTLS"),
        "the connection was upgraded:\n{}",
        slapd.log()
    );
    postern.stop().await;
}

/// People who leave lose access by themselves: alice (locked in the directory) and dave
/// (removed) are disabled at the next sync, their app passwords stop working and alice's
/// live IMAP session closes; unlocked, alice is enabled again; an admin's own disabling
/// is not undone. `postern directory sync --dry-run` shows the plan and changes nothing;
/// with the directory down, nothing changes.
#[tokio::test(flavor = "multi_thread")]
async fn people_who_leave_lose_access_at_the_next_sync() {
    let slapd = Slapd::start();
    let dovecot = Dovecot::start();
    for who in ["alice", "dave", "erin"] {
        dovecot.add_user(who, &format!("{who}-direct"));
    }
    let postern = postern(&dovecot, &slapd, "openldap", "0s").await;
    for (login, who) in [("alice", "alice"), ("dave", "dave"), ("erin*(it)", "erin")] {
        let (status, page) = sign_in(&postern, login, slapd.password(who));
        assert_eq!(status, 303, "{login}: {page}");
    }
    let scopes = [postern::store::Scope::Imap];
    let (_, alice) = postern.issue("alice@example.test", &scopes, None).await;
    let (_, dave) = postern.issue("dave@example.test", &scopes, None).await;
    // erin is disabled by an admin; the directory still has her.
    assert!(postern
        .cli(&["user", "disable", "erin@example.test"])
        .status
        .success());

    let (mut session, _) = ImapClient::connect_tls(postern.imaps, &postern.ca_path).await;
    let login = session
        .command("a1", &format!("LOGIN alice@example.test \"{alice}\""))
        .await;
    assert!(login.last().unwrap().starts_with("a1 OK"), "{login:?}");
    session.command("a2", "SELECT INBOX").await;
    session.send(b"a3 IDLE\r\n").await;
    assert_eq!(session.read_line().await, "+ idling");

    slapd.modify(&format!(
        "dn: uid=alice,{BASE_DN}\nchangetype: modify\nreplace: pwdAccountLockedTime\n\
         pwdAccountLockedTime: 000001010000Z\n"
    ));
    slapd.delete(&format!("uid=dave,{BASE_DN}"));

    let dry = postern.cli(&["directory", "sync", "--dry-run"]);
    let planned = String::from_utf8_lossy(&dry.stdout);
    assert!(dry.status.success(), "{dry:?}");
    assert_eq!(
        planned,
        "disable alice@example.test: disabled in the directory\n\
         disable dave@example.test: gone from the directory\n"
    );
    let still = postern
        .store
        .user("alice@example.test")
        .await
        .unwrap()
        .unwrap();
    assert!(still.disabled_at.is_none(), "a dry run changes nothing");

    let synced = postern.cli(&["directory", "sync"]);
    assert!(synced.status.success(), "{synced:?}");
    let since = std::time::Instant::now();
    assert!(
        session
            .closed_within(std::time::Duration::from_secs(10))
            .await,
        "the live session closes"
    );
    eprintln!("IDLE session closed {:?} after the sync", since.elapsed());
    for (login, password) in [("alice@example.test", &alice), ("dave@example.test", &dave)] {
        let (mut client, _) = ImapClient::connect_tls(postern.imaps, &postern.ca_path).await;
        let reply = client
            .command("b1", &format!("LOGIN {login} \"{password}\""))
            .await;
        assert!(
            reply.last().unwrap().starts_with("b1 NO"),
            "{login}: {reply:?}"
        );
    }

    slapd.modify(&format!(
        "dn: uid=alice,{BASE_DN}\nchangetype: modify\ndelete: pwdAccountLockedTime\n"
    ));
    let synced = postern.cli(&["directory", "sync"]);
    assert_eq!(
        String::from_utf8_lossy(&synced.stdout),
        "enable alice@example.test: back in the directory\n"
    );
    let (mut client, _) = ImapClient::connect_tls(postern.imaps, &postern.ca_path).await;
    let reply = client
        .command("c1", &format!("LOGIN alice@example.test \"{alice}\""))
        .await;
    assert!(reply.last().unwrap().starts_with("c1 OK"), "{reply:?}");
    let erin = postern
        .store
        .user("erin@example.test")
        .await
        .unwrap()
        .unwrap();
    assert!(erin.disabled_at.is_some(), "the admin's disabling stays");

    slapd.stop();
    let down = postern.cli(&["directory", "sync"]);
    assert_eq!(down.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&down.stderr).contains("nothing changed"),
        "{down:?}"
    );
    let audit = postern.cli(&["audit", "--user", "alice@example.test", "--json"]);
    let audit = String::from_utf8_lossy(&audit.stdout);
    assert!(audit.contains("source=directory"), "{audit}");
    postern.stop().await;
}

/// The sync runs by itself every `[directory] sync_interval`.
#[tokio::test(flavor = "multi_thread")]
async fn the_sync_runs_by_itself() {
    let slapd = Slapd::start();
    let dovecot = Dovecot::start();
    let postern = postern(&dovecot, &slapd, "openldap", "200ms").await;
    let (status, _) = sign_in(&postern, "alice", slapd.password("alice"));
    assert_eq!(status, 303);
    slapd.delete(&format!("uid=alice,{BASE_DN}"));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let alice = postern
            .store
            .user("alice@example.test")
            .await
            .unwrap()
            .unwrap();
        if alice.disabled_at.is_some() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not disabled within 10 s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    postern.stop().await;
}
