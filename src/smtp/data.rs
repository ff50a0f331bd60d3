//! The dot framing of message data (RFC 5321 §4.5.2), byte by byte and split anywhere:
//! line endings normalized to CRLF, the terminating `.` line found exactly where the
//! upstream will find it, dot-stuffing kept. The SMTP conversation reads DATA with it; the
//! same framing ends a POP3 multi-line reply.

const CRLF: &[u8] = b"\r\n";

/// Where the message scanner stands; see [`scan`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scan {
    /// At the start of a line, nothing held back.
    LineStart,
    /// Inside a line, nothing held back.
    InLine,
    /// A CR is held back until the next byte says whether it is CRLF or a bare CR; `empty`
    /// if the line it ends is empty.
    Cr { empty: bool },
    /// A `.` at the start of a line is held back: the terminator, or a dot-stuffed line.
    Dot,
    /// `.` and CR are held back.
    DotCr,
}

/// Why [`scan`] stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScanStop {
    /// All input consumed.
    NeedMore,
    /// An empty line was completed (only when asked to stop there).
    EmptyLine,
    /// The terminating `.` line was consumed; the rest of the input is commands.
    End,
}

/// Reads message data from `input`, appending it to `out` with line endings normalized to
/// CRLF and the terminating `.` line left out. Returns how many bytes were consumed and why
/// it stopped; with `stop_at_empty_line` it also stops after an empty line (the end of the
/// header block), which is included in `out`.
///
/// Held-back bytes (a CR whose LF may follow, a `.` at the start of a line) live in `state`,
/// so input may be split anywhere.
pub fn scan(
    state: &mut Scan,
    input: &[u8],
    out: &mut Vec<u8>,
    stop_at_empty_line: bool,
) -> (usize, ScanStop) {
    let mut at = 0;
    while at < input.len() {
        match *state {
            Scan::InLine => {
                let rest = &input[at..];
                // memchr2 is vectorised: the body of a message is mostly this loop.
                let run = memchr::memchr2(b'\r', b'\n', rest).unwrap_or(rest.len());
                out.extend_from_slice(&rest[..run]);
                at += run;
                match input.get(at) {
                    Some(b'\r') => *state = Scan::Cr { empty: false },
                    Some(_) => {
                        out.extend_from_slice(CRLF);
                        *state = Scan::LineStart;
                    }
                    None => break,
                }
                at += 1;
            }
            Scan::LineStart => {
                let byte = input[at];
                at += 1;
                match byte {
                    b'.' => *state = Scan::Dot,
                    b'\r' => *state = Scan::Cr { empty: true },
                    b'\n' => {
                        out.extend_from_slice(CRLF);
                        if stop_at_empty_line {
                            return (at, ScanStop::EmptyLine);
                        }
                    }
                    _ => {
                        out.push(byte);
                        *state = Scan::InLine;
                    }
                }
            }
            Scan::Cr { empty } => {
                // CRLF, or a bare CR ending the line: the byte after it is not consumed.
                if input[at] == b'\n' {
                    at += 1;
                }
                out.extend_from_slice(CRLF);
                *state = Scan::LineStart;
                if empty && stop_at_empty_line {
                    return (at, ScanStop::EmptyLine);
                }
            }
            Scan::Dot => match input[at] {
                b'\r' => {
                    at += 1;
                    *state = Scan::DotCr;
                }
                b'\n' => {
                    *state = Scan::LineStart;
                    return (at + 1, ScanStop::End);
                }
                _ => {
                    // A dot-stuffed (or merely dotted) line: the dot is data.
                    out.push(b'.');
                    *state = Scan::InLine;
                }
            },
            Scan::DotCr => {
                if input[at] == b'\n' {
                    at += 1;
                }
                *state = Scan::LineStart;
                return (at, ScanStop::End);
            }
        }
    }
    (at, ScanStop::NeedMore)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Scans `input` in pieces of `split` bytes; returns the data, and whether the end was
    /// found and how many bytes it consumed in all.
    fn scan_in_pieces(input: &[u8], split: usize) -> (Vec<u8>, Option<usize>) {
        let mut state = Scan::LineStart;
        let mut out = Vec::new();
        let mut consumed = 0;
        for piece in input.chunks(split) {
            let (used, stop) = scan(&mut state, piece, &mut out, false);
            consumed += used;
            if stop == ScanStop::End {
                return (out, Some(consumed));
            }
        }
        (out, None)
    }

    #[test]
    fn the_end_is_found_however_the_input_is_split() {
        let input = b"Subject: x\r\n\r\n..stuffed\nbare lf\rbare cr\r\n.\r\nQUIT\r\n";
        for split in 1..input.len() {
            let (out, end) = scan_in_pieces(input, split);
            assert_eq!(
                out,
                b"Subject: x\r\n\r\n..stuffed\r\nbare lf\r\nbare cr\r\n"
            );
            assert_eq!(end, Some(input.len() - b"QUIT\r\n".len()), "split {split}");
        }
    }

    #[test]
    fn no_variant_of_a_dot_line_but_its_own_ends_the_data() {
        for input in [&b"a\r\n.x\r\n"[..], b"a\r\n. \r\n", b"a\r\n..\r\n"] {
            assert_eq!(scan_in_pieces(input, input.len()).1, None, "{input:?}");
        }
        for input in [&b"a\n.\n"[..], b"a\r.\rQ", b"a\r\n.\r\n"] {
            assert!(scan_in_pieces(input, 1).1.is_some(), "{input:?}");
        }
    }

    #[test]
    fn a_header_block_stops_at_its_empty_line() {
        let mut state = Scan::LineStart;
        let mut out = Vec::new();
        let input = b"From: a@b\r\n\r\nbody\r\n";
        let (used, stop) = scan(&mut state, input, &mut out, true);
        assert_eq!(stop, ScanStop::EmptyLine);
        assert_eq!(&input[..used], b"From: a@b\r\n\r\n");
        assert_eq!(out, b"From: a@b\r\n\r\n");
    }
}
