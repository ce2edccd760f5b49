//! `ward-agent api watch`: follows the FetchX509SVID stream and prints every update in the
//! human format of `fetch x509`, as spire-agent's `api watch` (go-spiffe's
//! `WatchX509Context`) does: a failed stream is reported on stderr and opened again after a
//! linear backoff (1 s, 2 s, … up to 30 s, reset by every update); InvalidArgument ends the
//! watch; an interrupt (SIGINT) ends it with exit code 1.

use std::io::Write as _;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use ward_proto::spiffe::workload::X509svidRequest;

use super::client::{self, CallError, Endpoint};
use super::{go_text, x509};

/// The longest pause between two attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Watches until interrupted or refused with InvalidArgument.
pub async fn run(endpoint: &Endpoint) -> ExitCode {
    let mut last_update = Instant::now();
    let mut attempts_since_update: u32 = 0;
    let interrupt = tokio::signal::ctrl_c();
    tokio::pin!(interrupt);
    loop {
        let err = tokio::select! {
            err = follow(endpoint, &mut last_update, &mut attempts_since_update) => err,
            _ = &mut interrupt => {
                let text = go_text::status_error(tonic::Code::Cancelled, "context canceled");
                eprintln!("{text}");
                eprintln!("{text}");
                return ExitCode::from(1);
            }
        };
        eprintln!("{err}");
        if err.code() == tonic::Code::InvalidArgument {
            eprintln!("{err}");
            return ExitCode::from(1);
        }
        attempts_since_update += 1;
        let pause = Duration::from_secs(u64::from(attempts_since_update)).min(MAX_BACKOFF);
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            _ = &mut interrupt => {
                eprintln!("context canceled");
                return ExitCode::from(1);
            }
        }
    }
}

/// Opens the stream and prints its updates until it fails.
async fn follow(endpoint: &Endpoint, last_update: &mut Instant, attempts: &mut u32) -> CallError {
    let mut api = match client::connect(endpoint).await {
        Ok(api) => api,
        Err(e) => return e,
    };
    let mut stream = match api.fetch_x509svid(X509svidRequest {}).await {
        Ok(s) => s.into_inner(),
        Err(s) => return CallError::Status(s),
    };
    loop {
        let resp = match stream.message().await {
            Ok(Some(resp)) => resp,
            Ok(None) => return CallError::Eof,
            Err(s) => return CallError::Status(s),
        };
        *attempts = 0;
        match x509::parse_watch_response(&resp) {
            Ok(svids) => {
                let text = x509::render(&svids, last_update.elapsed());
                let mut stdout = std::io::stdout().lock();
                let _ = stdout.write_all(text.as_bytes());
                let _ = stdout.flush();
                *last_update = Instant::now();
            }
            Err(e) => eprintln!("{e}"),
        }
    }
}
