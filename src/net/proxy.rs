//! The PROXY protocol header (HAProxy's, v1 text or v2 binary) that a trusted load balancer
//! sends first on a listener with `proxy_protocol = true`: it names the client the balancer
//! is forwarding, so penalties, logs, the audit trail and the upstream see that client
//! rather than the balancer.
//!
//! [`read_header`] reads exactly the header and not a byte more: what follows (a TLS
//! ClientHello, or nothing until postern greets) stays in the socket for the session.
//! Parsing is `ppp`'s; framing (how many bytes to take) is done here, with exact-length
//! reads for v2 and `peek` for the v1 line, whose length is only known at its end.
//!
//! See <https://www.haproxy.org/download/2.6/doc/proxy-protocol.txt>.

use std::net::SocketAddr;
use std::time::Duration;

use ppp::{v1, v2};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// The v2 signature, the first 12 bytes of every binary header.
const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// A v2 header's fixed part: signature, version and command, family and transport, length.
const V2_FIXED_LENGTH: usize = 16;
/// How every v1 header starts.
const V1_PREFIX: &[u8] = b"PROXY ";
/// The longest v1 line the specification allows, CRLF included.
pub const V1_MAX_LENGTH: usize = 107;
/// The shortest header of either version (`PROXY UNKNOWN\r\n`): this many bytes can always
/// be read without reaching past a valid header.
const SHORTEST_HEADER: usize = 15;

/// Why a connection's PROXY header was refused. The connection is closed: what follows a
/// broken header cannot be trusted to start where the session expects.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The balancer sent no complete header in time (or the peer is not a balancer and
    /// waits for a greeting).
    #[error("no complete PROXY header within {0:?}")]
    Timeout(Duration),
    /// The peer closed the connection before the header ended (a balancer's TCP health
    /// check does this).
    #[error("connection closed before the end of the PROXY header")]
    Closed,
    /// The first bytes are neither `PROXY ` nor the v2 signature: the peer does not speak
    /// the PROXY protocol (a client let through without `send-proxy`). The bytes are not
    /// quoted: they may be a client's command line.
    #[error("not a PROXY header")]
    NotProxy,
    /// A v1 line without CRLF within 107 bytes.
    #[error("PROXY v1 line longer than {V1_MAX_LENGTH} bytes")]
    TooLong,
    /// A v1 line that does not parse.
    #[error("malformed PROXY v1 header: {0}")]
    MalformedV1(#[source] v1::BinaryParseError),
    /// A v2 header that does not parse, or whose TLVs overrun it.
    #[error("malformed PROXY v2 header: {0}")]
    MalformedV2(#[source] v2::ParseError),
    /// A header for a connection postern cannot stand in for (a UNIX socket, UDP).
    #[error("unsupported PROXY address family or transport: {0}")]
    Unsupported(&'static str),
    /// Reading from the socket failed.
    #[error("reading the PROXY header: {0}")]
    Io(#[source] std::io::Error),
}

impl From<std::io::Error> for ProxyError {
    fn from(error: std::io::Error) -> Self {
        match error.kind() {
            std::io::ErrorKind::UnexpectedEof => ProxyError::Closed,
            _ => ProxyError::Io(error),
        }
    }
}

/// Reads the PROXY header at the start of `tcp` within `timeout`, leaving every byte after
/// it unread. Returns the client address it carries, or `None` for a header that carries
/// none (`PROXY UNKNOWN`, v2 `LOCAL` or an unspecified family: a balancer's own health
/// check), where the caller uses the peer's address. IPv4-mapped IPv6 addresses come back
/// as IPv4.
pub async fn read_header(
    tcp: &mut TcpStream,
    timeout: Duration,
) -> Result<Option<SocketAddr>, ProxyError> {
    let header = tokio::time::timeout(timeout, read_header_bytes(tcp))
        .await
        .map_err(|_| ProxyError::Timeout(timeout))??;
    parse_header(&header)
}

/// Exactly the bytes of one header, v1 or v2.
async fn read_header_bytes(tcp: &mut TcpStream) -> Result<Vec<u8>, ProxyError> {
    let mut header = vec![0; SHORTEST_HEADER];
    tcp.read_exact(&mut header).await?;
    if header.starts_with(V2_SIGNATURE) {
        header.resize(V2_FIXED_LENGTH, 0);
        tcp.read_exact(&mut header[SHORTEST_HEADER..]).await?;
        let length = u16::from_be_bytes([header[14], header[15]]) as usize;
        header.resize(V2_FIXED_LENGTH + length, 0);
        tcp.read_exact(&mut header[V2_FIXED_LENGTH..]).await?;
        Ok(header)
    } else if header.starts_with(V1_PREFIX) {
        read_rest_of_line(tcp, &mut header).await?;
        Ok(header)
    } else {
        Err(ProxyError::NotProxy)
    }
}

/// Extends `line` up to and including its LF, at most [`V1_MAX_LENGTH`] bytes in all. Each
/// round peeks at what has arrived and consumes it only up to the LF, so the bytes after
/// the line stay in the socket; bytes before the LF are consumed at once, so the next peek
/// waits for new ones instead of returning the same again.
async fn read_rest_of_line(tcp: &mut TcpStream, line: &mut Vec<u8>) -> Result<(), ProxyError> {
    let mut chunk = [0u8; V1_MAX_LENGTH];
    while !line.contains(&b'\n') {
        let room = V1_MAX_LENGTH - line.len();
        if room == 0 {
            return Err(ProxyError::TooLong);
        }
        let peeked = tcp.peek(&mut chunk[..room]).await?;
        if peeked == 0 {
            return Err(ProxyError::Closed);
        }
        let take = chunk[..peeked]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(peeked, |lf| lf + 1);
        // Already in the socket's buffer: returns at once.
        tcp.read_exact(&mut chunk[..take]).await?;
        line.extend_from_slice(&chunk[..take]);
    }
    Ok(())
}

/// The client address in one complete header, v1 or v2, exactly as [`read_header`] frames
/// it: `None` for a header that carries none. IPv4-mapped IPv6 addresses come back as IPv4.
pub fn parse_header(header: &[u8]) -> Result<Option<SocketAddr>, ProxyError> {
    let client = if header.starts_with(V2_SIGNATURE) {
        parse_v2(header)?
    } else {
        parse_v1(header)?
    };
    Ok(client.map(|address| SocketAddr::new(address.ip().to_canonical(), address.port())))
}

fn parse_v1(line: &[u8]) -> Result<Option<SocketAddr>, ProxyError> {
    let header = v1::Header::try_from(line).map_err(ProxyError::MalformedV1)?;
    Ok(match header.addresses {
        v1::Addresses::Tcp4(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
        v1::Addresses::Tcp6(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
        v1::Addresses::Unknown => None,
    })
}

fn parse_v2(bytes: &[u8]) -> Result<Option<SocketAddr>, ProxyError> {
    let header = v2::Header::try_from(bytes).map_err(ProxyError::MalformedV2)?;
    // postern ignores the TLVs, but ones that overrun the header mean a broken sender.
    if let Some(Err(error)) = header.tlvs().find(Result::is_err) {
        return Err(ProxyError::MalformedV2(error));
    }
    if header.command == v2::Command::Local {
        return Ok(None);
    }
    if header.protocol == v2::Protocol::Datagram {
        return Err(ProxyError::Unsupported("UDP"));
    }
    match header.addresses {
        v2::Addresses::IPv4(a) => Ok(Some(SocketAddr::from((a.source_address, a.source_port)))),
        v2::Addresses::IPv6(a) => Ok(Some(SocketAddr::from((a.source_address, a.source_port)))),
        // The specification lets a receiver use the real endpoint addresses here.
        v2::Addresses::Unspecified => Ok(None),
        v2::Addresses::Unix(_) => Err(ProxyError::Unsupported("UNIX socket")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;

    const SECOND: Duration = Duration::from_secs(1);
    /// What a TLS client sends first: the start of a ClientHello record.
    const CLIENT_HELLO: &[u8] = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03";

    /// A connected pair over loopback: (what postern accepted, the balancer's end).
    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let balancer = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (accepted, _) = listener.accept().await.unwrap();
        (accepted, balancer)
    }

    /// Sends `bytes` then `rest`, reads the header, and checks that exactly `rest` is left.
    async fn read_with_rest(bytes: &[u8], rest: &[u8]) -> Result<Option<SocketAddr>, ProxyError> {
        let (mut accepted, mut balancer) = pair().await;
        balancer.write_all(bytes).await.unwrap();
        balancer.write_all(rest).await.unwrap();
        balancer.shutdown().await.unwrap();
        let result = read_header(&mut accepted, SECOND).await;
        if result.is_ok() {
            let mut after = Vec::new();
            accepted.read_to_end(&mut after).await.unwrap();
            assert_eq!(after, rest, "bytes after the header");
        }
        result
    }

    fn v2_header(command: u8, family: u8, addresses: &[u8], tlvs: &[u8]) -> Vec<u8> {
        let mut header = V2_SIGNATURE.to_vec();
        header.push(0x20 | command);
        header.push(family);
        let length = (addresses.len() + tlvs.len()) as u16;
        header.extend_from_slice(&length.to_be_bytes());
        header.extend_from_slice(addresses);
        header.extend_from_slice(tlvs);
        header
    }

    const V4_ADDRESSES: &[u8] = &[192, 0, 2, 7, 127, 0, 0, 1, 0xc3, 0x50, 0x03, 0xe1];
    /// ALPN "imap", a NOOP of 3 bytes, an authority "mail.example.test".
    const TLVS: &[u8] = b"\x01\x00\x04imap\x04\x00\x03\0\0\0\x02\x00\x11mail.example.test";

    #[tokio::test]
    async fn v1_tcp4() {
        let header = b"PROXY TCP4 192.0.2.7 127.0.0.1 50000 993\r\n";
        assert_eq!(
            read_with_rest(header, CLIENT_HELLO).await.unwrap(),
            Some("192.0.2.7:50000".parse().unwrap())
        );
    }

    #[tokio::test]
    async fn v1_tcp6() {
        let header = b"PROXY TCP6 2001:db8::7 2001:db8::1 50000 993\r\n";
        assert_eq!(
            read_with_rest(header, CLIENT_HELLO).await.unwrap(),
            Some("[2001:db8::7]:50000".parse().unwrap())
        );
    }

    #[tokio::test]
    async fn v1_ipv4_mapped_comes_back_as_ipv4() {
        let header = b"PROXY TCP6 ::ffff:192.0.2.7 ::ffff:127.0.0.1 50000 993\r\n";
        assert_eq!(
            read_with_rest(header, b"").await.unwrap(),
            Some("192.0.2.7:50000".parse().unwrap())
        );
    }

    #[tokio::test]
    async fn v1_unknown_carries_no_address() {
        assert_eq!(
            read_with_rest(b"PROXY UNKNOWN\r\n", CLIENT_HELLO)
                .await
                .unwrap(),
            None
        );
        // The receiver must ignore whatever follows UNKNOWN on the line.
        let header = b"PROXY UNKNOWN ffff:f...f:ffff ffff:f...f:ffff 65535 65535\r\n";
        assert_eq!(read_with_rest(header, CLIENT_HELLO).await.unwrap(), None);
    }

    /// The shortest header with nothing after it: read without waiting for more.
    #[tokio::test]
    async fn v1_unknown_alone_does_not_wait_for_more() {
        let (mut accepted, mut balancer) = pair().await;
        balancer.write_all(b"PROXY UNKNOWN\r\n").await.unwrap();
        assert_eq!(read_header(&mut accepted, SECOND).await.unwrap(), None);
        drop(balancer);
    }

    /// The longest lines: TCP6 with the longest addresses, and the specification's 107-byte
    /// worst case (UNKNOWN with addresses after it).
    #[tokio::test]
    async fn v1_longest_lines_are_accepted() {
        let header = b"PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff \
                       ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe 65535 65535\r\n";
        assert_eq!(
            read_with_rest(header, CLIENT_HELLO).await.unwrap(),
            Some(
                "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535"
                    .parse()
                    .unwrap()
            )
        );
        let header = b"PROXY UNKNOWN ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff \
                       ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe 65535 65535\r\n";
        assert_eq!(header.len(), V1_MAX_LENGTH);
        assert_eq!(read_with_rest(header, CLIENT_HELLO).await.unwrap(), None);
    }

    #[tokio::test]
    async fn v1_oversized_line_is_refused() {
        let mut line = b"PROXY TCP4 192.0.2.7 127.0.0.1 50000 993".to_vec();
        line.resize(V1_MAX_LENGTH + 20, b' ');
        line.extend_from_slice(b"\r\n");
        let error = read_with_rest(&line, b"").await.unwrap_err();
        assert!(matches!(error, ProxyError::TooLong), "{error:?}");
    }

    #[tokio::test]
    async fn v1_malformed_lines_are_refused() {
        for line in [
            &b"PROXY TCP4 192.0.2.7 127.0.0.1 50000\r\n"[..],
            b"PROXY TCP4 2001:db8::7 127.0.0.1 50000 993\r\n",
            b"PROXY TCP5 192.0.2.7 127.0.0.1 50000 993\r\n",
            b"PROXY TCP4 192.0.2.7 127.0.0.1 50000 99999\r\n",
            b"PROXY TCP4 192.0.2.7 127.0.0.1 50000 993\n",
            b"PROXY TCP4 192.0.2.7 127.0.0.1 50000 993 extra\r\n",
        ] {
            let error = read_with_rest(line, CLIENT_HELLO).await.unwrap_err();
            assert!(
                matches!(error, ProxyError::MalformedV1(_)),
                "{:?}: {error:?}",
                String::from_utf8_lossy(line)
            );
        }
    }

    #[tokio::test]
    async fn v2_proxy_tcp4_with_tlvs() {
        let header = v2_header(0x1, 0x11, V4_ADDRESSES, TLVS);
        assert_eq!(
            read_with_rest(&header, CLIENT_HELLO).await.unwrap(),
            Some("192.0.2.7:50000".parse().unwrap())
        );
    }

    #[tokio::test]
    async fn v2_proxy_tcp6() {
        let mut addresses = Vec::new();
        addresses.extend_from_slice(
            &"2001:db8::7"
                .parse::<std::net::Ipv6Addr>()
                .unwrap()
                .octets(),
        );
        addresses.extend_from_slice(&std::net::Ipv6Addr::LOCALHOST.octets());
        addresses.extend_from_slice(&[0xc3, 0x50, 0x03, 0xe1]);
        let header = v2_header(0x1, 0x21, &addresses, b"");
        assert_eq!(
            read_with_rest(&header, CLIENT_HELLO).await.unwrap(),
            Some("[2001:db8::7]:50000".parse().unwrap())
        );
    }

    /// LOCAL: the balancer's own connection (a health check); its addresses are ignored.
    #[tokio::test]
    async fn v2_local_carries_no_address() {
        let header = v2_header(0x0, 0x11, V4_ADDRESSES, TLVS);
        assert_eq!(read_with_rest(&header, CLIENT_HELLO).await.unwrap(), None);
        let header = v2_header(0x0, 0x00, b"", b"");
        assert_eq!(read_with_rest(&header, b"").await.unwrap(), None);
    }

    #[tokio::test]
    async fn v2_unsupported_families_are_refused() {
        let header = v2_header(0x1, 0x12, V4_ADDRESSES, b"");
        let error = read_with_rest(&header, b"").await.unwrap_err();
        assert!(matches!(error, ProxyError::Unsupported("UDP")), "{error:?}");
        let header = v2_header(0x1, 0x31, &[0; 216], b"");
        let error = read_with_rest(&header, b"").await.unwrap_err();
        assert!(
            matches!(error, ProxyError::Unsupported("UNIX socket")),
            "{error:?}"
        );
    }

    #[tokio::test]
    async fn v2_malformed_headers_are_refused() {
        // Version 1 in the binary form.
        let mut header = v2_header(0x1, 0x11, V4_ADDRESSES, b"");
        header[12] = 0x11;
        let error = read_with_rest(&header, b"").await.unwrap_err();
        assert!(matches!(error, ProxyError::MalformedV2(_)), "{error:?}");
        // A length too short for the IPv4 addresses.
        let header = v2_header(0x1, 0x11, &V4_ADDRESSES[..8], b"");
        let error = read_with_rest(&header, b"").await.unwrap_err();
        assert!(matches!(error, ProxyError::MalformedV2(_)), "{error:?}");
        // A TLV whose length runs past the header.
        let header = v2_header(0x1, 0x11, V4_ADDRESSES, b"\x01\x00\x09imap");
        let error = read_with_rest(&header, b"").await.unwrap_err();
        assert!(matches!(error, ProxyError::MalformedV2(_)), "{error:?}");
    }

    /// The header arrives a few bytes at a time; what follows is left alone.
    #[tokio::test]
    async fn split_reads() {
        let v1 = b"PROXY TCP4 192.0.2.7 127.0.0.1 50000 993\r\n".to_vec();
        let v2 = v2_header(0x1, 0x11, V4_ADDRESSES, TLVS);
        for header in [v1, v2] {
            let (mut accepted, mut balancer) = pair().await;
            balancer.set_nodelay(true).unwrap();
            let writer = tokio::spawn(async move {
                for piece in header.chunks(5) {
                    balancer.write_all(piece).await.unwrap();
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                balancer.write_all(CLIENT_HELLO).await.unwrap();
                balancer
            });
            assert_eq!(
                read_header(&mut accepted, SECOND).await.unwrap(),
                Some("192.0.2.7:50000".parse().unwrap())
            );
            drop(writer.await.unwrap());
            let mut after = Vec::new();
            accepted.read_to_end(&mut after).await.unwrap();
            assert_eq!(after, CLIENT_HELLO);
        }
    }

    /// A client let straight through to a PROXY listener: TLS, or an IMAP command.
    #[tokio::test]
    async fn garbage_is_not_a_header() {
        for bytes in [
            CLIENT_HELLO,
            b"a1 CAPABILITY\r\nEHLO x\r\n",
            b"GET / HTTP/1.1\r\n",
        ] {
            let (mut accepted, mut balancer) = pair().await;
            balancer.write_all(bytes).await.unwrap();
            balancer.write_all(&[0; 16]).await.unwrap();
            let error = read_header(&mut accepted, SECOND).await.unwrap_err();
            assert!(matches!(error, ProxyError::NotProxy), "{error:?}");
        }
    }

    #[tokio::test]
    async fn closed_mid_header() {
        for partial in [&b"PROXY TCP4 192.0.2.7 127.0"[..], &b"PROX"[..]] {
            let error = read_with_rest(partial, b"").await.unwrap_err();
            assert!(matches!(error, ProxyError::Closed), "{error:?}");
        }
        let v2 = v2_header(0x1, 0x11, V4_ADDRESSES, TLVS);
        let error = read_with_rest(&v2[..20], b"").await.unwrap_err();
        assert!(matches!(error, ProxyError::Closed), "{error:?}");
    }

    /// A peer that says nothing (a client waiting for a greeting) or stops mid-header.
    #[tokio::test(start_paused = true)]
    async fn silence_times_out() {
        for sent in [&b""[..], b"PROXY TCP4 192.0.2.7"] {
            let (mut accepted, mut balancer) = pair().await;
            balancer.write_all(sent).await.unwrap();
            let error = read_header(&mut accepted, 5 * SECOND).await.unwrap_err();
            assert!(
                matches!(error, ProxyError::Timeout(t) if t == 5 * SECOND),
                "{error:?}"
            );
            assert_eq!(error.to_string(), "no complete PROXY header within 5s");
        }
    }
}
