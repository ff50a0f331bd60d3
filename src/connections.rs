//! Per-address connection caps: how many connections one client address (IPv6 grouped
//! by /64) may hold open on one listener at a time.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// Open connections by (listener, address group).
#[derive(Debug, Default)]
pub struct ConnectionCaps {
    max_per_address: usize,
    open: Mutex<HashMap<(Arc<str>, IpAddr), usize>>,
}

/// One admitted connection; dropping it frees the slot.
#[derive(Debug)]
pub struct Admitted {
    caps: Arc<ConnectionCaps>,
    key: (Arc<str>, IpAddr),
}

impl ConnectionCaps {
    /// `max_per_address == 0` means no cap.
    pub fn new(max_per_address: usize) -> Arc<Self> {
        Arc::new(Self {
            max_per_address,
            open: Mutex::default(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(Arc<str>, IpAddr), usize>> {
        // Counts stay consistent whatever panicked while holding the lock.
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A slot for a connection from `client` on `listener`, or `None` when the address
    /// already holds its share.
    pub fn admit(self: &Arc<Self>, listener: &Arc<str>, client: IpAddr) -> Option<Admitted> {
        let key = (listener.clone(), address_group(client));
        let mut open = self.lock();
        let count = open.entry(key.clone()).or_insert(0);
        if self.max_per_address > 0 && *count >= self.max_per_address {
            return None;
        }
        *count += 1;
        Some(Admitted {
            caps: self.clone(),
            key,
        })
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut open = self.caps.lock();
        if let Some(count) = open.get_mut(&self.key) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.key);
            }
        }
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
        let caps = ConnectionCaps::new(2);
        let imaps: Arc<str> = "imaps".into();
        let smtps: Arc<str> = "smtps".into();
        let ip: IpAddr = "2001:db8::1".parse().unwrap();
        let neighbour: IpAddr = "2001:db8::ffff".parse().unwrap();
        let a = caps.admit(&imaps, ip).unwrap();
        let _b = caps.admit(&imaps, neighbour).unwrap();
        assert!(caps.admit(&imaps, ip).is_none(), "same /64");
        assert!(caps.admit(&smtps, ip).is_some(), "another listener");
        assert!(caps
            .admit(&imaps, "2001:db8:0:1::1".parse().unwrap())
            .is_some());
        drop(a);
        assert!(caps.admit(&imaps, ip).is_some());
    }

    #[test]
    fn zero_means_no_cap() {
        let caps = ConnectionCaps::new(0);
        let name: Arc<str> = "x".into();
        let held: Vec<_> = (0..100)
            .map(|_| caps.admit(&name, "192.0.2.1".parse().unwrap()).unwrap())
            .collect();
        assert_eq!(held.len(), 100);
    }
}
