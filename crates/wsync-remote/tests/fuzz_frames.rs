//! CI-scale fuzzing of the remote protocol (the long runs are
//! `cargo xtask fuzz`): the frame decoder, the `wsync serve` message
//! handler against a scratch root, and the delta applier. Inputs are valid
//! messages from the real encoders with byte mutations, plus raw bytes.
#![allow(clippy::unwrap_used)]

use std::io::Cursor;
use std::path::Path;
use std::time::Duration;

use proptest::prelude::*;
use wsync_remote::delta::{self, Applier, Op};
use wsync_remote::serve::{ServeOptions, serve};
use wsync_remote::wire::{self, Kind, Meta, Request, Response};

fn meta(size: u64) -> Meta {
    Meta {
        kind: Kind::File,
        size,
        mtime_ns: 0,
        exec: false,
        target: Vec::new(),
    }
}

/// Requests with hostile paths a peer could send.
fn hostile_path() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        Just(b"../escape".to_vec()),
        Just(b"/tmp/wsync-fuzz-abs".to_vec()),
        Just(b"d/../../escape".to_vec()),
        Just(b"link/inside".to_vec()),
        Just(b".wsync/state".to_vec()),
        Just(b"".to_vec()),
        Just(b"a\0b".to_vec()),
        Just(b"\xff\xfe".to_vec()),
        "[a-z/.]{0,12}".prop_map(String::into_bytes),
    ]
}

fn request() -> impl Strategy<Value = Request> {
    let p = hostile_path;
    prop_oneof![
        (p(), any::<bool>()).prop_map(|(path, exec)| Request::PutBegin {
            path,
            expect: None,
            block_size: 0,
            exec,
            mtime_ns: 0
        }),
        proptest::collection::vec(any::<u8>(), 0..64)
            .prop_map(|d| Request::PutOps(vec![Op::Literal(d)])),
        (any::<u64>(), any::<u32>())
            .prop_map(|(index, count)| Request::PutOps(vec![Op::Copy { index, count }])),
        any::<[u8; 32]>().prop_map(|hash| Request::PutEnd { hash }),
        p().prop_map(|path| Request::Mkdir { path, expect: None }),
        (p(), p()).prop_map(|(path, target)| Request::Symlink {
            path,
            target,
            expect: None
        }),
        (p(), any::<u64>()).prop_map(|(path, s)| Request::Delete {
            path,
            expect: meta(s)
        }),
        (p(), p()).prop_map(|(from, to)| Request::Rename {
            from,
            to,
            expect: meta(0)
        }),
        p().prop_map(|path| Request::Sigs { path }),
        p().prop_map(|path| Request::Hash { path }),
        "[a-z./]{0,10}".prop_map(|pair| Request::StateGet { pair }),
        (
            "[a-z./]{0,10}",
            proptest::collection::vec(any::<u8>(), 0..16)
        )
            .prop_map(|(pair, data)| Request::StatePut { pair, data }),
        Just(Request::Scan {
            excludes: vec!["*.tmp".into(), "[".into()],
            include_vcs: true
        }),
        Just(Request::Commit),
    ]
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// Serves `stream` (after the preamble) against a fresh root; asserts
/// nothing outside the root appeared or changed.
fn serve_stream(stream: &[u8]) {
    let base = tempfile::tempdir().unwrap();
    let root = base.path().join("root");
    let outside = base.path().join("outside");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("canary"), b"canary").unwrap();
    std::os::unix::fs::symlink(&outside, root.join("link")).unwrap();
    let mut input = Vec::new();
    wire::write_preamble(&mut input).unwrap();
    input.extend_from_slice(stream);
    let opts = ServeOptions {
        fsync: false,
        notice_delay: Duration::from_millis(1),
        // Sessions mode too: an `EndSession` then starts another
        // handshake on the rest of the input.
        sessions: stream.len() % 2 == 1,
    };
    let _ = serve(&root, Cursor::new(input), std::io::sink(), &opts);
    assert_eq!(names(base.path()), ["outside", "root"]);
    assert_eq!(names(&outside), ["canary"]);
    assert_eq!(std::fs::read(outside.join("canary")).unwrap(), b"canary");
    assert!(!Path::new("/tmp/wsync-fuzz-abs").exists());
}

fn mutate(mut bytes: Vec<u8>, edits: &[(usize, u8, u8)]) -> Vec<u8> {
    for &(pos, kind, val) in edits {
        let len = bytes.len();
        match kind % 4 {
            0 if len > 0 => bytes[pos % len] ^= val | 1,
            1 => bytes.insert(pos % (len + 1), val),
            2 if len > 0 => {
                bytes.remove(pos % len);
            }
            _ if len >= 4 => {
                let at = pos % (len - 3);
                bytes[at..at + 4].copy_from_slice(&[0xff, 0xff, 0xff, val]);
            }
            _ => bytes.push(val),
        }
    }
    bytes
}

fn edits() -> impl Strategy<Value = Vec<(usize, u8, u8)>> {
    proptest::collection::vec((any::<usize>(), any::<u8>(), any::<u8>()), 0..6)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn frame_decoder_never_panics_on_mutated_frames(
        reqs in proptest::collection::vec(request(), 1..6),
        edits in edits(),
    ) {
        let mut bytes = Vec::new();
        for r in &reqs {
            bytes.extend(wire::encode(r).unwrap());
        }
        // Unmutated: every message decodes back to itself.
        let mut rd = &bytes[..];
        for r in &reqs {
            let (back, _): (Request, usize) = wire::read_msg(&mut rd).unwrap();
            prop_assert_eq!(&back, r);
        }
        let bytes = mutate(bytes, &edits);
        let mut rd = &bytes[..];
        while wire::read_msg::<_, Request>(&mut rd).is_ok() {}
        let mut rd = &bytes[..];
        while wire::read_msg::<_, Response>(&mut rd).is_ok() {}
    }

    #[test]
    fn delta_applier_never_panics(
        block_size in prop_oneof![Just(0u32), Just(1), Just(700), any::<u32>()],
        with_base in any::<bool>(),
        ops in proptest::collection::vec(prop_oneof![
            (any::<u64>(), any::<u32>()).prop_map(|(index, count)| Op::Copy { index, count }),
            (0u64..40, 0u32..40).prop_map(|(index, count)| Op::Copy { index, count }),
            proptest::collection::vec(any::<u8>(), 0..100).prop_map(Op::Literal),
        ], 0..12),
    ) {
        let base: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        let mut ap = Applier::new(with_base.then_some(&base[..]), block_size, std::io::sink());
        for op in &ops {
            if ap.apply(op).is_err() {
                break;
            }
        }
        // No output hashes to all zeros: a wrong hash is always refused.
        prop_assert!(ap.finish(&[0; 32]).is_err());
    }

    #[test]
    fn delta_roundtrip_then_mutated_ops_are_errors_or_wrong_hash(
        cut in 0usize..9000,
        edits in edits(),
    ) {
        let base: Vec<u8> = (0..9000u32).map(|i| (i * 7 % 251) as u8).collect();
        let mut target = base.clone();
        target.splice(cut..cut, b"new bytes".iter().copied());
        let sig = delta::signature(&base[..], base.len() as u64).unwrap();
        let mut ops = Vec::new();
        let hash = delta::generate(&target[..], &sig, &mut |op| { ops.push(op); Ok(()) }).unwrap();
        let encoded = postcard::to_stdvec(&ops).unwrap();
        let mutated = mutate(encoded.clone(), &edits);
        if let Ok(ops2) = postcard::from_bytes::<Vec<Op>>(&mutated) {
            let mut ap = Applier::new(Some(&base[..]), sig.block_size, Vec::new());
            let applied = ops2.iter().try_for_each(|op| ap.apply(op));
            if applied.is_ok() {
                match ap.finish(&hash) {
                    // A delta that still verifies rebuilt exactly the target.
                    Ok(out) => prop_assert_eq!(out, target),
                    Err(_) => prop_assert!(mutated != encoded),
                }
            }
        }
    }
}

proptest! {
    // Each case starts a server on a fresh root: fewer cases.
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn serve_never_panics_or_escapes_on_hostile_requests(
        reqs in proptest::collection::vec(request(), 1..10),
        edits in edits(),
        reframe in any::<bool>(),
    ) {
        let mut stream = Vec::new();
        for r in &reqs {
            stream.extend(wire::encode(r).unwrap());
        }
        if reframe {
            serve_stream(&stream);
        } else {
            serve_stream(&mutate(stream, &edits));
        }
    }

    #[test]
    fn serve_never_panics_on_raw_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        serve_stream(&bytes);
    }
}
