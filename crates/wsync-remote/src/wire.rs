//! The `wsync serve` wire protocol: a preamble (magic + protocol version)
//! in each direction, then length-prefixed `postcard` frames.
//!
//! A frame is `u32` big-endian length (flags byte + payload), one flags
//! byte (bit 0: payload is zstd-compressed) and the payload. Frames larger
//! than [`MAX_FRAME`] and payloads that inflate past [`MAX_INFLATED`] are
//! errors. The decoder never panics, whatever the input.

use std::io::{self, Read, Write};

use serde::{Deserialize, Serialize};

use crate::delta::{Hash, Op, Signature};

/// Bytes every peer writes first.
pub const MAGIC: &[u8; 6] = b"WSYNC\0";
/// The protocol version this build speaks.
pub const PROTOCOL_VERSION: u32 = 1;
/// Largest frame on the wire.
pub const MAX_FRAME: usize = 16 * 1024 * 1024;
/// Largest decompressed payload.
pub const MAX_INFLATED: usize = 32 * 1024 * 1024;
/// Payloads at least this large are zstd-compressed.
const COMPRESS_MIN: usize = 256;
const FLAG_ZSTD: u8 = 1;

/// Why a frame could not be read or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// The stream ended cleanly before a frame started.
    #[error("the connection was closed")]
    Closed,
    /// Reading or writing failed (including a truncated frame).
    #[error("connection I/O: {0}")]
    Io(#[from] io::Error),
    /// A malformed frame.
    #[error("malformed frame: {0}")]
    Malformed(String),
}

/// The kind of a file-system entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Kind {
    /// A regular file.
    File,
    /// A folder.
    Dir,
    /// A symbolic link (never followed).
    Symlink,
}

/// What is known about an entry without reading it: compared against the
/// last synced state and re-checked before anything overwrites it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    /// File, folder or symlink.
    pub kind: Kind,
    /// Size in bytes (0 for folders).
    pub size: u64,
    /// Modification time in nanoseconds since the epoch (0 for folders).
    pub mtime_ns: i64,
    /// Owner-executable (files only).
    pub exec: bool,
    /// Link target bytes (symlinks only).
    pub target: Vec<u8>,
}

/// One scanned entry: a root-relative path (bytes, `/`-separated) and its meta.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Root-relative path bytes.
    pub path: Vec<u8>,
    /// What is there.
    pub meta: Meta,
}

/// A request from the driving side to `wsync serve`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Request {
    /// List the tree. Answer: `ScanChunk`* then `ScanEnd`.
    Scan {
        /// Extra gitignore-style exclude patterns.
        excludes: Vec<String>,
        /// Do not exclude VCS folders.
        include_vcs: bool,
    },
    /// List only these paths (and the subtrees of folders among them).
    /// Answer: `ScanChunk`* then `ScanEnd`.
    ScanPaths {
        /// Root-relative paths.
        paths: Vec<Vec<u8>>,
        /// Extra gitignore-style exclude patterns.
        excludes: Vec<String>,
        /// Do not exclude VCS folders.
        include_vcs: bool,
    },
    /// Block signature of a file. Answer: `Sigs`.
    Sigs {
        /// The file.
        path: Vec<u8>,
    },
    /// Stream a file as a delta against `sig`. Answer: `DeltaOps`* then `DeltaEnd`.
    Delta {
        /// The file.
        path: Vec<u8>,
        /// The requester's block signature (empty: whole file).
        sig: Signature,
    },
    /// Start writing a file; followed by `PutOps`* and `PutEnd`.
    PutBegin {
        /// The file.
        path: Vec<u8>,
        /// What must be there now (None: nothing).
        expect: Option<Meta>,
        /// Block size of the signature the ops refer to (0: no base).
        block_size: u32,
        /// Exec bit to set.
        exec: bool,
        /// Modification time to set.
        mtime_ns: i64,
    },
    /// Ops of the current put.
    PutOps(Vec<Op>),
    /// End of the current put. Answer: `Done`, once committed (after a
    /// `Commit`, before the answer to any other request, or when many
    /// puts are pending).
    PutEnd {
        /// BLAKE3 of the complete new content.
        hash: Hash,
    },
    /// Create a folder (parents too). Answer: `Done`.
    Mkdir {
        /// The folder.
        path: Vec<u8>,
        /// What must be there now.
        expect: Option<Meta>,
    },
    /// Create or replace a symlink. Answer: `Done`.
    Symlink {
        /// The link.
        path: Vec<u8>,
        /// Its target.
        target: Vec<u8>,
        /// What must be there now.
        expect: Option<Meta>,
    },
    /// Delete a file, symlink or empty folder. Answer: `Done`.
    Delete {
        /// The entry.
        path: Vec<u8>,
        /// What must be there now.
        expect: Meta,
    },
    /// Rename (for conflict copies; `to` must not exist). Answer: `Done`.
    Rename {
        /// From.
        from: Vec<u8>,
        /// To.
        to: Vec<u8>,
        /// What must be at `from` now.
        expect: Meta,
    },
    /// Set exec bit and mtime of a file. Answer: `Done`.
    SetMeta {
        /// The file.
        path: Vec<u8>,
        /// What must be there now.
        expect: Meta,
        /// Exec bit.
        exec: bool,
        /// Modification time.
        mtime_ns: i64,
    },
    /// BLAKE3 of a file. Answer: `Hash`.
    Hash {
        /// The file.
        path: Vec<u8>,
    },
    /// Read the stored sync state of a peer pair. Answer: `State`.
    StateGet {
        /// Pair id (hex).
        pair: String,
    },
    /// Store the sync state of a peer pair. Answer: `Done`.
    StatePut {
        /// Pair id (hex).
        pair: String,
        /// Opaque state bytes.
        #[serde(with = "crate::delta::bytes")]
        data: Vec<u8>,
    },
    /// Stream change notices until the connection closes (watch mode).
    Watch,
    /// Make pending puts durable and answer them.
    Commit,
    /// The client is done: answered with `SessionEnd` (a server kept alive
    /// by a session agent then waits for the next client's preamble).
    EndSession,
}

/// Category of an error answered by the peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The path was refused (absolute, `..`, NUL, through a symlink, …).
    Unsafe,
    /// The destination changed since it was scanned.
    Changed,
    /// The rebuilt content did not match the sender's hash.
    HashMismatch,
    /// The entry does not exist.
    NotFound,
    /// Any other I/O failure or malformed request.
    Other,
}

/// An answer from `wsync serve`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Response {
    /// Sent once after the preamble.
    Hello {
        /// The serving host's name (for conflict copy names).
        host: String,
        /// The root as the server resolved it.
        root: Vec<u8>,
    },
    /// Part of a scan.
    ScanChunk(Vec<Entry>),
    /// End of a scan.
    ScanEnd {
        /// Whether the root exists.
        root_exists: bool,
    },
    /// A block signature.
    Sigs(Signature),
    /// Part of a delta.
    DeltaOps(Vec<Op>),
    /// End of a delta.
    DeltaEnd {
        /// BLAKE3 of the source.
        hash: Hash,
        /// The source's meta as read.
        meta: Meta,
    },
    /// Success; the new meta when something was written.
    Done(Option<Meta>),
    /// A BLAKE3.
    Hash(Hash),
    /// Stored state bytes, if any.
    State(#[serde(with = "crate::delta::bytes::opt")] Option<Vec<u8>>),
    /// Paths that changed (watch mode; empty: rescan everything).
    Notice(Vec<Vec<u8>>),
    /// A refused or failed request.
    Err {
        /// Category.
        kind: ErrorKind,
        /// The path concerned.
        path: Vec<u8>,
        /// Human message.
        message: String,
    },
    /// The answer to `EndSession`: nothing of this session follows.
    SessionEnd,
}

/// Writes the preamble.
pub fn write_preamble<W: Write>(w: &mut W) -> io::Result<()> {
    w.write_all(MAGIC)?;
    w.write_all(&PROTOCOL_VERSION.to_be_bytes())?;
    w.flush()
}

/// What the peer's preamble said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Preamble {
    /// A wsync peer speaking this protocol version.
    Version(u32),
    /// Not a wsync peer (these were the first bytes, or EOF).
    NotWsync,
}

/// Reads the peer's preamble.
pub fn read_preamble<R: Read>(r: &mut R) -> io::Result<Preamble> {
    let mut buf = [0u8; 10];
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => return Ok(Preamble::NotWsync),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    if &buf[..6] != MAGIC {
        return Ok(Preamble::NotWsync);
    }
    Ok(Preamble::Version(u32::from_be_bytes([
        buf[6], buf[7], buf[8], buf[9],
    ])))
}

/// Encodes a message into one frame (header included).
pub fn encode<T: Serialize>(msg: &T) -> Result<Vec<u8>, FrameError> {
    let raw = postcard::to_stdvec(msg).map_err(|e| FrameError::Malformed(e.to_string()))?;
    let (flags, payload) = if raw.len() >= COMPRESS_MIN && looks_compressible(&raw) {
        match compress(&raw) {
            Ok(c) if c.len() < raw.len() => (FLAG_ZSTD, c),
            _ => (0, raw),
        }
    } else {
        (0, raw)
    };
    if payload.len() + 1 > MAX_FRAME {
        return Err(FrameError::Malformed(format!(
            "frame of {} bytes exceeds the {MAX_FRAME}-byte limit",
            payload.len() + 1
        )));
    }
    let mut out = Vec::with_capacity(payload.len() + 5);
    out.extend_from_slice(&((payload.len() + 1) as u32).to_be_bytes());
    out.push(flags);
    out.extend_from_slice(&payload);
    Ok(out)
}

/// For large payloads, compresses a sample first: random or already
/// compressed data (media, archives) is sent as is instead of burning CPU.
fn looks_compressible(raw: &[u8]) -> bool {
    const SAMPLE: usize = 16 * 1024;
    if raw.len() < 4 * SAMPLE {
        return true;
    }
    let mid = raw.len() / 2;
    let sample = &raw[mid - SAMPLE / 2..mid + SAMPLE / 2];
    compress(sample).is_ok_and(|c| c.len() < SAMPLE * 15 / 16)
}

thread_local! {
    /// One zstd context per thread, reused for every frame.
    static CCTX: std::cell::RefCell<Option<zstd::bulk::Compressor<'static>>> =
        const { std::cell::RefCell::new(None) };
    static DCTX: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> =
        const { std::cell::RefCell::new(None) };
}

/// zstd level 1, with this thread's reused context.
fn compress(raw: &[u8]) -> io::Result<Vec<u8>> {
    CCTX.with(|c| {
        let mut c = c.borrow_mut();
        if c.is_none() {
            *c = Some(zstd::bulk::Compressor::new(1)?);
        }
        match c.as_mut() {
            Some(c) => c.compress(raw),
            None => Err(io::Error::other("no zstd context")),
        }
    })
}

/// Inflates a zstd payload into a buffer of the size its frame header
/// states (at most [`MAX_INFLATED`]), with this thread's reused context.
fn decompress(payload: &[u8]) -> Result<Vec<u8>, FrameError> {
    let bad = |e: &dyn std::fmt::Display| FrameError::Malformed(format!("bad zstd payload: {e}"));
    let size = match zstd::zstd_safe::get_frame_content_size(payload) {
        Ok(Some(n)) if n <= MAX_INFLATED as u64 => n as usize,
        Ok(Some(n)) => {
            return Err(FrameError::Malformed(format!(
                "payload inflates to {n} bytes, past the {MAX_INFLATED}-byte limit"
            )));
        }
        Ok(None) => MAX_INFLATED,
        Err(e) => return Err(bad(&format!("{e:?}"))),
    };
    DCTX.with(|d| {
        let mut d = d.borrow_mut();
        if d.is_none() {
            *d = Some(zstd::bulk::Decompressor::new().map_err(|e| bad(&e))?);
        }
        let Some(d) = d.as_mut() else {
            return Err(bad(&"no zstd context"));
        };
        let mut out = Vec::with_capacity(size);
        d.decompress_to_buffer(payload, &mut out)
            .map_err(|e| bad(&e))?;
        Ok(out)
    })
}

/// Writes one message as a frame; returns the bytes written.
pub fn write_msg<W: Write, T: Serialize>(w: &mut W, msg: &T) -> Result<usize, FrameError> {
    let frame = encode(msg)?;
    w.write_all(&frame)?;
    Ok(frame.len())
}

/// Reads one frame and decodes it; returns the message and its wire size.
pub fn read_msg<R: Read, T: for<'de> Deserialize<'de>>(
    r: &mut R,
) -> Result<(T, usize), FrameError> {
    let frame = read_frame(r)?;
    let msg = decode_body(frame.get(4..).unwrap_or_default())?;
    Ok((msg, frame.len()))
}

/// Reads one whole frame (length header included) without decoding it,
/// checking only its length: for relaying frames unchanged.
pub fn read_frame<R: Read>(r: &mut R) -> Result<Vec<u8>, FrameError> {
    let mut head = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        match r.read(&mut head[got..]) {
            Ok(0) if got == 0 => return Err(FrameError::Closed),
            Ok(0) => return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into()),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    let len = u32::from_be_bytes(head) as usize;
    if len == 0 || len > MAX_FRAME {
        return Err(FrameError::Malformed(format!(
            "frame length {len} is outside 1..={MAX_FRAME}"
        )));
    }
    let mut frame = vec![0u8; len + 4];
    frame[..4].copy_from_slice(&head);
    r.read_exact(&mut frame[4..])?;
    Ok(frame)
}

/// Whether a whole frame (as [`read_frame`] returns it) is a small,
/// uncompressed message equal to `msg` (how a relay spots session ends
/// without decoding the bulk of the traffic).
pub fn frame_is<T: Serialize>(frame: &[u8], msg: &T) -> bool {
    frame.len() <= 64 && encode(msg).is_ok_and(|f| f == frame)
}

/// Decodes a frame body (flags byte + payload).
pub fn decode_body<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, FrameError> {
    let Some((&flags, payload)) = body.split_first() else {
        return Err(FrameError::Malformed("empty frame".into()));
    };
    let inflated;
    let raw = match flags {
        0 => payload,
        FLAG_ZSTD => {
            inflated = decompress(payload)?;
            &inflated[..]
        }
        other => {
            return Err(FrameError::Malformed(format!(
                "unknown frame flags {other:#x}"
            )));
        }
    };
    postcard::from_bytes(raw)
        .map_err(|e| FrameError::Malformed(format!("undecodable message: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn roundtrip_and_compression() {
        let msg = Request::PutOps(vec![
            Op::Literal(vec![b'a'; 10_000]),
            Op::Copy { index: 3, count: 2 },
        ]);
        let frame = encode(&msg).unwrap();
        assert!(frame.len() < 1000, "compressed: {}", frame.len());
        let (back, n): (Request, usize) = read_msg(&mut &frame[..]).unwrap();
        assert_eq!(back, msg);
        assert_eq!(n, frame.len());
    }

    /// Byte vectors go as one byte string: the same bytes on the wire as
    /// the plain `Vec<u8>` (a sequence of `u8`) of earlier builds.
    #[test]
    fn byte_fields_keep_the_wire_format() {
        #[derive(Serialize, Deserialize, PartialEq, Debug)]
        enum OldOp {
            Copy { index: u64, count: u32 },
            Literal(Vec<u8>),
        }
        #[derive(Serialize, Deserialize, PartialEq, Debug)]
        enum OldResponse {
            Hello { host: String, root: Vec<u8> },
            ScanChunk(Vec<Entry>),
            ScanEnd { root_exists: bool },
            Sigs(Signature),
            DeltaOps(Vec<OldOp>),
            DeltaEnd { hash: Hash, meta: Meta },
            Done(Option<Meta>),
            Hash(Hash),
            State(Option<Vec<u8>>),
        }
        let data: Vec<u8> = (0..=255u8).cycle().take(1000).collect();
        let new = postcard::to_stdvec(&Op::Literal(data.clone())).unwrap();
        let old = postcard::to_stdvec(&OldOp::Literal(data.clone())).unwrap();
        assert_eq!(new, old);
        let back: Op = postcard::from_bytes(&old).unwrap();
        assert_eq!(back, Op::Literal(data.clone()));
        for state in [None, Some(Vec::new()), Some(data.clone())] {
            let new = postcard::to_stdvec(&Response::State(state.clone())).unwrap();
            let old = postcard::to_stdvec(&OldResponse::State(state.clone())).unwrap();
            assert_eq!(new, old);
            let back: Response = postcard::from_bytes(&old).unwrap();
            assert_eq!(back, Response::State(state));
        }
    }

    #[test]
    fn oversized_and_truncated_frames_are_errors() {
        let mut big = (MAX_FRAME as u32 + 1).to_be_bytes().to_vec();
        big.push(0);
        assert!(matches!(
            read_msg::<_, Request>(&mut &big[..]),
            Err(FrameError::Malformed(_))
        ));
        assert!(matches!(
            read_msg::<_, Request>(&mut &[][..]),
            Err(FrameError::Closed)
        ));
        assert!(matches!(
            read_msg::<_, Request>(&mut &[0, 0, 0, 9, 0][..]),
            Err(FrameError::Io(_))
        ));
    }

    #[test]
    fn preamble() {
        let mut v = Vec::new();
        write_preamble(&mut v).unwrap();
        assert_eq!(
            read_preamble(&mut &v[..]).unwrap(),
            Preamble::Version(PROTOCOL_VERSION)
        );
        assert_eq!(
            read_preamble(&mut &b"bash: wsync: command not found\n"[..]).unwrap(),
            Preamble::NotWsync
        );
        assert_eq!(read_preamble(&mut &b""[..]).unwrap(), Preamble::NotWsync);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]
        #[test]
        fn decoder_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let mut r = &bytes[..];
            for _ in 0..8 {
                if read_msg::<_, Request>(&mut r).is_err() { break; }
            }
            let mut r = &bytes[..];
            for _ in 0..8 {
                if read_msg::<_, Response>(&mut r).is_err() { break; }
            }
        }

        #[test]
        fn decoder_never_panics_on_framed_garbage(
            flags in 0u8..3,
            payload in proptest::collection::vec(any::<u8>(), 0..512),
        ) {
            let mut frame = ((payload.len() + 1) as u32).to_be_bytes().to_vec();
            frame.push(flags);
            frame.extend_from_slice(&payload);
            let _ = read_msg::<_, Request>(&mut &frame[..]);
            let _ = read_msg::<_, Response>(&mut &frame[..]);
        }
    }
}
