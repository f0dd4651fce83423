//! A process's task records as the table keeps them: encoded, not as the iterator's 1,152-byte
//! records. At 100,000 processes the records were 115 MB of the agent's ~300 MB, though most of
//! their words are zero, or the same as in most other processes (limits, capabilities, the
//! scheduling class), or small numbers.
//!
//! Each record is 144 words of 8 bytes; a word is written as one of: the same as in a
//! reference record, zero, its value, or its value xor the reference's (whichever of the last
//! two is shorter), as a LEB128 number, behind a 2-bit code per word. The leader's reference
//! is the table's (the first leader ever encoded: most processes share its limits and
//! capabilities); a thread's is its leader, whose thread-group fields it carries. Equal
//! records encode to equal bytes, so the table compares encodings.

use std::sync::OnceLock;

use bpfproc_common::TaskRecord;

const WORDS: usize = size_of::<TaskRecord>() / 8;
const _: () = assert!(size_of::<TaskRecord>() % 8 == 0);
const CODES: usize = WORDS.div_ceil(4);

const SAME: u8 = 0;
const ZERO: u8 = 1;
const RAW: u8 = 2;
const XOR: u8 = 3;

/// The reference of every leader's record: set once, by the first leader encoded.
static REFERENCE: OnceLock<[u64; WORDS]> = OnceLock::new();

/// A process's task records, the leader first, encoded (see the module's comment).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Tasks(Box<[u8]>);

impl std::fmt::Debug for Tasks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.iter().map(|t| t.tid)).finish()
    }
}

fn words(t: &TaskRecord) -> [u64; WORDS] {
    // SAFETY: TaskRecord is repr(C), Copy, made of integers with explicit padding (its size,
    // a multiple of 8, is pinned by a test in common), so every byte is initialised and any
    // bit pattern of the same size is valid.
    unsafe { std::mem::transmute_copy(t) }
}

fn record(w: &[u64; WORDS]) -> TaskRecord {
    // SAFETY: as in `words`.
    unsafe { std::mem::transmute_copy(w) }
}

fn leb_len(v: u64) -> u32 {
    (64 - (v | 1).leading_zeros()).div_ceil(7)
}

fn put(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn get(bytes: &[u8], at: &mut usize) -> u64 {
    let mut v = 0u64;
    let mut shift = 0;
    while let Some(&b) = bytes.get(*at) {
        *at += 1;
        v |= u64::from(b & 0x7f) << shift;
        if b < 0x80 {
            break;
        }
        shift += 7;
    }
    v
}

fn encode(out: &mut Vec<u8>, w: &[u64; WORDS], reference: &[u64; WORDS]) {
    let codes_at = out.len();
    out.resize(codes_at + CODES, 0);
    for i in 0..WORDS {
        let (v, r) = (w[i], reference[i]);
        let code = if v == r {
            SAME
        } else if v == 0 {
            ZERO
        } else if leb_len(v ^ r) < leb_len(v) {
            put(out, v ^ r);
            XOR
        } else {
            put(out, v);
            RAW
        };
        out[codes_at + i / 4] |= code << ((i % 4) * 2);
    }
}

fn decode(bytes: &[u8], at: &mut usize, reference: &[u64; WORDS]) -> [u64; WORDS] {
    let codes = &bytes[*at..*at + CODES];
    *at += CODES;
    let mut w = [0u64; WORDS];
    for (i, word) in w.iter_mut().enumerate() {
        *word = match (codes[i / 4] >> ((i % 4) * 2)) & 3 {
            SAME => reference[i],
            ZERO => 0,
            RAW => get(bytes, at),
            _ => get(bytes, at) ^ reference[i],
        };
    }
    w
}

/// Appends the encoding of `records` (the leader first) to `out`, as `Tasks::new` keeps it.
pub(super) fn encode_into(out: &mut Vec<u8>, records: &[TaskRecord]) {
    let Some(leader) = records.first() else {
        return;
    };
    let leader = words(leader);
    let reference = REFERENCE.get_or_init(|| leader);
    put(out, records.len() as u64);
    encode(out, &leader, reference);
    for t in &records[1..] {
        encode(out, &words(t), &leader);
    }
}

/// The records an encoding holds (made by `encode_into`), the leader first.
pub(super) fn decode_all(bytes: &[u8]) -> Iter<'_> {
    let mut at = 0;
    let left = if bytes.is_empty() {
        0
    } else {
        get(bytes, &mut at) as usize
    };
    Iter {
        bytes,
        at,
        left,
        leader: None,
    }
}

impl Tasks {
    /// `records`, the leader first.
    pub fn new(records: &[TaskRecord]) -> Self {
        let mut out = Vec::with_capacity(256);
        encode_into(&mut out, records);
        Self(out.into_boxed_slice())
    }

    /// An encoding made by `encode_into`.
    pub(super) fn from_encoded(bytes: &[u8]) -> Self {
        Self(bytes.into())
    }

    /// The encoding, to compare with one made by `encode_into`.
    pub(super) fn encoded(&self) -> &[u8] {
        &self.0
    }

    pub fn len(&self) -> usize {
        let mut at = 0;
        if self.0.is_empty() {
            0
        } else {
            get(&self.0, &mut at) as usize
        }
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The leader's record.
    pub fn first(&self) -> Option<TaskRecord> {
        self.iter().next()
    }

    /// The records, the leader first.
    pub fn iter(&self) -> Iter<'_> {
        decode_all(&self.0)
    }

    pub fn to_vec(&self) -> Vec<TaskRecord> {
        self.iter().collect()
    }

    /// The bytes the encoding takes.
    pub fn encoded_len(&self) -> usize {
        self.0.len()
    }
}

impl From<Vec<TaskRecord>> for Tasks {
    fn from(records: Vec<TaskRecord>) -> Self {
        Self::new(&records)
    }
}

/// The records of a `Tasks`, decoded one at a time.
pub struct Iter<'a> {
    bytes: &'a [u8],
    at: usize,
    left: usize,
    leader: Option<[u64; WORDS]>,
}

impl Iterator for Iter<'_> {
    type Item = TaskRecord;

    fn next(&mut self) -> Option<TaskRecord> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        let w = match &self.leader {
            None => {
                let reference = REFERENCE.get_or_init(|| [0; WORDS]);
                let w = decode(self.bytes, &mut self.at, reference);
                self.leader = Some(w);
                w
            }
            Some(leader) => decode(self.bytes, &mut self.at, leader),
        };
        Some(record(&w))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.left, Some(self.left))
    }
}

impl ExactSizeIterator for Iter<'_> {}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(tid: u32, tgid: u32, utime: u64) -> TaskRecord {
        // SAFETY: plain integers and arrays.
        let mut r: TaskRecord = unsafe { std::mem::zeroed() };
        r.tid = tid;
        r.tgid = tgid;
        r.utime = utime;
        r.rlim = [u64::MAX; 32];
        r.cap_bset = 0x1ff_ffff_ffff;
        r.start_code = 0x5555_5555_4000 + u64::from(tgid) * 4096;
        r.comm[..4].copy_from_slice(b"init");
        r
    }

    #[test]
    fn records_come_back_as_they_went_in_in_a_fraction_of_their_size() {
        let leader = rec(100, 100, 12_345);
        let mut thread = rec(101, 100, 7);
        thread.state = 1;
        let tasks = Tasks::new(&[leader, thread]);
        assert_eq!(tasks.len(), 2);
        let back = tasks.to_vec();
        assert_eq!(words(&back[0]), words(&leader));
        assert_eq!(words(&back[1]), words(&thread));
        assert_eq!(words(&tasks.first().unwrap()), words(&leader));
        // Another process much like the first: far smaller than its 1,152 bytes.
        let other = Tasks::new(&[rec(200, 200, 99)]);
        assert_eq!(words(&other.first().unwrap()), words(&rec(200, 200, 99)));
        assert!(other.encoded_len() < 120, "{} bytes", other.encoded_len());
        // Equal records, equal bytes; any difference shows.
        assert_eq!(Tasks::new(&[leader, thread]), tasks);
        let mut moved = thread;
        moved.nvcsw += 1;
        assert_ne!(Tasks::new(&[leader, moved]), tasks);
        assert!(Tasks::new(&[]).is_empty() && Tasks::new(&[]).first().is_none());
    }

    #[test]
    fn every_word_survives_any_value() {
        let mut w = [0u64; WORDS];
        for (i, v) in w.iter_mut().enumerate() {
            *v = match i % 5 {
                0 => u64::MAX,
                1 => 0,
                2 => 1 << (i % 64),
                3 => (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15),
                _ => 127,
            };
        }
        let r = record(&w);
        let tasks = Tasks::new(&[rec(1, 1, 1), r, r]);
        let back = tasks.to_vec();
        assert_eq!(words(&back[1]), w);
        assert_eq!(words(&back[2]), w);
    }
}
