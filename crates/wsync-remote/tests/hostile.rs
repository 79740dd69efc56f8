//! A hostile peer drives the protocol directly: everything that would
//! escape the root is refused and nothing outside it changes.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{BufReader, Write};
use std::path::Path;

use wsync_remote::delta::Op;
use wsync_remote::serve::{ServeOptions, serve};
use wsync_remote::wire::{
    self, Entry, ErrorKind, Kind, Meta, Preamble, Request, Response, read_msg, write_msg,
};
use wsync_remote::{Error, SyncOptions};

struct Client {
    r: BufReader<std::io::PipeReader>,
    w: std::io::PipeWriter,
}

impl Client {
    fn start(root: &Path) -> Self {
        let (c_read, s_write) = std::io::pipe().unwrap();
        let (s_read, c_write) = std::io::pipe().unwrap();
        let root = root.to_path_buf();
        std::thread::spawn(move || serve(&root, s_read, s_write, &ServeOptions::default()));
        let mut c = Self {
            r: BufReader::new(c_read),
            w: c_write,
        };
        wire::write_preamble(&mut c.w).unwrap();
        assert_eq!(
            wire::read_preamble(&mut c.r).unwrap(),
            Preamble::Version(wire::PROTOCOL_VERSION)
        );
        let (hello, _): (Response, usize) = read_msg(&mut c.r).unwrap();
        assert!(matches!(hello, Response::Hello { .. }));
        c
    }

    fn send(&mut self, req: &Request) {
        write_msg(&mut self.w, req).unwrap();
        self.w.flush().unwrap();
    }

    fn call(&mut self, req: &Request) -> Response {
        self.send(req);
        read_msg(&mut self.r).unwrap().0
    }

    fn put(&mut self, path: &[u8]) -> Response {
        self.send(&Request::PutBegin {
            path: path.to_vec(),
            expect: None,
            block_size: 0,
            exec: false,
            mtime_ns: 0,
        });
        self.send(&Request::PutOps(vec![Op::Literal(b"pwned".to_vec())]));
        self.send(&Request::PutEnd {
            hash: *blake3::hash(b"pwned").as_bytes(),
        });
        self.call(&Request::Commit)
    }
}

fn refused(r: &Response) -> bool {
    matches!(
        r,
        Response::Err {
            kind: ErrorKind::Unsafe | ErrorKind::NotFound | ErrorKind::Other,
            ..
        }
    )
}

fn file_meta() -> Meta {
    Meta {
        kind: Kind::File,
        size: 5,
        mtime_ns: 0,
        exec: false,
        target: Vec::new(),
    }
}

#[test]
fn server_refuses_escapes() {
    let root = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("secret"), b"top secret").unwrap();
    std::os::unix::fs::symlink(outside.path(), root.path().join("link")).unwrap();
    let abs = outside.path().join("abs");
    let mut c = Client::start(root.path());

    for bad in [
        b"../escape".to_vec(),
        b"a/../../escape".to_vec(),
        abs.as_os_str().as_encoded_bytes().to_vec(),
        b"link/evil".to_vec(),
        b"link/../x".to_vec(),
        b"with\0nul".to_vec(),
        b"".to_vec(),
    ] {
        let r = c.put(&bad);
        assert!(
            refused(&r),
            "put {:?}: {r:?}",
            String::from_utf8_lossy(&bad)
        );
    }
    let reqs = vec![
        Request::Mkdir {
            path: b"link/sub".to_vec(),
            expect: None,
        },
        Request::Symlink {
            path: b"../l".to_vec(),
            target: b"/etc".to_vec(),
            expect: None,
        },
        Request::Symlink {
            path: b"link/l".to_vec(),
            target: b"/etc".to_vec(),
            expect: None,
        },
        Request::Delete {
            path: b"link/secret".to_vec(),
            expect: file_meta(),
        },
        Request::Rename {
            from: b"link/secret".to_vec(),
            to: b"stolen".to_vec(),
            expect: file_meta(),
        },
        Request::SetMeta {
            path: b"link/secret".to_vec(),
            expect: file_meta(),
            exec: true,
            mtime_ns: 0,
        },
        Request::Hash {
            path: b"link/secret".to_vec(),
        },
        Request::Hash {
            path: b"link".to_vec(),
        },
        Request::Sigs {
            path: b"link/secret".to_vec(),
        },
        Request::StateGet {
            pair: "../../etc".into(),
        },
        Request::StatePut {
            pair: "../x".into(),
            data: vec![1],
        },
    ];
    for req in &reqs {
        let r = c.call(req);
        assert!(refused(&r), "{req:?}: {r:?}");
    }
    // Reading through the link is refused too (no data comes back).
    c.send(&Request::Delta {
        path: b"link/secret".to_vec(),
        sig: Default::default(),
    });
    let (r, _): (Response, usize) = read_msg(&mut c.r).unwrap();
    assert!(refused(&r), "{r:?}");

    // Outside is untouched; inside only the link remains.
    let names: Vec<_> = std::fs::read_dir(outside.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("secret")]);
    assert_eq!(
        std::fs::read(outside.path().join("secret")).unwrap(),
        b"top secret"
    );
    assert_eq!(common::snapshot(root.path()).len(), 1);
    // A legitimate request still works on the same connection.
    assert!(matches!(c.put(b"ok/file"), Response::Done(Some(_))));
}

#[test]
fn server_survives_garbage_frames() {
    let root = tempfile::tempdir().unwrap();
    let mut c = Client::start(root.path());
    c.w.write_all(&[0, 0, 0, 3, 0, 0xff, 0xff]).unwrap();
    c.w.flush().unwrap();
    // The server ends the connection instead of panicking.
    let r = read_msg::<_, Response>(&mut c.r);
    assert!(r.is_err(), "{r:?}");
}

/// A fake server that answers a scan with `entries`.
fn hostile_server(entries: Vec<Entry>) -> wsync_remote::conn::Conn {
    let (c_read, s_write) = std::io::pipe().unwrap();
    let (s_read, c_write) = std::io::pipe().unwrap();
    std::thread::spawn(move || {
        let mut w = s_write;
        let mut r = BufReader::new(s_read);
        wire::write_preamble(&mut w).unwrap();
        let _ = wire::read_preamble(&mut r);
        write_msg(
            &mut w,
            &Response::Hello {
                host: "evil".into(),
                root: b"/".to_vec(),
            },
        )
        .unwrap();
        loop {
            let Ok((req, _)) = read_msg::<_, Request>(&mut r) else {
                return;
            };
            let resp = match req {
                Request::StateGet { .. } => vec![Response::State(None)],
                Request::Scan { .. } => vec![
                    Response::ScanChunk(entries.clone()),
                    Response::ScanEnd { root_exists: true },
                ],
                Request::Delta { .. } => vec![
                    Response::DeltaOps(vec![Op::Literal(b"pwned".to_vec())]),
                    Response::DeltaEnd {
                        hash: *blake3::hash(b"pwned").as_bytes(),
                        meta: file_meta(),
                    },
                ],
                Request::Commit => vec![],
                _ => vec![Response::Done(None)],
            };
            for m in resp {
                if write_msg(&mut w, &m).is_err() {
                    return;
                }
            }
            let _ = w.flush();
        }
    });
    wsync_remote::conn::Conn::from_streams("evil", c_read, c_write).unwrap()
}

#[test]
fn client_refuses_hostile_scan() {
    let local = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    let entry = |p: &[u8], meta: Meta| Entry {
        path: p.to_vec(),
        meta,
    };
    // A path with `..` aborts the run.
    let conn = hostile_server(vec![entry(b"../evil", file_meta())]);
    let mut s = wsync_remote::Session::with_conn(local.path(), conn, "evil");
    let err = s.pull(&SyncOptions::default()).unwrap_err();
    assert!(matches!(err, Error::UnsafePath { .. }), "{err}");

    // A symlink to outside plus a file "through" it: the link is created
    // (as a link), the file is refused; state files are never written.
    let link = Meta {
        kind: Kind::Symlink,
        size: 0,
        mtime_ns: 0,
        exec: false,
        target: outside.path().as_os_str().as_encoded_bytes().to_vec(),
    };
    let conn = hostile_server(vec![
        entry(b".wsync/remote/0000.state", file_meta()),
        entry(b"a", link),
        entry(b"a/evil", file_meta()),
    ]);
    let mut s = wsync_remote::Session::with_conn(local.path(), conn, "evil");
    let r = s.pull(&SyncOptions::default()).unwrap();
    assert_eq!(r.errors.len(), 1, "{r:?}");
    assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);
    assert!(!local.path().join(".wsync").exists());
}

/// The preamble of a wsync speaking protocol version `v`.
fn preamble(v: u32) -> Vec<u8> {
    let mut p = wire::MAGIC.to_vec();
    p.extend_from_slice(&v.to_be_bytes());
    p
}

#[test]
fn incompatible_protocol_versions_are_named_on_both_sides() {
    let ours = wire::PROTOCOL_VERSION;
    let theirs = ours + 41;
    // The client meets a newer server.
    let Err(err) = wsync_remote::conn::Conn::from_streams(
        "peer",
        std::io::Cursor::new(preamble(theirs)),
        std::io::sink(),
    ) else {
        panic!("a version mismatch must be refused");
    };
    assert!(
        matches!(err, Error::Version { peer, ours: o } if peer == theirs && o == ours),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(text.contains(&format!("protocol {theirs}")), "{text}");
    assert!(text.contains("same wsync version"), "{text}");

    // The server meets a newer client: it answers nothing beyond its own
    // preamble and touches nothing in its root.
    let dir = tempfile::tempdir().unwrap();
    let mut answer = Vec::new();
    let err = serve(
        dir.path(),
        std::io::Cursor::new(preamble(theirs)),
        &mut answer,
        &ServeOptions::default(),
    )
    .expect_err("a version mismatch is refused");
    assert!(matches!(err, Error::Version { .. }), "{err:?}");
    assert_eq!(answer, preamble(ours), "only our preamble was sent");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}
