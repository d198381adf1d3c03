//! A real SMTP server for tests: Python's `aiosmtpd` (installed by the test command) on a
//! free loopback port, printing each message it receives as one JSON line; killed when
//! dropped.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::time::Duration;

const SERVER: &str = r#"
import json, socket, sys, threading
from aiosmtpd.controller import Controller

class Handler:
    async def handle_DATA(self, server, session, envelope):
        print(json.dumps({
            "from": envelope.mail_from,
            "to": envelope.rcpt_tos,
            "data": envelope.content.decode("utf-8", "replace"),
        }), flush=True)
        return "250 OK"

probe = socket.socket()
probe.bind(("127.0.0.1", 0))
port = probe.getsockname()[1]
probe.close()
controller = Controller(Handler(), hostname="127.0.0.1", port=port)
controller.start()
print(json.dumps({"port": port}), flush=True)
threading.Event().wait()
"#;

/// One message as the server received it.
#[derive(Debug, serde::Deserialize)]
pub struct Mail {
    pub from: String,
    pub to: Vec<String>,
    /// The whole message: headers and body.
    pub data: String,
}

pub struct SmtpServer {
    pub port: u16,
    child: Child,
    messages: Receiver<Mail>,
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl SmtpServer {
    pub fn start() -> Self {
        let mut child = Command::new("python3")
            .args(["-c", SERVER])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python3 starts");
        let mut lines = BufReader::new(child.stdout.take().expect("piped")).lines();
        let first = lines
            .next()
            .and_then(Result::ok)
            .expect("aiosmtpd starts (python3 -m pip install aiosmtpd)");
        let port = serde_json::from_str::<serde_json::Value>(&first)
            .ok()
            .and_then(|v| v["port"].as_u64())
            .expect("the server's port") as u16;
        let (sender, messages) = channel();
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                if let Ok(mail) = serde_json::from_str::<Mail>(&line)
                    && sender.send(mail).is_err()
                {
                    return;
                }
            }
        });
        Self {
            port,
            child,
            messages,
        }
    }

    pub fn url(&self) -> String {
        format!("smtp://127.0.0.1:{}", self.port)
    }

    /// The next message received, waiting at most `timeout`.
    pub fn next(&self, timeout: Duration) -> Option<Mail> {
        self.messages.recv_timeout(timeout).ok()
    }
}
