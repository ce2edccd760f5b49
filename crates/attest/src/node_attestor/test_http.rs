//! One-shot HTTP servers on 127.0.0.1 for the attestors' unit tests.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::mpsc;

/// Serves `answers` in turn on 127.0.0.1, one connection each; sends each request's head.
pub(crate) fn serve(answers: Vec<String>) -> (String, mpsc::Receiver<String>) {
    serve_with(|_| answers)
}

/// As [`serve`], with the answers made knowing the server's address (`127.0.0.1:<port>`).
pub(crate) fn serve_with(
    answers: impl FnOnce(&str) -> Vec<String>,
) -> (String, mpsc::Receiver<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let answers = answers(&addr);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for answer in answers {
            let (mut conn, _) = listener.accept().unwrap();
            let mut reader = BufReader::new(conn.try_clone().unwrap());
            let mut head = String::new();
            for _ in 0..100 {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap() == 0 || line == "\r\n" {
                    break;
                }
                head.push_str(&line);
            }
            let _ = tx.send(head);
            conn.write_all(answer.as_bytes()).unwrap();
            let _ = conn.read(&mut [0u8; 1]);
        }
    });
    (addr, rx)
}

/// An HTTP/1.1 answer with `extra` header lines (each ending in CRLF) and `body`.
pub(crate) fn http_answer(status: &str, extra: &str, body: &str) -> String {
    format!(
        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n{extra}\r\n{body}",
        body.len()
    )
}
