//! rsync-style delta transfer: block signatures of the receiver's copy, a
//! streaming delta generator on the sender, and an applier that rebuilds
//! the new file from the old one plus the delta.
//!
//! Memory is bounded for files of any size: the generator keeps one block
//! plus at most [`LITERAL_MAX`] bytes of pending literal data; the applier
//! copies matched blocks in small chunks.

use std::io::{self, Read, Write};

use serde::{Deserialize, Serialize};

/// Largest literal chunk the generator emits (and the applier accepts).
pub const LITERAL_MAX: usize = 256 * 1024;
/// Smallest block size.
pub const BLOCK_MIN: u32 = 700;
/// Largest block size.
pub const BLOCK_MAX: u32 = 1 << 20;
/// The generator never needs more blocks than this in a signature.
pub const MAX_BLOCKS: u64 = 200_000;

/// A BLAKE3 digest of a whole file.
pub type Hash = [u8; 32];

/// The signature of one block of the receiver's copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockSig {
    /// Rolling weak checksum.
    pub weak: u32,
    /// BLAKE3 of the block, truncated to 16 bytes.
    pub strong: [u8; 16],
}

/// The block signatures of a whole file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signature {
    /// Block length (the last block may be shorter).
    pub block_size: u32,
    /// Length of the file the signature was computed from.
    pub file_len: u64,
    /// One entry per block, in file order.
    pub blocks: Vec<BlockSig>,
}

/// One instruction of a delta.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    /// Copy `count` consecutive blocks of the base, starting at block `index`.
    Copy {
        /// First block.
        index: u64,
        /// Number of blocks.
        count: u32,
    },
    /// Append these bytes.
    Literal(#[serde(with = "bytes")] Vec<u8>),
}

/// Serializes a byte vector as one byte string instead of a sequence of
/// `u8`s. postcard writes both the same way (a varint length, then the
/// bytes), so the wire format is unchanged; only the per-byte visitor
/// calls are gone.
pub(crate) mod bytes {
    use serde::{Deserializer, Serializer, de};

    pub(crate) fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(v)
    }

    struct Visitor;

    impl<'de> de::Visitor<'de> for Visitor {
        type Value = Vec<u8>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("bytes")
        }
        fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
            Ok(v.to_vec())
        }
        fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
            Ok(v)
        }
        fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
            let mut v = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1 << 20));
            while let Some(b) = seq.next_element()? {
                v.push(b);
            }
            Ok(v)
        }
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        d.deserialize_byte_buf(Visitor)
    }

    /// The same for `Option<Vec<u8>>`.
    pub(crate) mod opt {
        use serde::{Deserialize, Deserializer, Serialize, Serializer};

        struct Ref<'a>(&'a [u8]);

        impl Serialize for Ref<'_> {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_bytes(self.0)
            }
        }

        #[derive(Deserialize)]
        struct Wrap(#[serde(with = "super")] Vec<u8>);

        pub(crate) fn serialize<S: Serializer>(
            v: &Option<Vec<u8>>,
            s: S,
        ) -> Result<S::Ok, S::Error> {
            match v {
                Some(b) => s.serialize_some(&Ref(b)),
                None => s.serialize_none(),
            }
        }

        pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
            d: D,
        ) -> Result<Option<Vec<u8>>, D::Error> {
            Ok(Option::<Wrap>::deserialize(d)?.map(|w| w.0))
        }
    }
}

/// Why a delta could not be generated or applied.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DeltaError {
    /// Reading the source/base or writing the output failed.
    #[error("{0}")]
    Io(#[from] io::Error),
    /// The peer's signature or delta is malformed.
    #[error("invalid delta: {0}")]
    Invalid(String),
    /// The rebuilt file's BLAKE3 differs from the sender's.
    #[error("the rebuilt file's BLAKE3 does not match the sender's")]
    HashMismatch,
}

/// Block size for a file of `len` bytes: about `sqrt(len)`, bounded so that
/// a signature never has more than [`MAX_BLOCKS`] blocks.
#[must_use]
pub fn block_size_for(len: u64) -> u32 {
    let sqrt = (len as f64).sqrt() as u64;
    let by_count = len.div_ceil(MAX_BLOCKS);
    let bs = sqrt
        .max(by_count)
        .clamp(u64::from(BLOCK_MIN), u64::from(BLOCK_MAX));
    // Multiple of 8 keeps reads aligned; cannot exceed BLOCK_MAX.
    u32::try_from(bs.div_ceil(8) * 8).unwrap_or(BLOCK_MAX)
}

/// The rolling weak checksum (rsync's Adler-32 variant).
#[derive(Debug, Clone, Copy, Default)]
struct Rolling {
    a: u32,
    b: u32,
    len: u32,
}

impl Rolling {
    fn new(data: &[u8]) -> Self {
        let mut a = 0u32;
        let mut b = 0u32;
        let n = data.len() as u32;
        for (i, &x) in data.iter().enumerate() {
            a = a.wrapping_add(u32::from(x));
            b = b.wrapping_add((n - i as u32).wrapping_mul(u32::from(x)));
        }
        Self { a, b, len: n }
    }

    fn roll(&mut self, out: u8, inp: u8) {
        self.a = self
            .a
            .wrapping_sub(u32::from(out))
            .wrapping_add(u32::from(inp));
        self.b = self
            .b
            .wrapping_sub(self.len.wrapping_mul(u32::from(out)))
            .wrapping_add(self.a);
    }

    fn digest(self) -> u32 {
        (self.a & 0xffff) | (self.b << 16)
    }
}

/// The weak checksum of one block.
#[must_use]
pub fn weak_sum(data: &[u8]) -> u32 {
    Rolling::new(data).digest()
}

/// The truncated strong hash of one block.
#[must_use]
pub fn strong_sum(data: &[u8]) -> [u8; 16] {
    let h = blake3::hash(data);
    let mut out = [0u8; 16];
    out.copy_from_slice(&h.as_bytes()[..16]);
    out
}

/// Reads `src` to the end and computes its block signature (streaming).
pub fn signature<R: Read>(mut src: R, len_hint: u64) -> io::Result<Signature> {
    let bs = block_size_for(len_hint);
    let mut buf = vec![0u8; bs as usize];
    let mut sig = Signature {
        block_size: bs,
        file_len: 0,
        blocks: Vec::new(),
    };
    loop {
        let n = read_full(&mut src, &mut buf)?;
        if n == 0 {
            break;
        }
        let block = &buf[..n];
        sig.blocks.push(BlockSig {
            weak: weak_sum(block),
            strong: strong_sum(block),
        });
        sig.file_len += n as u64;
        if n < buf.len() {
            break;
        }
    }
    Ok(sig)
}

/// Reads until `buf` is full or EOF; returns the count.
fn read_full<R: Read>(src: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match src.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// A validated view of a peer's signature, indexed for lookups.
struct Index<'a> {
    sig: &'a Signature,
    bs: usize,
    /// (weak, block) pairs of the full-size blocks, sorted.
    sorted: Vec<(u32, u32)>,
    /// Bloom-like prefilter over the weak checksums.
    filter: Vec<u64>,
    /// Length of a short last block, if there is one.
    short_last: Option<usize>,
}

const FILTER_BITS: u32 = 20;

fn filter_slot(weak: u32) -> usize {
    ((weak ^ (weak >> FILTER_BITS) ^ (weak >> 7)) & ((1 << FILTER_BITS) - 1)) as usize
}

impl<'a> Index<'a> {
    fn new(sig: &'a Signature) -> Result<Self, DeltaError> {
        let n = sig.blocks.len() as u64;
        if n == 0 {
            return Ok(Self {
                sig,
                bs: 1,
                sorted: Vec::new(),
                filter: Vec::new(),
                short_last: None,
            });
        }
        if sig.block_size == 0 || sig.block_size > BLOCK_MAX || n > MAX_BLOCKS * 4 {
            return Err(DeltaError::Invalid(format!(
                "signature with block size {} and {n} blocks",
                sig.block_size
            )));
        }
        let bs = u64::from(sig.block_size);
        let full = sig.file_len / bs;
        let rem = sig.file_len % bs;
        let expected = full + u64::from(rem > 0);
        if expected != n {
            return Err(DeltaError::Invalid(format!(
                "signature lists {n} blocks for a {}-byte file",
                sig.file_len
            )));
        }
        let full_count = full as usize;
        let mut sorted: Vec<(u32, u32)> = sig.blocks[..full_count]
            .iter()
            .enumerate()
            .map(|(i, b)| (b.weak, i as u32))
            .collect();
        sorted.sort_unstable();
        let mut filter = vec![0u64; (1 << FILTER_BITS) / 64];
        for &(w, _) in &sorted {
            let s = filter_slot(w);
            filter[s / 64] |= 1 << (s % 64);
        }
        Ok(Self {
            sig,
            bs: bs as usize,
            sorted,
            filter,
            short_last: (rem > 0).then_some(rem as usize),
        })
    }

    fn maybe(&self, weak: u32) -> bool {
        if self.sorted.is_empty() {
            return false;
        }
        let s = filter_slot(weak);
        self.filter[s / 64] & (1 << (s % 64)) != 0
    }

    /// A full block whose sums match `window`, preferring `prefer`.
    fn find(&self, weak: u32, window: &[u8], prefer: Option<u64>) -> Option<u64> {
        let start = self.sorted.partition_point(|&(w, _)| w < weak);
        let candidates = self.sorted[start..].iter().take_while(|&&(w, _)| w == weak);
        let mut strong = None;
        let mut found = None;
        for &(_, idx) in candidates {
            let s = *strong.get_or_insert_with(|| strong_sum(window));
            if self.sig.blocks[idx as usize].strong == s {
                if prefer == Some(u64::from(idx)) {
                    return Some(u64::from(idx));
                }
                found.get_or_insert(u64::from(idx));
            }
        }
        found
    }
}

/// Accumulates ops, merging consecutive block copies.
struct Emitter<'e> {
    pending: Option<(u64, u32)>,
    emit: &'e mut dyn FnMut(Op) -> io::Result<()>,
}

impl Emitter<'_> {
    fn copy(&mut self, index: u64) -> io::Result<()> {
        if let Some((start, count)) = &mut self.pending
            && *start + u64::from(*count) == index
            && *count < u32::MAX
        {
            *count += 1;
            return Ok(());
        }
        self.flush()?;
        self.pending = Some((index, 1));
        Ok(())
    }

    fn literal(&mut self, data: &[u8]) -> io::Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        self.flush()?;
        for chunk in data.chunks(LITERAL_MAX) {
            (self.emit)(Op::Literal(chunk.to_vec()))?;
        }
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        if let Some((index, count)) = self.pending.take() {
            (self.emit)(Op::Copy { index, count })?;
        }
        Ok(())
    }
}

/// Streams `src` against the receiver's signature, calling `emit` for every
/// op, and returns the BLAKE3 of everything read from `src`.
///
/// With an empty signature the whole source goes as literal data.
pub fn generate<R: Read>(
    mut src: R,
    sig: &Signature,
    emit: &mut dyn FnMut(Op) -> io::Result<()>,
) -> Result<Hash, DeltaError> {
    let index = Index::new(sig)?;
    let bs = index.bs;
    let mut hasher = blake3::Hasher::new();
    let mut out = Emitter {
        pending: None,
        emit,
    };
    let chunk = (bs * 4).max(128 * 1024);
    let mut buf: Vec<u8> = Vec::with_capacity(chunk + bs + LITERAL_MAX);
    let mut eof = false;
    let mut lit = 0usize; // start of pending literal data in buf
    let mut pos = 0usize; // start of the current window
    let mut roll: Option<Rolling> = None;
    let mut last_match: Option<u64> = None;

    // Makes sure buf holds `need` bytes from `pos` unless EOF.
    let fill = |buf: &mut Vec<u8>,
                eof: &mut bool,
                hasher: &mut blake3::Hasher,
                want_end: usize,
                src: &mut R|
     -> io::Result<()> {
        while !*eof && buf.len() < want_end {
            let old = buf.len();
            buf.resize(old + chunk, 0);
            let n = loop {
                match src.read(&mut buf[old..]) {
                    Ok(n) => break n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        buf.truncate(old);
                        return Err(e);
                    }
                }
            };
            buf.truncate(old + n);
            hasher.update(&buf[old..old + n]);
            if n == 0 {
                *eof = true;
            }
        }
        Ok(())
    };

    if index.sorted.is_empty() && index.short_last.is_none() {
        // Whole file as literal data: each chunk is read into a fresh
        // buffer that becomes the op (no zero-filling, no copy).
        loop {
            let mut block = Vec::with_capacity(64 * 1024);
            let n = (&mut src)
                .take(LITERAL_MAX as u64)
                .read_to_end(&mut block)?;
            if n == 0 {
                break;
            }
            hasher.update(&block);
            (out.emit)(Op::Literal(block))?;
            if n < LITERAL_MAX {
                break;
            }
        }
        return Ok(*hasher.finalize().as_bytes());
    }

    loop {
        // Keep memory bounded: drop what was already emitted.
        if lit > LITERAL_MAX {
            buf.drain(..lit);
            pos -= lit;
            lit = 0;
        }
        fill(&mut buf, &mut eof, &mut hasher, pos + bs, &mut src)?;
        if buf.len() - pos < bs {
            // Tail: only the short last block can still match.
            let rest = buf.len() - pos;
            if let Some(short) = index.short_last
                && rest >= short
            {
                let at = buf.len() - short;
                let tail = &buf[at..];
                let last = index.sig.blocks.len() - 1;
                let b = index.sig.blocks[last];
                if weak_sum(tail) == b.weak && strong_sum(tail) == b.strong {
                    out.literal(&buf[lit..at])?;
                    out.copy(last as u64)?;
                    out.flush()?;
                    return Ok(*hasher.finalize().as_bytes());
                }
            }
            out.literal(&buf[lit..])?;
            out.flush()?;
            return Ok(*hasher.finalize().as_bytes());
        }
        let window = &buf[pos..pos + bs];
        let r = *roll.get_or_insert_with(|| Rolling::new(window));
        let weak = r.digest();
        if index.maybe(weak)
            && let Some(idx) = index.find(weak, window, last_match.map(|m| m + 1))
        {
            out.literal(&buf[lit..pos])?;
            out.copy(idx)?;
            last_match = Some(idx);
            pos += bs;
            lit = pos;
            roll = None;
            continue;
        }
        // No match: slide by one byte.
        if pos - lit + 1 >= LITERAL_MAX {
            out.literal(&buf[lit..=pos])?;
            lit = pos + 1;
        }
        if buf.len() > pos + bs {
            let (o, i) = (buf[pos], buf[pos + bs]);
            if let Some(r) = roll.as_mut() {
                r.roll(o, i);
            }
        } else {
            // Need more data to roll; recompute after the next fill.
            roll = None;
            let next_end = pos + 1 + bs;
            fill(&mut buf, &mut eof, &mut hasher, next_end, &mut src)?;
            if buf.len() >= next_end {
                roll = Some(Rolling::new(&buf[pos + 1..next_end]));
            }
        }
        pos += 1;
    }
}

/// Random access to the receiver's old copy.
pub trait Base {
    /// Length in bytes.
    fn len(&self) -> u64;
    /// Whether it is empty.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Reads exactly `buf.len()` bytes at `offset`.
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
}

impl Base for [u8] {
    fn len(&self) -> u64 {
        <[u8]>::len(self) as u64
    }
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let start = usize::try_from(offset).map_err(|_| io::ErrorKind::UnexpectedEof)?;
        let end = start
            .checked_add(buf.len())
            .ok_or(io::ErrorKind::UnexpectedEof)?;
        let src = self.get(start..end).ok_or(io::ErrorKind::UnexpectedEof)?;
        buf.copy_from_slice(src);
        Ok(())
    }
}

impl<T: Base + ?Sized> Base for &T {
    fn len(&self) -> u64 {
        (**self).len()
    }
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        (**self).read_exact_at(buf, offset)
    }
}

/// A file of a known length as a [`Base`].
#[derive(Debug)]
pub struct FileBase {
    /// The open file.
    pub file: std::fs::File,
    /// Its length when the signature was taken.
    pub len: u64,
}

impl Base for FileBase {
    fn len(&self) -> u64 {
        self.len
    }
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        std::os::unix::fs::FileExt::read_exact_at(&self.file, buf, offset)
    }
}

/// Rebuilds a file from a base and a stream of ops.
pub struct Applier<B: Base, W: Write> {
    base: Option<B>,
    block_size: u64,
    out: W,
    hasher: blake3::Hasher,
    written: u64,
    copied: u64,
    scratch: Vec<u8>,
}

impl<B: Base, W: Write> std::fmt::Debug for Applier<B, W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Applier")
            .field("block_size", &self.block_size)
            .field("written", &self.written)
            .finish_non_exhaustive()
    }
}

impl<B: Base, W: Write> Applier<B, W> {
    /// An applier writing to `out`; `base` with the `block_size` of the
    /// signature that was sent (None: the delta must be all literals).
    pub fn new(base: Option<B>, block_size: u32, out: W) -> Self {
        Self {
            base,
            block_size: u64::from(block_size.max(1)),
            out,
            hasher: blake3::Hasher::new(),
            written: 0,
            copied: 0,
            scratch: Vec::new(),
        }
    }

    /// Bytes written so far.
    #[must_use]
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Bytes of the output that came from the base.
    #[must_use]
    pub fn copied(&self) -> u64 {
        self.copied
    }

    /// Applies one op; out-of-range copies are errors, never panics.
    pub fn apply(&mut self, op: &Op) -> Result<(), DeltaError> {
        match op {
            Op::Literal(data) => {
                if data.len() > LITERAL_MAX * 4 {
                    return Err(DeltaError::Invalid(format!(
                        "literal of {} bytes is too large",
                        data.len()
                    )));
                }
                self.write(data)?;
            }
            Op::Copy { index, count } => {
                let len = self
                    .base
                    .as_ref()
                    .ok_or_else(|| DeltaError::Invalid("block copy without a base file".into()))?
                    .len();
                let start = index
                    .checked_mul(self.block_size)
                    .filter(|&s| s < len)
                    .ok_or_else(|| {
                        DeltaError::Invalid(format!("block {index} is outside the base file"))
                    })?;
                let end = index
                    .checked_add(u64::from(*count))
                    .and_then(|e| e.checked_mul(self.block_size))
                    .ok_or_else(|| DeltaError::Invalid("block range overflows".into()))?;
                if *count == 0 || end - self.block_size >= len {
                    return Err(DeltaError::Invalid(format!(
                        "blocks {index}+{count} are outside the base file"
                    )));
                }
                let end = end.min(len);
                let mut off = start;
                let mut scratch = std::mem::take(&mut self.scratch);
                while off < end {
                    let n = (end - off).min(256 * 1024) as usize;
                    scratch.resize(n, 0);
                    if let Some(base) = self.base.as_ref() {
                        base.read_exact_at(&mut scratch, off)?;
                    }
                    self.write(&scratch)?;
                    off += n as u64;
                }
                self.scratch = scratch;
                self.copied += end - start;
            }
        }
        Ok(())
    }

    fn write(&mut self, data: &[u8]) -> Result<(), DeltaError> {
        self.out.write_all(data)?;
        self.hasher.update(data);
        self.written += data.len() as u64;
        Ok(())
    }

    /// Checks the rebuilt file's BLAKE3 and returns the writer.
    pub fn finish(mut self, expected: &Hash) -> Result<W, DeltaError> {
        self.out.flush()?;
        if self.hasher.finalize().as_bytes() != expected {
            return Err(DeltaError::HashMismatch);
        }
        Ok(self.out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn roundtrip(base: &[u8], target: &[u8]) -> (Vec<u8>, Vec<Op>) {
        let sig = signature(base, base.len() as u64).unwrap();
        let mut ops = Vec::new();
        let hash = generate(target, &sig, &mut |op| {
            ops.push(op);
            Ok(())
        })
        .unwrap();
        assert_eq!(hash, *blake3::hash(target).as_bytes());
        let mut ap = Applier::new(Some(base), sig.block_size, Vec::new());
        for op in &ops {
            ap.apply(op).unwrap();
        }
        (ap.finish(&hash).unwrap(), ops)
    }

    #[test]
    fn rolling_matches_fresh() {
        let data: Vec<u8> = (0..5000u32).map(|i| (i * 7 + i / 3) as u8).collect();
        let n = 700;
        let mut r = Rolling::new(&data[..n]);
        for i in 1..(data.len() - n) {
            r.roll(data[i - 1], data[i + n - 1]);
            assert_eq!(r.digest(), weak_sum(&data[i..i + n]), "at {i}");
        }
    }

    #[test]
    fn one_byte_change_in_large_file_is_mostly_copied() {
        let base: Vec<u8> = (0..2_000_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        let mut target = base.clone();
        target[1_234_567] ^= 0xff;
        let (out, ops) = roundtrip(&base, &target);
        assert_eq!(out, target);
        let literal: usize = ops
            .iter()
            .map(|o| match o {
                Op::Literal(d) => d.len(),
                Op::Copy { .. } => 0,
            })
            .sum();
        assert!(
            literal <= block_size_for(base.len() as u64) as usize,
            "{literal}"
        );
    }

    #[test]
    fn applier_rejects_out_of_range() {
        let base = vec![1u8; 1000];
        let mut ap = Applier::new(Some(&base[..]), 700, Vec::new());
        assert!(ap.apply(&Op::Copy { index: 2, count: 1 }).is_err());
        assert!(
            ap.apply(&Op::Copy {
                index: u64::MAX,
                count: u32::MAX
            })
            .is_err()
        );
        assert!(ap.apply(&Op::Copy { index: 0, count: 0 }).is_err());
        assert!(ap.apply(&Op::Copy { index: 1, count: 2 }).is_err());
        ap.apply(&Op::Copy { index: 0, count: 2 }).unwrap();
        let mut none = Applier::new(None::<&[u8]>, 700, Vec::new());
        assert!(none.apply(&Op::Copy { index: 0, count: 1 }).is_err());
    }

    #[test]
    fn bad_signature_is_an_error() {
        let sig = Signature {
            block_size: 0,
            file_len: 10,
            blocks: vec![BlockSig {
                weak: 0,
                strong: [0; 16],
            }],
        };
        assert!(generate(&b"abc"[..], &sig, &mut |_| Ok(())).is_err());
        let sig = Signature {
            block_size: 700,
            file_len: 10_000,
            blocks: vec![],
        };
        // No blocks: whole literal, fine.
        assert!(generate(&b"abc"[..], &sig, &mut |_| Ok(())).is_ok());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn delta_roundtrip(
            base in proptest::collection::vec(any::<u8>(), 0..6000),
            edits in proptest::collection::vec((any::<u16>(), any::<u8>(), 0u8..3), 0..8),
            tail in proptest::collection::vec(any::<u8>(), 0..900),
        ) {
            let mut target = base.clone();
            for (at, byte, kind) in edits {
                let at = if target.is_empty() { 0 } else { usize::from(at) % target.len() };
                match kind {
                    0 if !target.is_empty() => target[at] = byte,
                    1 => target.insert(at, byte),
                    _ if !target.is_empty() => { target.remove(at); }
                    _ => target.push(byte),
                }
            }
            target.extend_from_slice(&tail);
            let (out, _) = roundtrip(&base, &target);
            prop_assert_eq!(out, target);
        }

        #[test]
        fn applier_never_panics(
            base in proptest::collection::vec(any::<u8>(), 0..3000),
            ops in proptest::collection::vec(
                prop_oneof![
                    (any::<u64>(), any::<u32>()).prop_map(|(index, count)| Op::Copy { index: index % 8, count: count % 8 }),
                    (any::<u64>(), any::<u32>()).prop_map(|(index, count)| Op::Copy { index, count }),
                    proptest::collection::vec(any::<u8>(), 0..100).prop_map(Op::Literal),
                ], 0..10),
            bs in 1u32..2000,
        ) {
            let mut ap = Applier::new(Some(&base[..]), bs, Vec::new());
            for op in &ops {
                let _ = ap.apply(op);
            }
            let _ = ap.finish(&[0; 32]);
        }
    }
}
