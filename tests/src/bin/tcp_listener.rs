//! A stand-in dev server for the end-to-end tests: listens on 127.0.0.1
//! (port 0, or the one given as the first argument), prints
//! `listening on PORT` and serves nothing until it is killed.
//!
//! It replaces `python3 -m http.server` so the tests need no interpreter.
#![allow(clippy::print_stdout)]

use std::io::Write as _;
use std::net::TcpListener;

fn main() -> std::io::Result<()> {
    let port: u16 = std::env::args()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    let listener = TcpListener::bind(("127.0.0.1", port))?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "listening on {}", listener.local_addr()?.port())?;
    out.flush()?;
    drop(out);
    // Accept and drop connections until killed.
    for stream in listener.incoming() {
        drop(stream);
    }
    Ok(())
}
