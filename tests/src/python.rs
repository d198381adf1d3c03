//! Upstreams written with Python's standard library — servers nobody here wrote, that
//! decode and normalise requests the way common servers do: `http.server` serving a
//! directory (percent-decoding, `normpath`), and a `wsgiref` application that merges
//! repeated slashes and shows what a WSGI application sees (its `environ`). Each listens on
//! a port of its own choosing and is killed when dropped.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};

/// `http.server` serving `sys.argv[1]`.
const FILE_SERVER: &str = r#"
import functools, http.server, sys
handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=sys.argv[1])
handler.func.log_message = lambda *args: None
server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
print(server.server_address[1], flush=True)
server.serve_forever()
"#;

/// A WSGI application: `/admin/…` (after decoding and merging slashes, as frameworks do)
/// answers `admin secret`, everything else `public`; the JSON body carries the path it
/// understood and every `HTTP_*` variable.
const WSGI_APP: &str = r#"
import json, posixpath, re, sys
from wsgiref.simple_server import make_server, WSGIRequestHandler

def app(environ, start_response):
    path = posixpath.normpath(re.sub("/+", "/", environ["PATH_INFO"]))
    area = "admin secret" if path == "/admin" or path.startswith("/admin/") else "public"
    body = json.dumps({
        "area": area,
        "path": path,
        "raw_path": environ["PATH_INFO"],
        "environ": {k: v for k, v in environ.items() if k.startswith("HTTP_")},
    }).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]

class Quiet(WSGIRequestHandler):
    def log_message(self, *args):
        pass

server = make_server("127.0.0.1", 0, app, handler_class=Quiet)
print(server.server_port, flush=True)
server.serve_forever()
"#;

pub struct PythonUpstream {
    pub addr: SocketAddr,
    child: std::process::Child,
}

impl PythonUpstream {
    /// `python3 -m http.server`'s handler serving `dir`.
    pub fn file_server(dir: &Path) -> Self {
        Self::start(FILE_SERVER, &[dir.as_os_str()])
    }

    /// The `wsgiref` application above.
    pub fn wsgi() -> Self {
        Self::start(WSGI_APP, &[])
    }

    fn start(script: &str, args: &[&std::ffi::OsStr]) -> Self {
        let mut child = Command::new("python3")
            .arg("-c")
            .arg(script)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 runs");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("piped stdout"))
            .read_line(&mut line)
            .expect("the server prints its port");
        let port: u16 = line
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("a port, not {line:?}"));
        Self {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            child,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for PythonUpstream {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
