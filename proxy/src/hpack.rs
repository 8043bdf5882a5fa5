//! HPACK (RFC 7541): header compression for Strait's HTTP/2 server codec.
//!
//! [`Decoder`] turns request header blocks into `(name, value)` byte pairs; [`Encoder`] writes
//! response heads and trailers. One of each per connection, driven in frame order (HPACK state
//! is connection-wide, so blocks must be processed in the order they appear on the wire).
//!
//! # Decoding
//!
//! The decoder implements all of RFC 7541. It is on the per-request hot path, so:
//!
//! * Fields are handed to a callback as borrowed slices: from the static table, the dynamic
//!   table, the block itself (raw literals) or one of two scratch buffers owned by the decoder
//!   (Huffman literals: one for names, one for values). Nothing is allocated per field except
//!   the copy stored when a field is added to the dynamic table.
//! * The dynamic table is a `VecDeque` ring, newest entry at the front, so HPACK index
//!   `62 + i` is `entries[i]`. Each entry is one allocation holding name and value back to back.
//! * Huffman decoding consumes four bits per step through a 256-state × 16-nibble transition
//!   table derived once (behind a `OnceLock`) from the Appendix B code table. A state is an
//!   interior node of the code tree; since the shortest code is 5 bits, a nibble completes at
//!   most one symbol. Each transition records whether stopping there leaves valid padding
//!   (at most 7 bits, all ones), and whether it runs into EOS, which RFC 7541 §5.2 makes an
//!   error.
//! * Prefix integers are limited to four continuation bytes (values a little above 2^28), which
//!   bounds the work per integer and keeps arithmetic far from overflow on 32-bit targets.
//!
//! Every error is a connection error (`COMPRESSION_ERROR`, RFC 9113 §4.3): after one the
//! dynamic table no longer matches the peer's and the decoder must not be used again.
//!
//! # Encoding
//!
//! The encoder favours CPU over the last few bytes, as HAProxy and nghttp2 do:
//!
//! * **No Huffman coding.** Raw literals are always legal. Huffman saves roughly a fifth of the
//!   literal bytes, but costs a table lookup and bit shuffling per byte on every response,
//!   while the fields that repeat (server, content-type, cache-control, ...) become one-byte
//!   dynamic-table references after their first occurrence anyway.
//! * **Indexing rules.** A field matching a static or dynamic entry exactly is sent as an
//!   index. Credentials (`authorization`, `proxy-authorization`, any value marked
//!   [`http::HeaderValue::set_sensitive`], and `cookie`/`set-cookie` values under 20 bytes,
//!   which are short enough to guess, as in nghttp2) are sent as literals *never indexed*, and
//!   are not even looked up in the dynamic table: otherwise an attacker who can inject fields
//!   on the same connection could learn a secret from the size of the output (CRIME-style;
//!   RFC 7541 §7.1). Everything else is added to the dynamic table if it takes at most 3/4 of
//!   it, so that one large value cannot flush every other entry; bigger fields are sent as
//!   literals without indexing.
//! * **Bounded table.** The encoder's table never exceeds 4096 bytes, whatever the peer
//!   allows: at most 4096 / 33 entries, so lookups stay cheap and per-connection memory small.
//!   Exact and name-only matches are found through two 128-bucket hash chains linking entries
//!   by insertion number; evicted entries fall off the end of a chain by number, so eviction
//!   never touches the index. The hash reads only the length and first and last eight bytes of
//!   name and value, so it costs the same for a 4-byte and a 4-kilobyte value.

use std::collections::VecDeque;
use std::fmt;
use std::sync::OnceLock;

use bytes::{BufMut, BytesMut};
use http::{HeaderMap, StatusCode};

/// Per-entry overhead in the table size accounting (RFC 7541 §4.1).
const ENTRY_OVERHEAD: usize = 32;

/// The protocol default SETTINGS_HEADER_TABLE_SIZE, and the largest table the encoder uses.
const DEFAULT_TABLE_SIZE: usize = 4096;

/// Number of static table entries; dynamic indices start at `STATIC_LEN + 1`.
const STATIC_LEN: usize = 61;

/// The static table (RFC 7541 Appendix A); HPACK index `i` is `STATIC_TABLE[i - 1]`.
static STATIC_TABLE: [(&[u8], &[u8]); STATIC_LEN] = [
    (b":authority", b""),
    (b":method", b"GET"),
    (b":method", b"POST"),
    (b":path", b"/"),
    (b":path", b"/index.html"),
    (b":scheme", b"http"),
    (b":scheme", b"https"),
    (b":status", b"200"),
    (b":status", b"204"),
    (b":status", b"206"),
    (b":status", b"304"),
    (b":status", b"400"),
    (b":status", b"404"),
    (b":status", b"500"),
    (b"accept-charset", b""),
    (b"accept-encoding", b"gzip, deflate"),
    (b"accept-language", b""),
    (b"accept-ranges", b""),
    (b"accept", b""),
    (b"access-control-allow-origin", b""),
    (b"age", b""),
    (b"allow", b""),
    (b"authorization", b""),
    (b"cache-control", b""),
    (b"content-disposition", b""),
    (b"content-encoding", b""),
    (b"content-language", b""),
    (b"content-length", b""),
    (b"content-location", b""),
    (b"content-range", b""),
    (b"content-type", b""),
    (b"cookie", b""),
    (b"date", b""),
    (b"etag", b""),
    (b"expect", b""),
    (b"expires", b""),
    (b"from", b""),
    (b"host", b""),
    (b"if-match", b""),
    (b"if-modified-since", b""),
    (b"if-none-match", b""),
    (b"if-range", b""),
    (b"if-unmodified-since", b""),
    (b"last-modified", b""),
    (b"link", b""),
    (b"location", b""),
    (b"max-forwards", b""),
    (b"proxy-authenticate", b""),
    (b"proxy-authorization", b""),
    (b"range", b""),
    (b"referer", b""),
    (b"refresh", b""),
    (b"retry-after", b""),
    (b"server", b""),
    (b"set-cookie", b""),
    (b"strict-transport-security", b""),
    (b"transfer-encoding", b""),
    (b"user-agent", b""),
    (b"vary", b""),
    (b"via", b""),
    (b"www-authenticate", b""),
];

/// Static-table index of a regular (non-pseudo) header name, dispatching on length first so a
/// lookup costs a jump and one or a few short comparisons.
fn static_name_index(name: &str) -> Option<usize> {
    match name.len() {
        3 => match name {
            "age" => Some(21),
            "via" => Some(60),
            _ => None,
        },
        4 => match name {
            "date" => Some(33),
            "etag" => Some(34),
            "from" => Some(37),
            "host" => Some(38),
            "link" => Some(45),
            "vary" => Some(59),
            _ => None,
        },
        5 => match name {
            "allow" => Some(22),
            "range" => Some(50),
            _ => None,
        },
        6 => match name {
            "accept" => Some(19),
            "cookie" => Some(32),
            "expect" => Some(35),
            "server" => Some(54),
            _ => None,
        },
        7 => match name {
            "expires" => Some(36),
            "referer" => Some(51),
            "refresh" => Some(52),
            _ => None,
        },
        8 => match name {
            "if-match" => Some(39),
            "if-range" => Some(42),
            "location" => Some(46),
            _ => None,
        },
        10 => match name {
            "set-cookie" => Some(55),
            "user-agent" => Some(58),
            _ => None,
        },
        11 if name == "retry-after" => Some(53),
        12 => match name {
            "content-type" => Some(31),
            "max-forwards" => Some(47),
            _ => None,
        },
        13 => match name {
            "accept-ranges" => Some(18),
            "authorization" => Some(23),
            "cache-control" => Some(24),
            "content-range" => Some(30),
            "if-none-match" => Some(41),
            "last-modified" => Some(44),
            _ => None,
        },
        14 => match name {
            "accept-charset" => Some(15),
            "content-length" => Some(28),
            _ => None,
        },
        15 => match name {
            "accept-encoding" => Some(16),
            "accept-language" => Some(17),
            _ => None,
        },
        16 => match name {
            "content-encoding" => Some(26),
            "content-language" => Some(27),
            "content-location" => Some(29),
            "www-authenticate" => Some(61),
            _ => None,
        },
        17 => match name {
            "if-modified-since" => Some(40),
            "transfer-encoding" => Some(57),
            _ => None,
        },
        18 if name == "proxy-authenticate" => Some(48),
        19 => match name {
            "content-disposition" => Some(25),
            "if-unmodified-since" => Some(43),
            "proxy-authorization" => Some(49),
            _ => None,
        },
        25 if name == "strict-transport-security" => Some(56),
        27 if name == "access-control-allow-origin" => Some(20),
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

/// What is wrong with a header block; each names the byte offset in the block where decoding
/// stopped: the first byte of the representation, integer or string literal at fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError {
    pub offset: usize,
    pub kind: DecodeErrorKind,
}

/// The kinds of [`DecodeError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecodeErrorKind {
    /// An integer or string literal runs past the end of the block.
    Truncated,
    /// A prefix integer needs more than four continuation bytes.
    IntegerOverflow,
    /// Index 0, which RFC 7541 §6.1 reserves.
    IndexZero,
    /// An index past the end of the dynamic table.
    IndexOutOfRange {
        /// The HPACK index (static and dynamic address space).
        index: usize,
        /// Entries in the dynamic table when it was looked up.
        dynamic_len: usize,
    },
    /// A dynamic table size update above the SETTINGS_HEADER_TABLE_SIZE we advertised.
    TableSizeUpdateTooLarge {
        /// The size the peer asked for.
        requested: usize,
        /// The decoder's limit.
        max: usize,
    },
    /// A dynamic table size update after the first field of the block (RFC 7541 §4.2).
    TableSizeUpdateNotAtStart,
    /// A Huffman literal containing EOS, or padded with more than 7 bits or with bits that are
    /// not all ones (RFC 7541 §5.2).
    BadHuffman,
    /// A string literal longer than the limit set with [`Decoder::set_max_string_len`].
    StringTooLong,
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("HPACK: ")?;
        match self.kind {
            DecodeErrorKind::Truncated => f.write_str("truncated integer or string")?,
            DecodeErrorKind::IntegerOverflow => f.write_str("integer too large")?,
            DecodeErrorKind::IndexZero => f.write_str("index 0")?,
            DecodeErrorKind::IndexOutOfRange { index, dynamic_len } => write!(
                f,
                "index {index} is past the dynamic table ({dynamic_len} entries)"
            )?,
            DecodeErrorKind::TableSizeUpdateTooLarge { requested, max } => write!(
                f,
                "dynamic table size update to {requested} exceeds the advertised {max}"
            )?,
            DecodeErrorKind::TableSizeUpdateNotAtStart => {
                f.write_str("dynamic table size update after a header field")?
            }
            DecodeErrorKind::BadHuffman => {
                f.write_str("invalid Huffman string (EOS or bad padding)")?
            }
            DecodeErrorKind::StringTooLong => f.write_str("string literal too long")?,
        }
        write!(f, " at byte {} of the header block", self.offset)
    }
}

impl std::error::Error for DecodeError {}

#[inline]
fn error(offset: usize, kind: DecodeErrorKind) -> DecodeError {
    DecodeError { offset, kind }
}

// ---------------------------------------------------------------------------------------------
// Primitives
// ---------------------------------------------------------------------------------------------

/// Decodes a prefix integer (RFC 7541 §5.1) whose first byte is `block[*pos]`; `mask` is
/// `2^N - 1` for an N-bit prefix. Advances `pos` past it.
#[inline]
fn decode_int(block: &[u8], pos: &mut usize, mask: u8) -> Result<usize, DecodeError> {
    let start = *pos;
    let Some(&first) = block.get(start) else {
        return Err(error(start, DecodeErrorKind::Truncated));
    };
    *pos = start + 1;
    let prefix = first & mask;
    if prefix < mask {
        return Ok(usize::from(prefix));
    }
    decode_int_continued(block, pos, start, usize::from(mask))
}

/// The multi-byte tail of [`decode_int`], kept out of line: it is rare.
#[cold]
fn decode_int_continued(
    block: &[u8],
    pos: &mut usize,
    start: usize,
    mut value: usize,
) -> Result<usize, DecodeError> {
    let mut shift = 0;
    loop {
        let Some(&b) = block.get(*pos) else {
            return Err(error(start, DecodeErrorKind::Truncated));
        };
        *pos += 1;
        value += usize::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Ok(value);
        }
        shift += 7;
        if shift > 21 {
            return Err(error(start, DecodeErrorKind::IntegerOverflow));
        }
    }
}

/// Appends a prefix integer: `flags` are the representation bits above the N-bit prefix,
/// `mask` is `2^N - 1`.
#[inline]
fn encode_int(dst: &mut BytesMut, flags: u8, mask: u8, value: usize) {
    if value < usize::from(mask) {
        dst.put_u8(flags | value as u8);
        return;
    }
    dst.put_u8(flags | mask);
    let mut rest = value - usize::from(mask);
    while rest >= 0x80 {
        dst.put_u8(0x80 | (rest & 0x7f) as u8);
        rest >>= 7;
    }
    dst.put_u8(rest as u8);
}

/// Appends a raw (non-Huffman) string literal.
#[inline]
fn encode_str(dst: &mut BytesMut, s: &[u8]) {
    encode_int(dst, 0x00, 0x7f, s.len());
    dst.put_slice(s);
}

// ---------------------------------------------------------------------------------------------
// Huffman decoding
// ---------------------------------------------------------------------------------------------

/// `(code, bit length)` for symbols 0..=255 and EOS (256), RFC 7541 Appendix B.
static HUFFMAN_CODES: [(u32, u8); 257] = [
    (0x1ff8, 13),
    (0x7fffd8, 23),
    (0xfffffe2, 28),
    (0xfffffe3, 28),
    (0xfffffe4, 28),
    (0xfffffe5, 28),
    (0xfffffe6, 28),
    (0xfffffe7, 28),
    (0xfffffe8, 28),
    (0xffffea, 24),
    (0x3ffffffc, 30),
    (0xfffffe9, 28),
    (0xfffffea, 28),
    (0x3ffffffd, 30),
    (0xfffffeb, 28),
    (0xfffffec, 28),
    (0xfffffed, 28),
    (0xfffffee, 28),
    (0xfffffef, 28),
    (0xffffff0, 28),
    (0xffffff1, 28),
    (0xffffff2, 28),
    (0x3ffffffe, 30),
    (0xffffff3, 28),
    (0xffffff4, 28),
    (0xffffff5, 28),
    (0xffffff6, 28),
    (0xffffff7, 28),
    (0xffffff8, 28),
    (0xffffff9, 28),
    (0xffffffa, 28),
    (0xffffffb, 28),
    (0x14, 6),
    (0x3f8, 10),
    (0x3f9, 10),
    (0xffa, 12),
    (0x1ff9, 13),
    (0x15, 6),
    (0xf8, 8),
    (0x7fa, 11),
    (0x3fa, 10),
    (0x3fb, 10),
    (0xf9, 8),
    (0x7fb, 11),
    (0xfa, 8),
    (0x16, 6),
    (0x17, 6),
    (0x18, 6),
    (0x0, 5),
    (0x1, 5),
    (0x2, 5),
    (0x19, 6),
    (0x1a, 6),
    (0x1b, 6),
    (0x1c, 6),
    (0x1d, 6),
    (0x1e, 6),
    (0x1f, 6),
    (0x5c, 7),
    (0xfb, 8),
    (0x7ffc, 15),
    (0x20, 6),
    (0xffb, 12),
    (0x3fc, 10),
    (0x1ffa, 13),
    (0x21, 6),
    (0x5d, 7),
    (0x5e, 7),
    (0x5f, 7),
    (0x60, 7),
    (0x61, 7),
    (0x62, 7),
    (0x63, 7),
    (0x64, 7),
    (0x65, 7),
    (0x66, 7),
    (0x67, 7),
    (0x68, 7),
    (0x69, 7),
    (0x6a, 7),
    (0x6b, 7),
    (0x6c, 7),
    (0x6d, 7),
    (0x6e, 7),
    (0x6f, 7),
    (0x70, 7),
    (0x71, 7),
    (0x72, 7),
    (0xfc, 8),
    (0x73, 7),
    (0xfd, 8),
    (0x1ffb, 13),
    (0x7fff0, 19),
    (0x1ffc, 13),
    (0x3ffc, 14),
    (0x22, 6),
    (0x7ffd, 15),
    (0x3, 5),
    (0x23, 6),
    (0x4, 5),
    (0x24, 6),
    (0x5, 5),
    (0x25, 6),
    (0x26, 6),
    (0x27, 6),
    (0x6, 5),
    (0x74, 7),
    (0x75, 7),
    (0x28, 6),
    (0x29, 6),
    (0x2a, 6),
    (0x7, 5),
    (0x2b, 6),
    (0x76, 7),
    (0x2c, 6),
    (0x8, 5),
    (0x9, 5),
    (0x2d, 6),
    (0x77, 7),
    (0x78, 7),
    (0x79, 7),
    (0x7a, 7),
    (0x7b, 7),
    (0x7ffe, 15),
    (0x7fc, 11),
    (0x3ffd, 14),
    (0x1ffd, 13),
    (0xffffffc, 28),
    (0xfffe6, 20),
    (0x3fffd2, 22),
    (0xfffe7, 20),
    (0xfffe8, 20),
    (0x3fffd3, 22),
    (0x3fffd4, 22),
    (0x3fffd5, 22),
    (0x7fffd9, 23),
    (0x3fffd6, 22),
    (0x7fffda, 23),
    (0x7fffdb, 23),
    (0x7fffdc, 23),
    (0x7fffdd, 23),
    (0x7fffde, 23),
    (0xffffeb, 24),
    (0x7fffdf, 23),
    (0xffffec, 24),
    (0xffffed, 24),
    (0x3fffd7, 22),
    (0x7fffe0, 23),
    (0xffffee, 24),
    (0x7fffe1, 23),
    (0x7fffe2, 23),
    (0x7fffe3, 23),
    (0x7fffe4, 23),
    (0x1fffdc, 21),
    (0x3fffd8, 22),
    (0x7fffe5, 23),
    (0x3fffd9, 22),
    (0x7fffe6, 23),
    (0x7fffe7, 23),
    (0xffffef, 24),
    (0x3fffda, 22),
    (0x1fffdd, 21),
    (0xfffe9, 20),
    (0x3fffdb, 22),
    (0x3fffdc, 22),
    (0x7fffe8, 23),
    (0x7fffe9, 23),
    (0x1fffde, 21),
    (0x7fffea, 23),
    (0x3fffdd, 22),
    (0x3fffde, 22),
    (0xfffff0, 24),
    (0x1fffdf, 21),
    (0x3fffdf, 22),
    (0x7fffeb, 23),
    (0x7fffec, 23),
    (0x1fffe0, 21),
    (0x1fffe1, 21),
    (0x3fffe0, 22),
    (0x1fffe2, 21),
    (0x7fffed, 23),
    (0x3fffe1, 22),
    (0x7fffee, 23),
    (0x7fffef, 23),
    (0xfffea, 20),
    (0x3fffe2, 22),
    (0x3fffe3, 22),
    (0x3fffe4, 22),
    (0x7ffff0, 23),
    (0x3fffe5, 22),
    (0x3fffe6, 22),
    (0x7ffff1, 23),
    (0x3ffffe0, 26),
    (0x3ffffe1, 26),
    (0xfffeb, 20),
    (0x7fff1, 19),
    (0x3fffe7, 22),
    (0x7ffff2, 23),
    (0x3fffe8, 22),
    (0x1ffffec, 25),
    (0x3ffffe2, 26),
    (0x3ffffe3, 26),
    (0x3ffffe4, 26),
    (0x7ffffde, 27),
    (0x7ffffdf, 27),
    (0x3ffffe5, 26),
    (0xfffff1, 24),
    (0x1ffffed, 25),
    (0x7fff2, 19),
    (0x1fffe3, 21),
    (0x3ffffe6, 26),
    (0x7ffffe0, 27),
    (0x7ffffe1, 27),
    (0x3ffffe7, 26),
    (0x7ffffe2, 27),
    (0xfffff2, 24),
    (0x1fffe4, 21),
    (0x1fffe5, 21),
    (0x3ffffe8, 26),
    (0x3ffffe9, 26),
    (0xffffffd, 28),
    (0x7ffffe3, 27),
    (0x7ffffe4, 27),
    (0x7ffffe5, 27),
    (0xfffec, 20),
    (0xfffff3, 24),
    (0xfffed, 20),
    (0x1fffe6, 21),
    (0x3fffe9, 22),
    (0x1fffe7, 21),
    (0x1fffe8, 21),
    (0x7ffff3, 23),
    (0x3fffea, 22),
    (0x3fffeb, 22),
    (0x1ffffee, 25),
    (0x1ffffef, 25),
    (0xfffff4, 24),
    (0xfffff5, 24),
    (0x3ffffea, 26),
    (0x7ffff4, 23),
    (0x3ffffeb, 26),
    (0x7ffffe6, 27),
    (0x3ffffec, 26),
    (0x3ffffed, 26),
    (0x7ffffe7, 27),
    (0x7ffffe8, 27),
    (0x7ffffe9, 27),
    (0x7ffffea, 27),
    (0x7ffffeb, 27),
    (0xffffffe, 28),
    (0x7ffffec, 27),
    (0x7ffffed, 27),
    (0x7ffffee, 27),
    (0x7ffffef, 27),
    (0x7fffff0, 27),
    (0x3ffffee, 26),
    (0x3fffffff, 30),
];

/// The transition emits `sym`.
const HUFF_EMIT: u8 = 1;
/// The string may end after this transition: the bits since the last symbol are at most 7
/// ones (a prefix of EOS), or there are none.
const HUFF_ACCEPT: u8 = 2;
/// The transition decodes EOS: the string is invalid.
const HUFF_FAIL: u8 = 4;

#[derive(Clone, Copy, Default)]
struct HuffTransition {
    next: u8,
    flags: u8,
    sym: u8,
}

/// `[state][nibble]`; state 0 is the root of the code tree.
type HuffTable = [[HuffTransition; 16]; 256];

fn huffman_table() -> &'static HuffTable {
    static TABLE: OnceLock<Box<HuffTable>> = OnceLock::new();
    TABLE.get_or_init(build_huffman_table)
}

fn build_huffman_table() -> Box<HuffTable> {
    #[derive(Clone, Copy)]
    enum Child {
        Empty,
        Node(usize),
        Leaf(u16),
    }
    struct Node {
        child: [Child; 2],
        /// Can the string end here: the root, or at most 7 ones below it.
        accept: bool,
        depth: u8,
        all_ones: bool,
    }

    // The code is complete, so its tree has exactly 256 interior nodes for 257 leaves.
    let mut nodes = vec![Node {
        child: [Child::Empty; 2],
        accept: true,
        depth: 0,
        all_ones: true,
    }];
    for (sym, &(code, len)) in HUFFMAN_CODES.iter().enumerate() {
        let mut cur = 0;
        for i in (0..len).rev() {
            let bit = ((code >> i) & 1) as usize;
            if i == 0 {
                nodes[cur].child[bit] = Child::Leaf(sym as u16);
                break;
            }
            cur = match nodes[cur].child[bit] {
                Child::Node(n) => n,
                Child::Empty => {
                    let depth = nodes[cur].depth + 1;
                    let all_ones = nodes[cur].all_ones && bit == 1;
                    nodes.push(Node {
                        child: [Child::Empty; 2],
                        accept: all_ones && depth <= 7,
                        depth,
                        all_ones,
                    });
                    let n = nodes.len() - 1;
                    nodes[cur].child[bit] = Child::Node(n);
                    n
                }
                Child::Leaf(_) => unreachable!("HPACK Huffman code is prefix-free"),
            };
        }
    }
    assert_eq!(nodes.len(), 256, "HPACK Huffman code tree is complete");

    let mut table = Box::new([[HuffTransition::default(); 16]; 256]);
    for (state, row) in table.iter_mut().enumerate() {
        for (nibble, slot) in row.iter_mut().enumerate() {
            let mut cur = state;
            let mut t = HuffTransition::default();
            for i in (0..4).rev() {
                match nodes[cur].child[(nibble >> i) & 1] {
                    Child::Node(n) => cur = n,
                    Child::Leaf(256) => {
                        t.flags |= HUFF_FAIL;
                        break;
                    }
                    Child::Leaf(sym) => {
                        // Codes are at least 5 bits long: one symbol per nibble at most.
                        debug_assert_eq!(t.flags & HUFF_EMIT, 0);
                        t.flags |= HUFF_EMIT;
                        t.sym = sym as u8;
                        cur = 0;
                    }
                    Child::Empty => unreachable!("HPACK Huffman code tree is complete"),
                }
            }
            if nodes[cur].accept {
                t.flags |= HUFF_ACCEPT;
            }
            t.next = cur as u8;
            *slot = t;
        }
    }
    table
}

/// Huffman-decodes `src` into `buf`, returning the decoded prefix of `buf`; `Err` for EOS or
/// invalid padding. `buf` is only scratch space: it grows to the largest string seen and is
/// never shrunk or cleared, so decoding costs no allocation or memset in the steady state.
fn huffman_decode<'a>(src: &[u8], buf: &'a mut Vec<u8>) -> Result<&'a [u8], ()> {
    let table = huffman_table();
    // Codes are at least 5 bits long; one spare byte because every step stores a byte.
    let bound = src.len() * 8 / 5 + 1;
    if buf.len() < bound {
        buf.resize(bound, 0);
    }
    let out = &mut buf[..bound];
    let mut len = 0;
    let mut state = 0u8;
    let mut flags = HUFF_ACCEPT;
    // Branch-free steps: always store the symbol, advance only if one was emitted, and
    // collect the flags to test HUFF_FAIL once at the end (what follows EOS is garbage, but
    // the string is rejected anyway).
    let mut seen = 0u8;
    for &byte in src {
        for nibble in [byte >> 4, byte & 0x0f] {
            let t = table[usize::from(state)][usize::from(nibble)];
            out[len] = t.sym;
            len += usize::from(t.flags & HUFF_EMIT);
            seen |= t.flags;
            state = t.next;
            flags = t.flags;
        }
    }
    if seen & HUFF_FAIL != 0 || flags & HUFF_ACCEPT == 0 {
        return Err(());
    }
    Ok(&buf[..len])
}

// ---------------------------------------------------------------------------------------------
// Decoder
// ---------------------------------------------------------------------------------------------

/// A dynamic table entry: name and value in one allocation.
struct Entry {
    bytes: Box<[u8]>,
    name_len: usize,
}

impl Entry {
    fn new(name: &[u8], value: &[u8]) -> Entry {
        let mut bytes = Vec::with_capacity(name.len() + value.len());
        bytes.extend_from_slice(name);
        bytes.extend_from_slice(value);
        Entry {
            bytes: bytes.into_boxed_slice(),
            name_len: name.len(),
        }
    }

    #[inline]
    fn name(&self) -> &[u8] {
        &self.bytes[..self.name_len]
    }

    #[inline]
    fn value(&self) -> &[u8] {
        &self.bytes[self.name_len..]
    }

    #[inline]
    fn size(&self) -> usize {
        self.bytes.len() + ENTRY_OVERHEAD
    }
}

/// The decoder's dynamic table: newest entry at the front.
struct DecoderTable {
    entries: VecDeque<Entry>,
    size: usize,
    capacity: usize,
}

impl DecoderTable {
    /// The field at HPACK index `index` (static or dynamic).
    #[inline]
    fn get(&self, index: usize) -> Result<(&[u8], &[u8]), DecodeErrorKind> {
        if index == 0 {
            return Err(DecodeErrorKind::IndexZero);
        }
        if index <= STATIC_LEN {
            return Ok(STATIC_TABLE[index - 1]);
        }
        match self.entries.get(index - STATIC_LEN - 1) {
            Some(e) => Ok((e.name(), e.value())),
            None => Err(DecodeErrorKind::IndexOutOfRange {
                index,
                dynamic_len: self.entries.len(),
            }),
        }
    }

    fn set_capacity(&mut self, capacity: usize) {
        self.capacity = capacity;
        self.evict_to(capacity);
    }

    fn evict_to(&mut self, target: usize) {
        while self.size > target {
            let Some(e) = self.entries.pop_back() else {
                break;
            };
            self.size -= e.size();
        }
    }

    /// Adds `entry`, evicting as needed; an entry larger than the whole table empties it and
    /// is not added (RFC 7541 §4.4).
    fn insert(&mut self, entry: Entry) {
        let size = entry.size();
        if size > self.capacity {
            self.entries.clear();
            self.size = 0;
            return;
        }
        self.evict_to(self.capacity - size);
        self.entries.push_front(entry);
        self.size += size;
    }
}

/// Decodes HPACK header blocks from one peer (one per HTTP/2 connection).
pub struct Decoder {
    table: DecoderTable,
    /// The SETTINGS_HEADER_TABLE_SIZE we advertised: the ceiling for size updates.
    max_table_size: usize,
    max_string_len: usize,
    /// Scratch for Huffman-coded names and values, reused across fields and blocks.
    name_buf: Vec<u8>,
    value_buf: Vec<u8>,
}

impl Decoder {
    /// `max_table_size`: the SETTINGS_HEADER_TABLE_SIZE this endpoint advertised (4096 by default).
    ///
    /// `max_table_size` only bounds the peer's dynamic table size updates. The table itself
    /// starts at the protocol default of 4096 bytes, because that is what the peer's encoder
    /// assumes until it sends an update (it may encode its first blocks before it has seen our
    /// SETTINGS). Being larger than the peer's table is harmless, as indices count from the
    /// newest entry; being smaller would not be. After advertising less than 4096, the peer's
    /// next block starts with an update that shrinks the table.
    pub fn new(max_table_size: usize) -> Decoder {
        Decoder {
            table: DecoderTable {
                entries: VecDeque::new(),
                size: 0,
                capacity: DEFAULT_TABLE_SIZE,
            },
            max_table_size,
            max_string_len: usize::MAX,
            name_buf: Vec::new(),
            value_buf: Vec::new(),
        }
    }

    /// Changes the advertised SETTINGS_HEADER_TABLE_SIZE: size updates above `size` are errors
    /// from then on. Call it once the peer has acknowledged the SETTINGS frame carrying the
    /// value. The table keeps its current size until the peer's next size update (which
    /// RFC 7541 §4.2 requires after a reduction), for the reason given in [`Decoder::new`].
    #[cfg(test)]
    pub fn set_max_table_size(&mut self, size: usize) {
        self.max_table_size = size;
    }

    /// Rejects string literals longer than `len` bytes (encoded or, for Huffman, decoded) with
    /// [`DecodeErrorKind::StringTooLong`]. Unlimited by default: a literal can never be longer
    /// than its header block, which the caller already bounds.
    #[cfg(test)]
    pub fn set_max_string_len(&mut self, len: usize) {
        self.max_string_len = len;
    }

    /// The dynamic table's current size in RFC 7541 §4.1 terms (entry bytes + 32 each).
    #[cfg(test)]
    fn dynamic_table_size(&self) -> usize {
        self.table.size
    }

    /// Entries in the dynamic table.
    #[cfg(test)]
    fn dynamic_table_len(&self) -> usize {
        self.table.entries.len()
    }

    /// Decodes one complete header block (a HEADERS payload plus its CONTINUATIONs, concatenated),
    /// calling `field(name, value)` for each field in order. Names and values are passed as bytes exactly
    /// as decoded (the caller validates them as HTTP). The dynamic table is updated for the whole block
    /// even if the caller ignores fields. Errors are connection errors (COMPRESSION_ERROR) for the caller.
    pub fn decode<F: FnMut(&[u8], &[u8])>(
        &mut self,
        block: &[u8],
        mut field: F,
    ) -> Result<(), DecodeError> {
        let Decoder {
            table,
            max_table_size,
            max_string_len,
            name_buf,
            value_buf,
        } = self;
        let max_string_len = *max_string_len;
        let mut pos = 0;

        // Dynamic table size updates: only before the first field (RFC 7541 §4.2).
        while let Some(&b) = block.get(pos) {
            if b & 0xe0 != 0x20 {
                break;
            }
            let start = pos;
            let size = decode_int(block, &mut pos, 0x1f)?;
            if size > *max_table_size {
                return Err(error(
                    start,
                    DecodeErrorKind::TableSizeUpdateTooLarge {
                        requested: size,
                        max: *max_table_size,
                    },
                ));
            }
            table.set_capacity(size);
        }

        while let Some(&b) = block.get(pos) {
            let start = pos;
            if b & 0x80 != 0 {
                // Indexed header field (§6.1).
                let index = decode_int(block, &mut pos, 0x7f)?;
                let (name, value) = table.get(index).map_err(|k| error(start, k))?;
                field(name, value);
            } else if b & 0xe0 == 0x20 {
                return Err(error(start, DecodeErrorKind::TableSizeUpdateNotAtStart));
            } else {
                // A literal: with incremental indexing (01, §6.2.1), without indexing
                // (0000, §6.2.2) or never indexed (0001, §6.2.3). "Never indexed" binds
                // intermediaries re-encoding the field; Strait's encoder applies its own
                // rules for credentials.
                let indexing = b & 0x40 != 0;
                let mask = if indexing { 0x3f } else { 0x0f };
                let index = decode_int(block, &mut pos, mask)?;
                let name = read_name(
                    table,
                    index,
                    start,
                    block,
                    &mut pos,
                    name_buf,
                    max_string_len,
                )?;
                let value = read_string(block, &mut pos, value_buf, max_string_len)?;
                if indexing {
                    // Copied before inserting: the name may live in an entry the
                    // insertion evicts.
                    let entry = Entry::new(name, value);
                    field(name, value);
                    table.insert(entry);
                } else {
                    field(name, value);
                }
            }
        }
        Ok(())
    }

    #[cfg(test)]
    fn entries(&self) -> Vec<(Vec<u8>, Vec<u8>)> {
        self.table
            .entries
            .iter()
            .map(|e| (e.name().to_vec(), e.value().to_vec()))
            .collect()
    }
}

impl fmt::Debug for Decoder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Decoder")
            .field("entries", &self.table.entries.len())
            .field("size", &self.table.size)
            .field("capacity", &self.table.capacity)
            .field("max_table_size", &self.max_table_size)
            .finish()
    }
}

/// The name of a literal representation: by index (`index > 0`) or a string literal.
#[inline]
fn read_name<'a>(
    table: &'a DecoderTable,
    index: usize,
    start: usize,
    block: &'a [u8],
    pos: &mut usize,
    scratch: &'a mut Vec<u8>,
    max_len: usize,
) -> Result<&'a [u8], DecodeError> {
    if index == 0 {
        read_string(block, pos, scratch, max_len)
    } else {
        table
            .get(index)
            .map(|(name, _)| name)
            .map_err(|k| error(start, k))
    }
}

/// A string literal (§5.2): a slice of `block` if raw, else decoded into `scratch`.
#[inline]
fn read_string<'a>(
    block: &'a [u8],
    pos: &mut usize,
    scratch: &'a mut Vec<u8>,
    max_len: usize,
) -> Result<&'a [u8], DecodeError> {
    let start = *pos;
    let len = decode_int(block, pos, 0x7f)?;
    let huffman = block[start] & 0x80 != 0;
    let begin = *pos;
    if len > block.len() - begin {
        return Err(error(start, DecodeErrorKind::Truncated));
    }
    if len > max_len {
        return Err(error(start, DecodeErrorKind::StringTooLong));
    }
    *pos = begin + len;
    let raw = &block[begin..begin + len];
    if !huffman {
        return Ok(raw);
    }
    let Ok(decoded) = huffman_decode(raw, scratch) else {
        return Err(error(start, DecodeErrorKind::BadHuffman));
    };
    if decoded.len() > max_len {
        return Err(error(start, DecodeErrorKind::StringTooLong));
    }
    Ok(decoded)
}

// ---------------------------------------------------------------------------------------------
// Encoder
// ---------------------------------------------------------------------------------------------

/// Buckets per hash index; a 4096-byte table holds at most 124 entries.
const BUCKETS: usize = 128;

/// An encoder table entry with its links in the two hash chains. Links are insertion numbers
/// plus one (0 ends the chain) of older entries in the same bucket.
struct EncoderEntry {
    entry: Entry,
    hash_field: u32,
    hash_name: u32,
    next_field: u64,
    next_name: u64,
}

/// Encodes response heads and trailers for one peer (one per HTTP/2 connection).
pub struct Encoder {
    /// Newest first: HPACK index `62 + i` is `entries[i]`.
    entries: VecDeque<EncoderEntry>,
    size: usize,
    capacity: usize,
    /// Entries ever inserted; the entry at `entries[i]` has insertion number `inserted - 1 - i`.
    inserted: u64,
    /// Chain heads by hash of (name, value) and by hash of name: insertion number plus one.
    field_heads: [u64; BUCKETS],
    name_heads: [u64; BUCKETS],
    /// The smallest table size since the last block, if the size changed: the next block must
    /// announce it (then the current size, if larger) before any field (RFC 7541 §4.2).
    pending_update: Option<usize>,
    /// The link (insertion number plus one; 0 for none) of the dynamic entry each position of
    /// the last block matched or added. An upstream answers with the same fields in the same
    /// order response after response: when the entry at a position's link is still live and
    /// holds the same field, its index is known without hashing or walking a chain.
    last: Vec<u64>,
}

/// Positions of a block that [`Encoder::last`] remembers.
const LAST_POSITIONS: usize = 32;

impl Default for Encoder {
    fn default() -> Encoder {
        Encoder::new()
    }
}

impl fmt::Debug for Encoder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Encoder")
            .field("entries", &self.entries.len())
            .field("size", &self.size)
            .field("capacity", &self.capacity)
            .field("pending_update", &self.pending_update)
            .finish()
    }
}

impl Encoder {
    /// A dynamic table of 4096 bytes (the default SETTINGS_HEADER_TABLE_SIZE).
    pub fn new() -> Encoder {
        Encoder {
            entries: VecDeque::new(),
            size: 0,
            capacity: DEFAULT_TABLE_SIZE,
            inserted: 0,
            field_heads: [0; BUCKETS],
            name_heads: [0; BUCKETS],
            pending_update: None,
            last: Vec::new(),
        }
    }

    /// The peer's SETTINGS_HEADER_TABLE_SIZE: the encoder's table shrinks/grows to at most `size`
    /// and the next block starts with a dynamic table size update (RFC 7541 §4.2, §6.3).
    ///
    /// The table is capped at 4096 bytes whatever the peer allows, so raising the setting above
    /// that changes nothing and emits nothing. Entries are evicted immediately; if the size
    /// went down and back up between two blocks, the next block announces the minimum first,
    /// then the final size, so the peer evicts exactly as we did.
    pub fn set_max_table_size(&mut self, size: usize) {
        let new = size.min(DEFAULT_TABLE_SIZE);
        if new == self.capacity && self.pending_update.is_none() {
            return;
        }
        let low = self.pending_update.unwrap_or(self.capacity).min(new);
        self.pending_update = Some(low);
        self.capacity = new;
        self.evict_to(new);
    }

    /// The dynamic table's current size in RFC 7541 §4.1 terms (entry bytes + 32 each).
    #[cfg(test)]
    fn dynamic_table_size(&self) -> usize {
        self.size
    }

    /// Entries in the dynamic table.
    #[cfg(test)]
    fn dynamic_table_len(&self) -> usize {
        self.entries.len()
    }

    /// A response head: `:status` then every field of `headers`, appended to `dst`.
    pub fn encode_response(&mut self, status: StatusCode, headers: &HeaderMap, dst: &mut BytesMut) {
        self.begin_block(dst);
        let index = match status.as_u16() {
            200 => 8,
            204 => 9,
            206 => 10,
            304 => 11,
            400 => 12,
            404 => 13,
            500 => 14,
            _ => 0,
        };
        if index != 0 {
            dst.put_u8(0x80 | index);
        } else {
            self.encode_field(b":status", Some(8), status.as_str().as_bytes(), false, dst);
        }
        self.encode_headers(headers, dst);
    }

    /// A trailer block (no pseudo-header fields), appended to `dst`.
    pub fn encode_trailers(&mut self, headers: &HeaderMap, dst: &mut BytesMut) {
        self.begin_block(dst);
        self.encode_headers(headers, dst);
    }

    /// Emits the pending dynamic table size update(s), if any.
    fn begin_block(&mut self, dst: &mut BytesMut) {
        if let Some(low) = self.pending_update.take() {
            if low < self.capacity {
                encode_int(dst, 0x20, 0x1f, low);
            }
            encode_int(dst, 0x20, 0x1f, self.capacity);
        }
    }

    fn encode_headers(&mut self, headers: &HeaderMap, dst: &mut BytesMut) {
        for (i, (name, value)) in headers.iter().enumerate() {
            let name = name.as_str();
            let value_bytes = value.as_bytes();
            let same = match value.is_sensitive() {
                true => None,
                false => self.same_as_last(i, name.as_bytes(), value_bytes),
            };
            if let Some(index) = same {
                encode_int(dst, 0x80, 0x7f, index);
                continue;
            }
            let static_index = static_name_index(name);
            // 23 authorization, 49 proxy-authorization, 32 cookie, 55 set-cookie.
            let sensitive = value.is_sensitive()
                || match static_index {
                    Some(23 | 49) => true,
                    Some(32 | 55) => value_bytes.len() < 20,
                    _ => false,
                };
            let link =
                self.encode_field(name.as_bytes(), static_index, value_bytes, sensitive, dst);
            if i < LAST_POSITIONS {
                if self.last.len() <= i {
                    self.last.resize(i + 1, 0);
                }
                self.last[i] = link;
            }
        }
    }

    /// The index of the dynamic entry position `i` of the last block used, if it is still
    /// live and holds exactly this field. Fields sensitive by name are never indexed, so no
    /// position links to one; the caller keeps values marked sensitive away.
    #[inline]
    fn same_as_last(&self, i: usize, name: &[u8], value: &[u8]) -> Option<usize> {
        let link = *self.last.get(i)?;
        if link <= self.oldest() {
            return None;
        }
        let pos = (self.inserted - link) as usize;
        let e = &self.entries[pos].entry;
        (bytes_eq(e.value(), value) && bytes_eq(e.name(), name)).then_some(STATIC_LEN + 1 + pos)
    }

    /// Encodes one field following the rules in the module documentation. `static_index` is
    /// the static-table index of `name`, if any. Returns the link of the dynamic entry that
    /// now holds the field (matched or added), or 0.
    fn encode_field(
        &mut self,
        name: &[u8],
        static_index: Option<usize>,
        value: &[u8],
        sensitive: bool,
        dst: &mut BytesMut,
    ) -> u64 {
        if let Some(i) = static_index {
            if bytes_eq(STATIC_TABLE[i - 1].1, value) {
                encode_int(dst, 0x80, 0x7f, i);
                return 0;
            }
        }
        if sensitive {
            dst.reserve(name.len() + value.len() + 12);
            self.encode_literal(0x10, 0x0f, static_index, name, value, dst);
            return 0;
        }

        let name_print = fingerprint(name);
        let hash_name = finish_hash(name_print);
        let hash_field = finish_hash(name_print.rotate_left(32) ^ fingerprint(value));
        if !self.entries.is_empty() {
            if let Some(i) = self.find_field(hash_field, name, value) {
                encode_int(dst, 0x80, 0x7f, i);
                return self.inserted - (i - STATIC_LEN - 1) as u64;
            }
        }
        let name_index = match static_index {
            Some(i) => Some(i),
            None if !self.entries.is_empty() => self.find_name(hash_name, name),
            None => None,
        };
        dst.reserve(name.len() + value.len() + 12);
        let size = name.len() + value.len() + ENTRY_OVERHEAD;
        if size * 4 <= self.capacity * 3 {
            self.encode_literal(0x40, 0x3f, name_index, name, value, dst);
            self.insert(name, value, hash_name, hash_field);
            self.inserted
        } else {
            self.encode_literal(0x00, 0x0f, name_index, name, value, dst);
            0
        }
    }

    /// A literal representation: `flags`/`mask` select the kind, the name goes by index when
    /// it has one.
    #[inline]
    fn encode_literal(
        &self,
        flags: u8,
        mask: u8,
        name_index: Option<usize>,
        name: &[u8],
        value: &[u8],
        dst: &mut BytesMut,
    ) {
        match name_index {
            Some(i) => encode_int(dst, flags, mask, i),
            None => {
                dst.put_u8(flags);
                encode_str(dst, name);
            }
        }
        encode_str(dst, value);
    }

    /// The insertion number of the oldest live entry.
    #[inline]
    fn oldest(&self) -> u64 {
        self.inserted - self.entries.len() as u64
    }

    /// The HPACK index of a live entry with `(name, value)`.
    fn find_field(&self, hash: u32, name: &[u8], value: &[u8]) -> Option<usize> {
        let oldest = self.oldest();
        let mut link = self.field_heads[hash as usize % BUCKETS];
        // Chains run newest to oldest, so the first evicted link ends the search.
        while link > oldest {
            let pos = (self.inserted - link) as usize;
            let e = &self.entries[pos];
            if e.hash_field == hash
                && bytes_eq(e.entry.name(), name)
                && bytes_eq(e.entry.value(), value)
            {
                return Some(STATIC_LEN + 1 + pos);
            }
            link = e.next_field;
        }
        None
    }

    /// The HPACK index of a live entry named `name`.
    fn find_name(&self, hash: u32, name: &[u8]) -> Option<usize> {
        let oldest = self.oldest();
        let mut link = self.name_heads[hash as usize % BUCKETS];
        while link > oldest {
            let pos = (self.inserted - link) as usize;
            let e = &self.entries[pos];
            if e.hash_name == hash && bytes_eq(e.entry.name(), name) {
                return Some(STATIC_LEN + 1 + pos);
            }
            link = e.next_name;
        }
        None
    }

    /// Adds an entry, evicting the oldest as needed; the caller has checked it fits.
    fn insert(&mut self, name: &[u8], value: &[u8], hash_name: u32, hash_field: u32) {
        let entry = Entry::new(name, value);
        let size = entry.size();
        debug_assert!(size <= self.capacity);
        self.evict_to(self.capacity - size);
        let field_bucket = hash_field as usize % BUCKETS;
        let name_bucket = hash_name as usize % BUCKETS;
        self.inserted += 1;
        self.entries.push_front(EncoderEntry {
            entry,
            hash_field,
            hash_name,
            next_field: self.field_heads[field_bucket],
            next_name: self.name_heads[name_bucket],
        });
        // Links are insertion number + 1; the new entry's number is `inserted - 1`.
        self.field_heads[field_bucket] = self.inserted;
        self.name_heads[name_bucket] = self.inserted;
        self.size += size;
    }

    fn evict_to(&mut self, target: usize) {
        while self.size > target {
            let Some(e) = self.entries.pop_back() else {
                break;
            };
            self.size -= e.entry.size();
        }
    }

    #[cfg(test)]
    fn entries(&self) -> Vec<(Vec<u8>, Vec<u8>)> {
        self.entries
            .iter()
            .map(|e| (e.entry.name().to_vec(), e.entry.value().to_vec()))
            .collect()
    }
}

const HASH_MUL: u64 = 0x9e37_79b9_7f4a_7c15;

/// A constant-time fingerprint of `bytes`: its length and first and last eight bytes. Header
/// values that differ only in the middle share a bucket and are told apart by comparison;
/// what matters here is that hashing a field costs the same few instructions whatever its
/// length, as it is done for every field of every response.
#[inline]
fn fingerprint(bytes: &[u8]) -> u64 {
    let n = bytes.len();
    let (head, tail) = match n {
        0 => (0, 0),
        1..=3 => (
            u64::from(bytes[0]) | u64::from(bytes[n / 2]) << 8 | u64::from(bytes[n - 1]) << 16,
            0,
        ),
        4..=7 => (
            u64::from(load_u32(bytes, 0)),
            u64::from(load_u32(bytes, n - 4)),
        ),
        _ => (load_u64(bytes, 0), load_u64(bytes, n - 8)),
    };
    (head.wrapping_mul(HASH_MUL).rotate_left(29) ^ tail ^ (n as u64)).wrapping_mul(HASH_MUL)
}

/// Folds a fingerprint (or a combination of two) to a 32-bit hash.
#[inline]
fn finish_hash(h: u64) -> u32 {
    (h.wrapping_mul(HASH_MUL) >> 32) as u32
}

#[inline]
fn load_u32(b: &[u8], at: usize) -> u32 {
    let mut w = [0u8; 4];
    w.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(w)
}

#[inline]
fn load_u64(b: &[u8], at: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(w)
}

/// `a == b`, inlined for the short names and values headers mostly have (`==` on slices
/// calls `memcmp`).
#[inline]
fn bytes_eq(a: &[u8], b: &[u8]) -> bool {
    let n = a.len();
    if n != b.len() {
        return false;
    }
    match n {
        0 => true,
        1..=3 => a[0] == b[0] && a[n / 2] == b[n / 2] && a[n - 1] == b[n - 1],
        4..=7 => load_u32(a, 0) == load_u32(b, 0) && load_u32(a, n - 4) == load_u32(b, n - 4),
        8..=16 => load_u64(a, 0) == load_u64(b, 0) && load_u64(a, n - 8) == load_u64(b, n - 8),
        _ => a == b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header::{HeaderName, HeaderValue};

    fn hex(s: &str) -> Vec<u8> {
        let digits: Vec<u8> = s.bytes().filter(u8::is_ascii_hexdigit).collect();
        digits
            .chunks(2)
            .map(|p| u8::from_str_radix(std::str::from_utf8(p).unwrap(), 16).unwrap())
            .collect()
    }

    fn decode_all(d: &mut Decoder, block: &[u8]) -> Result<Vec<(String, String)>, DecodeError> {
        let mut out = Vec::new();
        d.decode(block, |n, v| {
            out.push((
                String::from_utf8(n.to_vec()).unwrap(),
                String::from_utf8(v.to_vec()).unwrap(),
            ))
        })?;
        Ok(out)
    }

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }

    fn table(d: &Decoder) -> Vec<(String, String)> {
        d.entries()
            .into_iter()
            .map(|(n, v)| (String::from_utf8(n).unwrap(), String::from_utf8(v).unwrap()))
            .collect()
    }

    /// Test-only Huffman encoder over the same code table.
    fn huffman_encode(s: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut acc: u64 = 0;
        let mut bits = 0u32;
        for &b in s {
            let (code, len) = HUFFMAN_CODES[usize::from(b)];
            acc = (acc << len) | u64::from(code);
            bits += u32::from(len);
            while bits >= 8 {
                bits -= 8;
                out.push((acc >> bits) as u8);
            }
        }
        if bits > 0 {
            out.push(((acc << (8 - bits)) as u8) | (0xff >> bits));
        }
        out
    }

    fn err(offset: usize, kind: DecodeErrorKind) -> DecodeError {
        DecodeError { offset, kind }
    }

    // --- RFC 7541 Appendix C ------------------------------------------------------------------

    #[test]
    fn c2_1_literal_with_indexing() {
        let mut d = Decoder::new(4096);
        let block = hex("400a 6375 7374 6f6d 2d6b 6579 0d63 7573 746f 6d2d 6865 6164 6572");
        let fields = decode_all(&mut d, &block).unwrap();
        assert_eq!(fields, pairs(&[("custom-key", "custom-header")]));
        assert_eq!(table(&d), pairs(&[("custom-key", "custom-header")]));
        assert_eq!(d.dynamic_table_size(), 55);
    }

    #[test]
    fn c2_2_literal_without_indexing() {
        let mut d = Decoder::new(4096);
        let block = hex("040c 2f73 616d 706c 652f 7061 7468");
        let fields = decode_all(&mut d, &block).unwrap();
        assert_eq!(fields, pairs(&[(":path", "/sample/path")]));
        assert_eq!(d.dynamic_table_len(), 0);
        assert_eq!(d.dynamic_table_size(), 0);
    }

    #[test]
    fn c2_3_literal_never_indexed() {
        let mut d = Decoder::new(4096);
        let block = hex("1008 7061 7373 776f 7264 0673 6563 7265 74");
        let fields = decode_all(&mut d, &block).unwrap();
        assert_eq!(fields, pairs(&[("password", "secret")]));
        assert_eq!(d.dynamic_table_len(), 0);
    }

    #[test]
    fn c2_4_indexed() {
        let mut d = Decoder::new(4096);
        let fields = decode_all(&mut d, &hex("82")).unwrap();
        assert_eq!(fields, pairs(&[(":method", "GET")]));
        assert_eq!(d.dynamic_table_len(), 0);
    }

    fn request_examples(blocks: [&str; 3]) {
        let mut d = Decoder::new(4096);
        let fields = decode_all(&mut d, &hex(blocks[0])).unwrap();
        assert_eq!(
            fields,
            pairs(&[
                (":method", "GET"),
                (":scheme", "http"),
                (":path", "/"),
                (":authority", "www.example.com"),
            ])
        );
        assert_eq!(table(&d), pairs(&[(":authority", "www.example.com")]));
        assert_eq!(d.dynamic_table_size(), 57);

        let fields = decode_all(&mut d, &hex(blocks[1])).unwrap();
        assert_eq!(
            fields,
            pairs(&[
                (":method", "GET"),
                (":scheme", "http"),
                (":path", "/"),
                (":authority", "www.example.com"),
                ("cache-control", "no-cache"),
            ])
        );
        assert_eq!(
            table(&d),
            pairs(&[
                ("cache-control", "no-cache"),
                (":authority", "www.example.com"),
            ])
        );
        assert_eq!(d.dynamic_table_size(), 110);

        let fields = decode_all(&mut d, &hex(blocks[2])).unwrap();
        assert_eq!(
            fields,
            pairs(&[
                (":method", "GET"),
                (":scheme", "https"),
                (":path", "/index.html"),
                (":authority", "www.example.com"),
                ("custom-key", "custom-value"),
            ])
        );
        assert_eq!(
            table(&d),
            pairs(&[
                ("custom-key", "custom-value"),
                ("cache-control", "no-cache"),
                (":authority", "www.example.com"),
            ])
        );
        assert_eq!(d.dynamic_table_size(), 164);
    }

    #[test]
    fn c3_requests_without_huffman() {
        request_examples([
            "8286 8441 0f77 7777 2e65 7861 6d70 6c65 2e63 6f6d",
            "8286 84be 5808 6e6f 2d63 6163 6865",
            "8287 85bf 400a 6375 7374 6f6d 2d6b 6579 0c63 7573 746f 6d2d 7661 6c75 65",
        ]);
    }

    #[test]
    fn c4_requests_with_huffman() {
        request_examples([
            "8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff",
            "8286 84be 5886 a8eb 1064 9cbf",
            "8287 85bf 4088 25a8 49e9 5ba9 7d7f 8925 a849 e95b b8e8 b4bf",
        ]);
    }

    fn response_examples(blocks: [&str; 3]) {
        // SETTINGS_HEADER_TABLE_SIZE 256: the peer announces it before its first block.
        let mut d = Decoder::new(256);
        d.decode(&[0x3f, 0xe1, 0x01], |_, _| unreachable!())
            .unwrap();
        let fields = decode_all(&mut d, &hex(blocks[0])).unwrap();
        assert_eq!(
            fields,
            pairs(&[
                (":status", "302"),
                ("cache-control", "private"),
                ("date", "Mon, 21 Oct 2013 20:13:21 GMT"),
                ("location", "https://www.example.com"),
            ])
        );
        assert_eq!(
            table(&d),
            pairs(&[
                ("location", "https://www.example.com"),
                ("date", "Mon, 21 Oct 2013 20:13:21 GMT"),
                ("cache-control", "private"),
                (":status", "302"),
            ])
        );
        assert_eq!(d.dynamic_table_size(), 222);

        let fields = decode_all(&mut d, &hex(blocks[1])).unwrap();
        assert_eq!(
            fields,
            pairs(&[
                (":status", "307"),
                ("cache-control", "private"),
                ("date", "Mon, 21 Oct 2013 20:13:21 GMT"),
                ("location", "https://www.example.com"),
            ])
        );
        assert_eq!(
            table(&d),
            pairs(&[
                (":status", "307"),
                ("location", "https://www.example.com"),
                ("date", "Mon, 21 Oct 2013 20:13:21 GMT"),
                ("cache-control", "private"),
            ])
        );
        assert_eq!(d.dynamic_table_size(), 222);

        let cookie = "foo=ASDJKHQKBZXOQWEOPIUAXQWEOIU; max-age=3600; version=1";
        let fields = decode_all(&mut d, &hex(blocks[2])).unwrap();
        assert_eq!(
            fields,
            pairs(&[
                (":status", "200"),
                ("cache-control", "private"),
                ("date", "Mon, 21 Oct 2013 20:13:22 GMT"),
                ("location", "https://www.example.com"),
                ("content-encoding", "gzip"),
                ("set-cookie", cookie),
            ])
        );
        assert_eq!(
            table(&d),
            pairs(&[
                ("set-cookie", cookie),
                ("content-encoding", "gzip"),
                ("date", "Mon, 21 Oct 2013 20:13:22 GMT"),
            ])
        );
        assert_eq!(d.dynamic_table_size(), 215);
    }

    #[test]
    fn c5_responses_without_huffman() {
        response_examples([
            "4803 3330 3258 0770 7269 7661 7465 611d 4d6f 6e2c 2032 3120 4f63 7420 3230 3133
             2032 303a 3133 3a32 3120 474d 546e 1768 7474 7073 3a2f 2f77 7777 2e65 7861 6d70
             6c65 2e63 6f6d",
            "4803 3330 37c1 c0bf",
            "88c1 611d 4d6f 6e2c 2032 3120 4f63 7420 3230 3133 2032 303a 3133 3a32 3220 474d
             54c0 5a04 677a 6970 7738 666f 6f3d 4153 444a 4b48 514b 425a 584f 5157 454f 5049
             5541 5851 5745 4f49 553b 206d 6178 2d61 6765 3d33 3630 303b 2076 6572 7369 6f6e
             3d31",
        ]);
    }

    #[test]
    fn c6_responses_with_huffman() {
        response_examples([
            "4882 6402 5885 aec3 771a 4b61 96d0 7abe 9410 54d4 44a8 2005 9504 0b81 66e0 82a6
             2d1b ff6e 919d 29ad 1718 63c7 8f0b 97c8 e9ae 82ae 43d3",
            "4883 640e ffc1 c0bf",
            "88c1 6196 d07a be94 1054 d444 a820 0595 040b 8166 e084 a62d 1bff c05a 839b d9ab
             77ad 94e7 821d d7f2 e6c7 b335 dfdf cd5b 3960 d5af 2708 7f36 72c1 ab27 0fb5 291f
             9587 3160 65c0 03ed 4ee5 b106 3d50 07",
        ]);
    }

    // --- Huffman --------------------------------------------------------------------------------

    fn huff(src: &[u8], scratch: &mut Vec<u8>) -> Result<Vec<u8>, ()> {
        huffman_decode(src, scratch).map(<[u8]>::to_vec)
    }

    #[test]
    fn huffman_round_trips_every_byte() {
        let mut scratch = Vec::new();
        for b in 0..=255u8 {
            for len in [1, 2, 3, 7] {
                let s = vec![b; len];
                assert_eq!(
                    huff(&huffman_encode(&s), &mut scratch).unwrap(),
                    s,
                    "{b:#04x} x{len}"
                );
            }
        }
        let all: Vec<u8> = (0..=255u8).chain((0..=255u8).rev()).collect();
        assert_eq!(huff(&huffman_encode(&all), &mut scratch).unwrap(), all);
        // Every byte next to short and long codes, so codes start at every bit offset; the
        // scratch buffer is now longer than these strings and reused as is.
        for a in 0..=255u8 {
            for b in [b'0', b'a', b'e', b'z', b'%', 0, 255] {
                let s = [b, a, b, a, a];
                assert_eq!(huff(&huffman_encode(&s), &mut scratch).unwrap(), s);
            }
        }
        assert_eq!(huff(&[], &mut scratch).unwrap(), b"");
        // The shortest codes give the longest output: 8 bits per byte, 5 bits per symbol.
        let zeros = vec![b'0'; 800];
        let enc = huffman_encode(&zeros);
        assert_eq!(enc.len(), 500);
        assert_eq!(huff(&enc, &mut Vec::new()).unwrap(), zeros);
    }

    #[test]
    fn huffman_rejects_eos_and_bad_padding() {
        let mut scratch = Vec::new();
        // EOS (30 ones) padded with two ones: four 0xff bytes.
        assert!(huff(&[0xff, 0xff, 0xff, 0xff], &mut scratch).is_err());
        // 'a' (00011) then EOS then padding.
        assert!(huff(&[0x1f, 0xff, 0xff, 0xff, 0xff], &mut scratch).is_err());
        // EOS followed by valid symbols.
        let mut eos_then_a = vec![0xff, 0xff, 0xff, 0xfc]; // 30 ones, then "00"
        eos_then_a.push(0x7f); // "011" completes 'a' (00011), then ones
        assert!(huff(&eos_then_a, &mut scratch).is_err());
        // Eight bits of padding.
        assert!(huff(&[0xff], &mut scratch).is_err());
        // 'a' then eleven bits of padding.
        assert!(huff(&[0x1f, 0xff], &mut scratch).is_err());
        // 'a' then padding of zeros / mixed bits.
        assert!(huff(&[0x18], &mut scratch).is_err());
        assert!(huff(&[0x1d], &mut scratch).is_err());
        // 'a' then three ones: fine.
        assert_eq!(huff(&[0x1f], &mut scratch).unwrap(), b"a");
        // "0  " is 5 + 6 + 6 = 17 bits: seven bits of padding, the most allowed.
        let enc = huffman_encode(b"0  ");
        assert_eq!(enc.len(), 3);
        assert_eq!(enc[2], 0x7f);
        assert_eq!(huff(&enc, &mut scratch).unwrap(), b"0  ");
    }

    // --- Decoder errors -------------------------------------------------------------------------

    #[test]
    fn error_truncated() {
        let mut d = Decoder::new(4096);
        // String length 15 with one byte left.
        let e = d.decode(&[0x82, 0x41, 0x0f, b'w'], |_, _| {}).unwrap_err();
        assert_eq!(e, err(2, DecodeErrorKind::Truncated));
        // Integer whose continuation bytes run out.
        let e = d.decode(&[0x82, 0xff, 0x80], |_, _| {}).unwrap_err();
        assert_eq!(e, err(1, DecodeErrorKind::Truncated));
        // Literal name without a value.
        let e = d.decode(&[0x40, 0x01, b'a'], |_, _| {}).unwrap_err();
        assert_eq!(e, err(3, DecodeErrorKind::Truncated));
        // Indexed name without a value.
        let e = d.decode(&[0x0f, 0x10], |_, _| {}).unwrap_err();
        assert_eq!(e, err(2, DecodeErrorKind::Truncated));
    }

    #[test]
    fn error_integer_overflow() {
        let mut d = Decoder::new(4096);
        let e = d
            .decode(&[0x82, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01], |_, _| {})
            .unwrap_err();
        assert_eq!(e, err(1, DecodeErrorKind::IntegerOverflow));
        // Four continuation bytes are accepted (and here point far past the table).
        let e = d
            .decode(&[0xff, 0xff, 0xff, 0xff, 0x7f], |_, _| {})
            .unwrap_err();
        assert_eq!(
            e,
            err(
                0,
                DecodeErrorKind::IndexOutOfRange {
                    index: 127 + 0x7f + (0x7f << 7) + (0x7f << 14) + (0x7f << 21),
                    dynamic_len: 0
                }
            )
        );
        // A string length that overflows.
        let e = d
            .decode(&[0x82, 0x41, 0x7f, 0x80, 0x80, 0x80, 0x80, 0x80], |_, _| {})
            .unwrap_err();
        assert_eq!(e, err(2, DecodeErrorKind::IntegerOverflow));
    }

    #[test]
    fn error_index_zero() {
        let mut d = Decoder::new(4096);
        assert_eq!(
            d.decode(&[0x82, 0x80], |_, _| {}).unwrap_err(),
            err(1, DecodeErrorKind::IndexZero)
        );
    }

    #[test]
    fn error_index_out_of_range() {
        let mut d = Decoder::new(4096);
        let e = d.decode(&[0x82, 0xbe], |_, _| {}).unwrap_err();
        assert_eq!(
            e,
            err(
                1,
                DecodeErrorKind::IndexOutOfRange {
                    index: 62,
                    dynamic_len: 0
                }
            )
        );
        // One entry; index 63 by name in a literal with indexing.
        d.decode(&[0x40, 0x01, b'a', 0x01, b'b'], |_, _| {})
            .unwrap();
        let e = d.decode(&[0x82, 0x7f, 0x00, 0x00], |_, _| {}).unwrap_err();
        assert_eq!(
            e,
            err(
                1,
                DecodeErrorKind::IndexOutOfRange {
                    index: 63,
                    dynamic_len: 1
                }
            )
        );
        assert_eq!(
            e.to_string(),
            "HPACK: index 63 is past the dynamic table (1 entries) at byte 1 of the header block"
        );
        // Without indexing, index 70.
        let e = d.decode(&[0x0f, 0x37, 0x00], |_, _| {}).unwrap_err();
        assert_eq!(
            e,
            err(
                0,
                DecodeErrorKind::IndexOutOfRange {
                    index: 70,
                    dynamic_len: 1
                }
            )
        );
    }

    #[test]
    fn table_size_updates() {
        let mut d = Decoder::new(4096);
        // 4097 = 31 + 0x62 + (0x1f << 7).
        let e = d.decode(&[0x3f, 0xe2, 0x1f], |_, _| {}).unwrap_err();
        assert_eq!(
            e,
            err(
                0,
                DecodeErrorKind::TableSizeUpdateTooLarge {
                    requested: 4097,
                    max: 4096
                }
            )
        );
        let e = d.decode(&[0x82, 0x20], |_, _| {}).unwrap_err();
        assert_eq!(e, err(1, DecodeErrorKind::TableSizeUpdateNotAtStart));

        // Two updates in a row (0 then 4096) are fine and empty the table.
        let mut d = Decoder::new(4096);
        d.decode(&[0x40, 0x01, b'a', 0x01, b'b'], |_, _| {})
            .unwrap();
        assert_eq!(d.dynamic_table_len(), 1);
        let fields = decode_all(&mut d, &[0x20, 0x3f, 0xe1, 0x1f, 0x82]).unwrap();
        assert_eq!(fields, pairs(&[(":method", "GET")]));
        assert_eq!(d.dynamic_table_len(), 0);
        // The second update is checked too.
        let e = d.decode(&[0x20, 0x3f, 0xe2, 0x1f], |_, _| {}).unwrap_err();
        assert_eq!(
            e,
            err(
                1,
                DecodeErrorKind::TableSizeUpdateTooLarge {
                    requested: 4097,
                    max: 4096
                }
            )
        );

        // Shrinking evicts; an update alone is a valid (empty) block.
        let mut d = Decoder::new(4096);
        d.decode(
            &[0x40, 0x01, b'a', 0x01, b'b', 0x40, 0x01, b'c', 0x01, b'd'],
            |_, _| {},
        )
        .unwrap();
        assert_eq!(d.dynamic_table_size(), 68);
        d.decode(&[0x3f, 0x05], |_, _| {}).unwrap(); // 36
        assert_eq!(table(&d), pairs(&[("c", "d")]));
        // A lower advertised limit applies to later updates; the table shrinks with them.
        d.set_max_table_size(20);
        assert_eq!(d.dynamic_table_len(), 1);
        assert_eq!(
            d.decode(&[0x3f, 0x06], |_, _| {}).unwrap_err().kind,
            DecodeErrorKind::TableSizeUpdateTooLarge {
                requested: 37,
                max: 20
            }
        );
        let mut d = Decoder::new(20);
        d.decode(&[0x40, 0x01, b'a', 0x01, b'b'], |_, _| {})
            .unwrap();
        assert_eq!(d.dynamic_table_size(), 34, "the table starts at 4096");
        d.decode(&[0x34, 0x82], |_, _| {}).unwrap();
        assert_eq!(d.dynamic_table_len(), 0);
    }

    #[test]
    fn error_bad_huffman() {
        let mut d = Decoder::new(4096);
        let e = d.decode(&[0x82, 0x41, 0x81, 0xff], |_, _| {}).unwrap_err();
        assert_eq!(e, err(2, DecodeErrorKind::BadHuffman));
        // In a literal name.
        let e = d.decode(&[0x00, 0x81, 0x18, 0x00], |_, _| {}).unwrap_err();
        assert_eq!(e, err(1, DecodeErrorKind::BadHuffman));
        // EOS.
        let e = d
            .decode(&[0x00, 0x81, 0x1f, 0x84, 0xff, 0xff, 0xff, 0xff], |_, _| {})
            .unwrap_err();
        assert_eq!(e, err(3, DecodeErrorKind::BadHuffman));
    }

    #[test]
    fn error_string_too_long() {
        let mut d = Decoder::new(4096);
        d.set_max_string_len(3);
        let e = d
            .decode(&[0x82, 0x41, 0x04, b'a', b'b', b'c', b'd'], |_, _| {})
            .unwrap_err();
        assert_eq!(e, err(2, DecodeErrorKind::StringTooLong));
        assert_eq!(
            e.to_string(),
            "HPACK: string literal too long at byte 2 of the header block"
        );
        // Huffman: 3 bytes encoded, 4 decoded.
        let mut block = vec![0x41, 0x83];
        let enc = huffman_encode(b"0000");
        assert_eq!(enc.len(), 3);
        block.extend_from_slice(&enc);
        let e = d.decode(&block, |_, _| {}).unwrap_err();
        assert_eq!(e, err(1, DecodeErrorKind::StringTooLong));
        // At the limit: fine.
        let fields = decode_all(&mut d, &[0x41, 0x03, b'a', b'b', b'c']).unwrap();
        assert_eq!(fields, pairs(&[(":authority", "abc")]));
    }

    #[test]
    fn entry_larger_than_table_empties_it() {
        let mut d = Decoder::new(256);
        d.decode(&[0x3f, 0xe1, 0x01, 0x40, 0x01, b'a', 0x01, b'b'], |_, _| {})
            .unwrap();
        assert_eq!(d.dynamic_table_len(), 1);
        let mut block = vec![0x40, 0x01, b'x', 0x7f, 0xa2, 0x01]; // value length 127 + 162 = 289
        block.extend(std::iter::repeat_n(b'y', 289));
        let fields = decode_all(&mut d, &block).unwrap();
        assert_eq!(fields.len(), 1);
        assert_eq!(fields[0].1.len(), 289);
        assert_eq!(d.dynamic_table_len(), 0);
        assert_eq!(d.dynamic_table_size(), 0);
    }

    #[test]
    fn name_from_entry_evicted_by_its_own_insertion() {
        // Room for exactly one 43/44-byte entry.
        let mut d = Decoder::new(64);
        let mut block = vec![0x3f, 0x21, 0x40, 0x0a];
        block.extend_from_slice(b"custom-key");
        block.extend_from_slice(&[0x01, b'a', 0x7e, 0x02, b'b', b'b']);
        let fields = decode_all(&mut d, &block).unwrap();
        assert_eq!(fields, pairs(&[("custom-key", "a"), ("custom-key", "bb")]));
        assert_eq!(table(&d), pairs(&[("custom-key", "bb")]));
        assert_eq!(d.dynamic_table_size(), 44);
    }

    // --- Encoder --------------------------------------------------------------------------------

    fn encode_response(e: &mut Encoder, status: u16, headers: &HeaderMap) -> BytesMut {
        let mut dst = BytesMut::new();
        e.encode_response(StatusCode::from_u16(status).unwrap(), headers, &mut dst);
        dst
    }

    fn expected(status: Option<u16>, headers: &HeaderMap) -> Vec<(String, String)> {
        let mut out = Vec::new();
        if let Some(s) = status {
            out.push((":status".to_string(), s.to_string()));
        }
        for (n, v) in headers {
            out.push((n.as_str().to_string(), v.to_str().unwrap().to_string()));
        }
        out
    }

    fn assert_tables_match(e: &Encoder, d: &Decoder) {
        assert_eq!(e.entries(), d.entries());
        assert_eq!(e.dynamic_table_size(), d.dynamic_table_size());
    }

    #[test]
    fn bytes_eq_matches_slice_eq() {
        for n in 0..40usize {
            let a: Vec<u8> = (0..n as u8).collect();
            assert!(bytes_eq(&a, &a.clone()));
            assert!(!bytes_eq(&a, &[a.as_slice(), b"x"].concat()));
            for i in 0..n {
                let mut b = a.clone();
                b[i] ^= 0x20;
                assert!(!bytes_eq(&a, &b), "len {n}, byte {i}");
            }
        }
    }

    #[test]
    fn static_name_index_matches_static_table() {
        for (i, (name, _)) in STATIC_TABLE.iter().enumerate().skip(14) {
            let name = std::str::from_utf8(name).unwrap();
            assert_eq!(static_name_index(name), Some(i + 1), "{name}");
        }
        assert_eq!(static_name_index("x-custom"), None);
        assert_eq!(static_name_index("dat"), None);
        assert_eq!(static_name_index(":status"), None);
    }

    #[test]
    fn encoder_round_trip_and_indexing() {
        let mut headers = HeaderMap::new();
        headers.insert("server", HeaderValue::from_static("strait"));
        headers.insert(
            "content-type",
            HeaderValue::from_static("text/html; charset=utf-8"),
        );
        headers.insert("content-length", HeaderValue::from_static("1234"));
        headers.insert("cache-control", HeaderValue::from_static("private"));
        headers.append("vary", HeaderValue::from_static("accept-encoding"));
        headers.append("vary", HeaderValue::from_static("origin"));
        headers.insert("x-request-id", HeaderValue::from_static("abc123"));
        headers.insert("accept-ranges", HeaderValue::from_static(""));
        headers.insert("accept-encoding", HeaderValue::from_static("gzip, deflate"));
        headers.insert("x-big", HeaderValue::from_str(&"z".repeat(3100)).unwrap());

        let mut e = Encoder::new();
        let mut d = Decoder::new(4096);
        let first = encode_response(&mut e, 200, &headers);
        assert_eq!(first[0], 0x88);
        assert_eq!(
            decode_all(&mut d, &first).unwrap(),
            expected(Some(200), &headers)
        );
        assert_tables_match(&e, &d);

        let second = encode_response(&mut e, 200, &headers);
        assert_eq!(
            decode_all(&mut d, &second).unwrap(),
            expected(Some(200), &headers)
        );
        assert_tables_match(&e, &d);
        // Ten one-byte fields, then x-big (too big to index) as a literal without indexing:
        // flags, name length, name, value length (3 bytes), value.
        assert_eq!(second.len(), 10 + 1 + 1 + 5 + 3 + 3100);
        assert!(second.len() < first.len());

        // A new value for an indexed custom name reuses the name by dynamic index.
        let mut other = HeaderMap::new();
        other.insert("x-request-id", HeaderValue::from_static("def456"));
        let mut dst = BytesMut::new();
        e.encode_trailers(&other, &mut dst);
        assert_eq!(dst[0] & 0xc0, 0x40);
        assert!(dst[0] & 0x3f != 0, "name by index");
        assert_eq!(dst.len(), 1 + 1 + 6);
        assert_eq!(decode_all(&mut d, &dst).unwrap(), expected(None, &other));
        assert_tables_match(&e, &d);
    }

    /// The per-position shortcut: a repeated response is all one-byte indexes; a changed
    /// value at a position, an evicted entry and a value now marked sensitive each take the
    /// full path, and the decoder agrees every time.
    #[test]
    fn repeated_positions_take_the_shortcut_only_when_it_holds() {
        let mut headers = HeaderMap::new();
        headers.insert("server", HeaderValue::from_static("nginx"));
        headers.insert("x-one", HeaderValue::from_static("1"));
        headers.insert("x-two", HeaderValue::from_static("2"));
        let mut e = Encoder::new();
        let mut d = Decoder::new(4096);
        let mut check = |e: &mut Encoder, headers: &HeaderMap| {
            let block = encode_response(e, 200, headers);
            assert_eq!(
                decode_all(&mut d, &block).unwrap(),
                expected(Some(200), headers)
            );
            assert_tables_match(e, &d);
            block
        };
        check(&mut e, &headers);
        assert_eq!(check(&mut e, &headers).len(), 4);
        assert_eq!(check(&mut e, &headers).len(), 4);
        // Another value at position 1: a new entry; the other positions still index.
        headers.insert("x-one", HeaderValue::from_static("11"));
        let block = check(&mut e, &headers);
        assert_eq!(block[2] & 0xc0, 0x40, "{block:?}");
        assert_eq!(check(&mut e, &headers).len(), 4);
        // Marked sensitive: never indexed, though the entry is live.
        let mut secret = HeaderValue::from_static("2");
        secret.set_sensitive(true);
        headers.insert("x-two", secret);
        let block = check(&mut e, &headers);
        assert_eq!(block[3] & 0xf0, 0x10, "{block:?}");
        // Evicted: a table of 0 empties it; the positions' links are dead.
        e.set_max_table_size(0);
        let block = check(&mut e, &headers);
        assert!(block.len() > 4, "{block:?}");
        e.set_max_table_size(4096);
        check(&mut e, &headers);
        // :status, server and x-one indexed; x-two never indexed, its name a literal too:
        // flags, name length, "x-two", value length, "2".
        assert_eq!(check(&mut e, &headers).len(), 3 + 1 + 1 + 5 + 1 + 1);
    }

    #[test]
    fn status_codes() {
        let mut e = Encoder::new();
        let mut d = Decoder::new(4096);
        let empty = HeaderMap::new();
        for (status, byte) in [
            (200, 0x88),
            (204, 0x89),
            (206, 0x8a),
            (304, 0x8b),
            (400, 0x8c),
            (404, 0x8d),
            (500, 0x8e),
        ] {
            let block = encode_response(&mut e, status, &empty);
            assert_eq!(&block[..], &[byte]);
        }
        for status in [
            100, 101, 201, 301, 302, 307, 401, 403, 429, 502, 503, 599, 999,
        ] {
            let block = encode_response(&mut e, status, &empty);
            assert_eq!(block[0], 0x48, "literal with indexing, name index 8");
            assert_eq!(
                decode_all(&mut d, &block).unwrap(),
                expected(Some(status), &empty)
            );
            let again = encode_response(&mut e, status, &empty);
            assert_eq!(again.len(), 1);
            assert_eq!(
                decode_all(&mut d, &again).unwrap(),
                expected(Some(status), &empty)
            );
        }
        assert_tables_match(&e, &d);
    }

    #[test]
    fn sensitive_fields_are_never_indexed() {
        let mut e = Encoder::new();
        let mut d = Decoder::new(4096);
        let mut secret = HeaderValue::from_static("token-value");
        secret.set_sensitive(true);
        let cases: Vec<(HeaderName, HeaderValue, &[u8])> = vec![
            (
                "authorization".parse().unwrap(),
                HeaderValue::from_static("Bearer xyz"),
                &[0x1f, 0x08],
            ),
            (
                "proxy-authorization".parse().unwrap(),
                HeaderValue::from_static("Basic a"),
                &[0x1f, 0x22],
            ),
            (
                "cookie".parse().unwrap(),
                HeaderValue::from_static("sid=1"),
                &[0x1f, 0x11],
            ),
            (
                "set-cookie".parse().unwrap(),
                HeaderValue::from_static("sid=12345678901234"),
                &[0x1f, 0x28],
            ),
            ("x-api-key".parse().unwrap(), secret, &[0x10, 0x09]),
        ];
        for round in 0..2 {
            for (name, value, prefix) in &cases {
                let mut headers = HeaderMap::new();
                headers.insert(name.clone(), value.clone());
                let mut dst = BytesMut::new();
                e.encode_trailers(&headers, &mut dst);
                assert_eq!(dst[0] & 0xf0, 0x10, "{name} round {round}");
                assert_eq!(&dst[..prefix.len()], *prefix, "{name}");
                assert_eq!(decode_all(&mut d, &dst).unwrap(), expected(None, &headers));
            }
        }
        assert_eq!(e.dynamic_table_len(), 0);
        assert_eq!(d.dynamic_table_len(), 0);

        // A long cookie is indexed; a sensitive value is not matched against the table even if
        // an identical, non-sensitive field is there.
        let mut headers = HeaderMap::new();
        headers.insert(
            "set-cookie",
            HeaderValue::from_static("session=0123456789abcdef"),
        );
        headers.insert("x-api-key", HeaderValue::from_static("token-value"));
        let mut dst = BytesMut::new();
        e.encode_trailers(&headers, &mut dst);
        assert_eq!(dst[0], 0x40 | 55);
        decode_all(&mut d, &dst).unwrap();
        assert_eq!(e.dynamic_table_len(), 2);
        let mut secret = HeaderValue::from_static("token-value");
        secret.set_sensitive(true);
        let mut headers = HeaderMap::new();
        headers.insert("x-api-key", secret);
        let mut dst = BytesMut::new();
        e.encode_trailers(&headers, &mut dst);
        assert_eq!(dst[0], 0x10);
        assert_eq!(decode_all(&mut d, &dst).unwrap(), expected(None, &headers));
        assert_tables_match(&e, &d);
    }

    #[test]
    fn table_size_changes() {
        let mut e = Encoder::new();
        let mut d = Decoder::new(4096);
        let mut headers = HeaderMap::new();
        headers.insert("x-a", HeaderValue::from_static("1"));
        headers.insert("x-b", HeaderValue::from_static("2"));
        let block = encode_response(&mut e, 200, &headers);
        decode_all(&mut d, &block).unwrap();
        assert_eq!(e.dynamic_table_len(), 2);

        // Unchanged or raised above 4096: no update.
        e.set_max_table_size(4096);
        e.set_max_table_size(65536);
        let block = encode_response(&mut e, 200, &headers);
        assert_eq!(&block[..], &[0x88, 0xbf, 0xbe]);
        decode_all(&mut d, &block).unwrap();

        // 0 then 4096 between blocks: both announced, table emptied on both sides.
        e.set_max_table_size(0);
        assert_eq!(e.dynamic_table_len(), 0);
        e.set_max_table_size(4096);
        let block = encode_response(&mut e, 200, &headers);
        assert_eq!(&block[..4], &[0x20, 0x3f, 0xe1, 0x1f]);
        assert_eq!(
            decode_all(&mut d, &block).unwrap(),
            expected(Some(200), &headers)
        );
        assert_tables_match(&e, &d);
        assert_eq!(e.dynamic_table_len(), 2);

        // Just the next block carries the update.
        let block = encode_response(&mut e, 200, &headers);
        assert_eq!(&block[..], &[0x88, 0xbf, 0xbe]);
        decode_all(&mut d, &block).unwrap();

        // Lowered to 0 and left there: nothing is indexed.
        e.set_max_table_size(0);
        let block = encode_response(&mut e, 200, &headers);
        assert_eq!(block[0], 0x20);
        assert_eq!(block[1], 0x88);
        assert_eq!(block[2], 0x00, "literal without indexing");
        assert_eq!(
            decode_all(&mut d, &block).unwrap(),
            expected(Some(200), &headers)
        );
        assert_tables_match(&e, &d);
        assert_eq!(e.dynamic_table_len(), 0);

        // Lowered to 100 then 200: min first, then final; one entry of 36 survives 100.
        e.set_max_table_size(4096);
        let block = encode_response(&mut e, 200, &headers);
        decode_all(&mut d, &block).unwrap();
        e.set_max_table_size(40);
        e.set_max_table_size(200);
        let block = encode_response(&mut e, 200, &HeaderMap::new());
        assert_eq!(&block[..], &[0x3f, 0x09, 0x3f, 0xa9, 0x01, 0x88]);
        decode_all(&mut d, &block).unwrap();
        assert_tables_match(&e, &d);
        assert_eq!(e.dynamic_table_len(), 1);
    }

    /// xorshift64*: deterministic and dependency-free.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        fn below(&mut self, n: u64) -> usize {
            (self.next() % n) as usize
        }
    }

    /// Whatever a peer sends, decoding ends in fields or an error, never a panic: random
    /// bytes, and valid blocks with random bytes flipped, cut or appended.
    #[test]
    fn arbitrary_input_never_panics() {
        let mut rng = Rng(0x2545_f491_4f6c_dd1d);
        let mut headers = HeaderMap::new();
        headers.insert("server", HeaderValue::from_static("nginx"));
        headers.insert("x-long", HeaderValue::from_str(&"q".repeat(300)).unwrap());
        let mut e = Encoder::new();
        let valid = encode_response(&mut e, 200, &headers);
        for round in 0..20_000 {
            let mut block: Vec<u8> = match round % 2 {
                0 => (0..rng.below(64)).map(|_| rng.next() as u8).collect(),
                _ => {
                    let mut b = valid.to_vec();
                    for _ in 0..1 + rng.below(4) {
                        let at = rng.below(b.len() as u64);
                        b[at] = rng.next() as u8;
                    }
                    b.truncate(rng.below(b.len() as u64 + 1));
                    b
                }
            };
            if rng.below(4) == 0 {
                block.extend((0..rng.below(8)).map(|_| rng.next() as u8));
            }
            // A fresh decoder each round: after an error, a connection closes.
            let mut d = Decoder::new(4096);
            let mut fields = 0usize;
            let _ = d.decode(&block, |n, v| fields += n.len() + v.len());
            let _ = d.decode(&valid, |n, v| fields += n.len() + v.len());
        }
    }

    #[test]
    fn random_blocks_keep_tables_in_sync() {
        const NAMES: &[&str] = &[
            "server",
            "content-type",
            "content-length",
            "cache-control",
            "date",
            "etag",
            "set-cookie",
            "cookie",
            "authorization",
            "vary",
            "location",
            "x-request-id",
            "x-trace",
            "x-custom-header-with-a-long-name",
            "accept-encoding",
            "age",
            "via",
            "x-a",
            "x-b",
            "x-c",
            "x-d",
            "x-e",
            "x-f",
            "x-g",
        ];
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let mut e = Encoder::new();
        let mut d = Decoder::new(4096);
        let mut total_entries = 0;
        for round in 0..1000 {
            if rng.below(50) == 0 {
                let size = [0, 64, 100, 256, 1000, 4096, 65536][rng.below(7)];
                e.set_max_table_size(size);
                d.set_max_table_size(size.max(4096));
                if rng.below(2) == 0 {
                    e.set_max_table_size(4096);
                }
            }
            let mut headers = HeaderMap::new();
            for _ in 0..rng.below(12) {
                let name = NAMES[rng.below(NAMES.len() as u64)];
                let len = match rng.below(20) {
                    0 => 2000 + rng.below(2000),
                    1..=4 => rng.below(200),
                    _ => rng.below(12),
                };
                // A small alphabet makes repeated values (dynamic hits) common.
                let value: String = (0..len)
                    .map(|_| {
                        char::from(b"abcdefgh 0123=;"[rng.below(if len < 4 { 3 } else { 15 })])
                    })
                    .collect();
                let mut value = HeaderValue::from_str(value.trim()).unwrap();
                if rng.below(30) == 0 {
                    value.set_sensitive(true);
                }
                headers.append(name, value);
            }
            let mut dst = BytesMut::new();
            let status = if rng.below(2) == 0 {
                None
            } else {
                Some([200, 200, 200, 404, 302, 503, 201][rng.below(7)])
            };
            match status {
                Some(s) => e.encode_response(StatusCode::from_u16(s).unwrap(), &headers, &mut dst),
                None => e.encode_trailers(&headers, &mut dst),
            }
            let fields =
                decode_all(&mut d, &dst).unwrap_or_else(|err| panic!("round {round}: {err}"));
            assert_eq!(fields, expected(status, &headers), "round {round}");
            assert_tables_match(&e, &d);
            assert!(e.dynamic_table_size() <= 4096);
            total_entries += e.dynamic_table_len();
        }
        // The table was exercised (and evicting) rather than idle.
        assert!(total_entries > 1000 * 10, "{total_entries}");
    }
}
