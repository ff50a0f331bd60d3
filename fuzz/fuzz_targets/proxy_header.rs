//! PROXY protocol headers, parsed with `ppp` exactly as `postern::proxy` does (its
//! `parse` is private and `read_header` needs a socket): v1 from `PROXY ` up to the LF,
//! at most 107 bytes; v2 as the signature, the fixed part and the length it announces;
//! then every TLV walked, as postern does to refuse overruns.
#![no_main]

use std::net::SocketAddr;

use libfuzzer_sys::fuzz_target;
use ppp::{v1, v2};

const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
const V1_MAX_LENGTH: usize = 107;
const SHORTEST_HEADER: usize = 15;

fuzz_target!(|data: &[u8]| {
    if data.starts_with(V2_SIGNATURE) {
        if data.len() < 16 {
            return;
        }
        let length = usize::from(u16::from_be_bytes([data[14], data[15]]));
        let Some(header) = data.get(..16 + length) else {
            return;
        };
        let _ = parse_v2(header);
    } else if data.starts_with(b"PROXY ") {
        // postern reads the 15 bytes of the shortest header first, then up to the LF.
        let Some(lf) = data.iter().take(V1_MAX_LENGTH).position(|&b| b == b'\n') else {
            return;
        };
        let Some(header) = data.get(..(lf + 1).max(SHORTEST_HEADER)) else {
            return;
        };
        let _ = parse_v1(header);
    } else {
        // Not framed as postern frames it, but the parsers must cope with anything.
        let _ = v1::Header::try_from(data);
        let _ = parse_v2(data);
    }
});

fn parse_v1(line: &[u8]) -> Option<Option<SocketAddr>> {
    let header = v1::Header::try_from(line).ok()?;
    Some(match header.addresses {
        v1::Addresses::Tcp4(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
        v1::Addresses::Tcp6(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
        v1::Addresses::Unknown => None,
    })
}

fn parse_v2(bytes: &[u8]) -> Option<Option<SocketAddr>> {
    let header = v2::Header::try_from(bytes).ok()?;
    if header.tlvs().any(|tlv| tlv.is_err()) {
        return None;
    }
    if header.command == v2::Command::Local || header.protocol == v2::Protocol::Datagram {
        return Some(None);
    }
    Some(match header.addresses {
        v2::Addresses::IPv4(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
        v2::Addresses::IPv6(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
        v2::Addresses::Unspecified | v2::Addresses::Unix(_) => None,
    })
}
