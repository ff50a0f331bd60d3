//! App passwords for load runs, issued in-process (argon2id on postern's configured hash
//! pool, lookup tags from its store's key) before anything is measured, so that issuing
//! never competes with what a benchmark measures.

use std::collections::VecDeque;
use std::path::Path;
use std::sync::{Arc, Mutex};

use postern::accounts::{Accounts, IssueRequest};
use postern::store::{Scope, Store};
use tokio::task::JoinSet;

/// Issues app passwords for users of one domain, as `postern app-password create` would.
#[derive(Clone)]
pub struct Issuer {
    accounts: Accounts,
    domain: &'static str,
}

impl Issuer {
    /// Reads postern's configuration (hash parameters, the per-user limit) and the
    /// store's lookup key.
    pub async fn new(store: &Store, config_path: &Path, domain: &'static str) -> Issuer {
        let config = postern::config::Config::load(config_path).expect("postern config");
        let hasher = postern::gateway::password_hasher(&config).expect("hasher");
        let accounts = Accounts::new(store.clone(), hasher, config.auth.max_app_passwords)
            .await
            .expect("accounts");
        Issuer { accounts, domain }
    }

    /// Issues one app password (imap, smtp and pop3) per job `(user, n)` to `user@domain`, four
    /// at a time (the hash pool bounds it anyway); returns `(user, password)` pairs in no
    /// particular order.
    pub async fn issue_all(&self, jobs: Vec<(String, usize)>) -> Vec<(String, String)> {
        let queue = Arc::new(Mutex::new(VecDeque::from(jobs)));
        let mut set = JoinSet::new();
        for _ in 0..4 {
            let (issuer, queue) = (self.clone(), queue.clone());
            set.spawn(async move {
                let mut out = Vec::new();
                loop {
                    let Some((name, i)) = queue.lock().unwrap().pop_front() else {
                        return out;
                    };
                    let login = format!("{name}@{}", issuer.domain);
                    let label = format!("bench {i}");
                    let issued = issuer
                        .accounts
                        .issue_app_password(IssueRequest {
                            login: &login,
                            name: &label,
                            scopes: &[Scope::Imap, Scope::Smtp, Scope::Pop3],
                            expires_at: None,
                            actor: postern::accounts::Actor::Cli,
                        })
                        .await
                        .expect("issue app password");
                    out.push((name, issued.password.expose().clone()));
                }
            });
        }
        let mut all = Vec::new();
        while let Some(done) = set.join_next().await {
            all.extend(done.unwrap());
        }
        all
    }
}
