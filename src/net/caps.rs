//! Caps on what one client may hold open at a time. Two are used: connections per client
//! address (IPv6 grouped by /64) and listener, off by default because an office or a
//! carrier-grade NAT puts hundreds of people behind one address; and logged-in sessions per
//! login, address and protocol, like Dovecot's `mail_max_userip_connections`, so that one
//! account cannot take a NAT address's whole share.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use ipnet::IpNet;

use crate::protocol::Protocol;

/// Connections held per (listener, address group).
pub type AddressCaps = Caps<(Arc<str>, IpAddr)>;

/// Logged-in sessions held per (protocol, address group, user id).
pub type SessionCaps = Caps<(Protocol, IpAddr, i64)>;

/// Open slots by key, each key allowed at most `max`.
#[derive(Debug)]
pub struct Caps<K> {
    /// 0 = no cap.
    max: usize,
    /// Clients in these networks are not capped.
    exempt: Vec<IpNet>,
    open: Mutex<HashMap<K, usize>>,
}

/// One admitted connection or session; dropping it frees the slot.
#[derive(Debug)]
pub struct Admitted<K: Eq + Hash> {
    caps: Arc<Caps<K>>,
    /// `None` when nothing was counted (no cap, an exempt client).
    key: Option<K>,
}

impl<K: Eq + Hash + Clone> Caps<K> {
    /// `max == 0` means no cap; clients in `exempt` are never capped.
    pub fn new(max: usize, exempt: Vec<IpNet>) -> Arc<Self> {
        Arc::new(Self {
            max,
            exempt,
            open: Mutex::default(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<K, usize>> {
        // Counts stay consistent whatever panicked while holding the lock.
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A slot for `key`, a client at `client`, or `None` when the key holds its share.
    pub fn admit(self: &Arc<Self>, client: IpAddr, key: K) -> Option<Admitted<K>> {
        let client = client.to_canonical();
        if self.max == 0 || self.exempt.iter().any(|net| net.contains(&client)) {
            return Some(Admitted {
                caps: self.clone(),
                key: None,
            });
        }
        let mut open = self.lock();
        let count = open.entry(key.clone()).or_insert(0);
        if *count >= self.max {
            return None;
        }
        *count += 1;
        Some(Admitted {
            caps: self.clone(),
            key: Some(key),
        })
    }
}

impl<K: Eq + Hash> Drop for Admitted<K> {
    fn drop(&mut self) {
        let Some(key) = &self.key else {
            return;
        };
        let mut open = self.caps.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = open.get_mut(key) {
            *count -= 1;
            if *count == 0 {
                open.remove(key);
            }
        }
    }
}

impl AddressCaps {
    /// A slot for a connection from `client` on `listener`.
    pub fn admit_connection(
        self: &Arc<Self>,
        listener: &Arc<str>,
        client: IpAddr,
    ) -> Option<Admitted<(Arc<str>, IpAddr)>> {
        self.admit(client, (listener.clone(), address_group(client)))
    }
}

impl SessionCaps {
    /// A slot for a session of the user `user_id` over `protocol` from `client`.
    pub fn admit_session(
        self: &Arc<Self>,
        protocol: Protocol,
        client: IpAddr,
        user_id: i64,
    ) -> Option<Admitted<(Protocol, IpAddr, i64)>> {
        self.admit(client, (protocol, address_group(client), user_id))
    }
}

/// IPv4 as is, IPv6 by its /64: one customer's prefix is one address.
pub fn address_group(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let mut segments = v6.segments();
                segments[4..].fill(0);
                IpAddr::V6(segments.into())
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_gets_its_share_per_listener_and_slots_free_on_drop() {
        let caps = AddressCaps::new(2, vec![]);
        let imaps: Arc<str> = "imaps".into();
        let smtps: Arc<str> = "smtps".into();
        let ip: IpAddr = "2001:db8::1".parse().unwrap();
        let neighbour: IpAddr = "2001:db8::ffff".parse().unwrap();
        let a = caps.admit_connection(&imaps, ip).unwrap();
        let _b = caps.admit_connection(&imaps, neighbour).unwrap();
        assert!(caps.admit_connection(&imaps, ip).is_none(), "same /64");
        assert!(
            caps.admit_connection(&smtps, ip).is_some(),
            "another listener"
        );
        assert!(caps
            .admit_connection(&imaps, "2001:db8:0:1::1".parse().unwrap())
            .is_some());
        drop(a);
        assert!(caps.admit_connection(&imaps, ip).is_some());
    }

    #[test]
    fn zero_means_no_cap_and_trusted_networks_are_exempt() {
        let name: Arc<str> = "x".into();
        let open = AddressCaps::new(0, vec![]);
        let held: Vec<_> = (0..100)
            .map(|_| {
                open.admit_connection(&name, "192.0.2.1".parse().unwrap())
                    .unwrap()
            })
            .collect();
        assert_eq!(held.len(), 100);

        let caps = AddressCaps::new(1, vec!["10.0.0.0/8".parse().unwrap()]);
        let office: IpAddr = "::ffff:10.1.2.3".parse().unwrap();
        let held: Vec<_> = (0..100)
            .map(|_| caps.admit_connection(&name, office).unwrap())
            .collect();
        assert_eq!(held.len(), 100);
        assert!(caps.lock().is_empty(), "exempt clients are not counted");
    }

    #[test]
    fn a_login_gets_its_share_per_address_and_protocol() {
        let caps = SessionCaps::new(2, vec![]);
        let nat: IpAddr = "192.0.2.1".parse().unwrap();
        let _a = caps.admit_session(Protocol::Imap, nat, 1).unwrap();
        let b = caps.admit_session(Protocol::Imap, nat, 1).unwrap();
        assert!(caps.admit_session(Protocol::Imap, nat, 1).is_none());
        assert!(caps.admit_session(Protocol::Imap, nat, 2).is_some());
        assert!(caps.admit_session(Protocol::Smtp, nat, 1).is_some());
        assert!(caps
            .admit_session(Protocol::Imap, "192.0.2.2".parse().unwrap(), 1)
            .is_some());
        drop(b);
        assert!(caps.admit_session(Protocol::Imap, nat, 1).is_some());
    }
}
