//! The logs of everything that runs in the test process (the in-process operator, kube, reqwest), captured
//! at trace level in both formats the operator offers (text and JSON), so leak checks can read them.
use std::io::Write;
use std::sync::{Mutex, OnceLock};

static CAPTURED: Mutex<Vec<u8>> = Mutex::new(Vec::new());
static INSTALLED: OnceLock<bool> = OnceLock::new();

#[derive(Clone, Copy)]
struct Capture;

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        CAPTURED
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Capture {
    type Writer = Capture;
    fn make_writer(&'a self) -> Capture {
        Capture
    }
}

/// Installs the capturing subscriber once per process (false when another one was installed first).
pub fn capture() -> bool {
    *INSTALLED.get_or_init(|| {
        use tracing_subscriber::layer::SubscriberExt;
        // Trace for the operator and the client libraries it drives; the servers of the test world (the
        // simulator, the stand-in, hyper, h2, axum) at info, or the buffer grows without telling more.
        let filter = tracing_subscriber::EnvFilter::new(
            "info,konnect_sa_operator=trace,konnect_sa_operator::sim=info,kube=trace,kube_client=trace,\
             kube_runtime=trace,reqwest=trace",
        );
        let subscriber = tracing_subscriber::registry()
            .with(filter)
            .with(tracing_subscriber::fmt::layer().with_ansi(false).with_writer(Capture))
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(true)
                    .with_writer(Capture),
            );
        tracing::subscriber::set_global_default(subscriber).is_ok()
    })
}

/// Everything captured so far (both formats, interleaved line by line).
pub fn captured() -> String {
    String::from_utf8_lossy(&CAPTURED.lock().unwrap_or_else(|e| e.into_inner())).into_owned()
}
