//! Splitting a fuzz input into reads, as a network would deliver it.

/// Splits the client's bytes into reads whose sizes come from a seeded xorshift: seed 0
/// is one read of everything.
pub struct Splitter<'a> {
    state: u32,
    rest: &'a [u8],
}

impl<'a> Splitter<'a> {
    pub fn new(seed: u8, rest: &'a [u8]) -> Self {
        let state = if seed == 0 {
            0
        } else {
            u32::from(seed).wrapping_mul(0x9E37_79B9) | 1
        };
        Self { state, rest }
    }

    pub fn next(&mut self) -> Option<&'a [u8]> {
        if self.rest.is_empty() {
            return None;
        }
        let size = if self.state == 0 {
            self.rest.len()
        } else {
            self.state ^= self.state << 13;
            self.state ^= self.state >> 17;
            self.state ^= self.state << 5;
            1 + (self.state % 48) as usize
        };
        let (read, rest) = self.rest.split_at(size.min(self.rest.len()));
        self.rest = rest;
        Some(read)
    }
}
