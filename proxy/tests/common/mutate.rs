//! Valid HTTP/1.1 messages with bytes changed at random, for the tests that check a
//! malformed message ends only its own exchange. Seeded: a failure replays.

/// Bytes that matter to HTTP/1.1's syntax, tried half the time.
const SPICE: &[u8] = b"\r\n\0 :\t\x7f\xff,;0aA-\"";

/// A xorshift generator: no crate, the same sequence on every machine.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    /// A number below `n` (`n` > 0).
    pub fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 33) as usize % n
    }
}

/// `message` with one to three bytes replaced (by a syntax byte or any byte); one
/// time in five cut short, and, when `repeat_line`, one in five with its second line
/// repeated (a second `Host`, `Content-Length`, …).
pub fn mutate(message: &[u8], rng: &mut Rng, repeat_line: bool) -> Vec<u8> {
    let mut bytes = message.to_vec();
    for _ in 0..1 + rng.below(3) {
        let at = rng.below(bytes.len());
        bytes[at] = match rng.below(2) {
            0 => SPICE[rng.below(SPICE.len())],
            _ => rng.below(256) as u8,
        };
    }
    match rng.below(5) {
        0 => bytes.truncate(rng.below(bytes.len())),
        1 if repeat_line => {
            let ends: Vec<usize> = (0..bytes.len()).filter(|&i| bytes[i] == b'\n').collect();
            if let [first, second, _, ..] = ends[..] {
                let line = bytes[first + 1..second + 1].to_vec();
                bytes.splice(second + 1..second + 1, line);
            }
        }
        _ => {}
    }
    bytes
}
