//! PROXY protocol headers through `postern::net::proxy::parse_header`, framed as
//! `postern::net::proxy::read_header` frames them off the socket: v1 from `PROXY ` up to the
//! LF, at most 107 bytes and at least the 15 of the shortest header; v2 as the signature,
//! the fixed part and the length it announces. Unframed input goes to the parser too: it
//! must cope with anything.
#![no_main]

use libfuzzer_sys::fuzz_target;
use postern::net::proxy::{parse_header, V1_MAX_LENGTH};

const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
const SHORTEST_HEADER: usize = 15;

fuzz_target!(|data: &[u8]| {
    let framed = if data.starts_with(V2_SIGNATURE) {
        data.get(14..16)
            .map(|length| 16 + usize::from(u16::from_be_bytes([length[0], length[1]])))
            .and_then(|end| data.get(..end))
    } else if data.starts_with(b"PROXY ") {
        data.iter()
            .take(V1_MAX_LENGTH)
            .position(|&b| b == b'\n')
            .and_then(|lf| data.get(..(lf + 1).max(SHORTEST_HEADER)))
    } else {
        None
    };
    let _ = parse_header(framed.unwrap_or(data));
});
