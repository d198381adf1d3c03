//! How the identity service sends mail (password-reset tokens): a [`Sender`] — SMTP through
//! lettre (`smtp://` with STARTTLS when the server offers it, `smtps://` for implicit TLS;
//! credentials in the URL), or an outbox directory of `.eml` files for development.

use std::path::PathBuf;

use futures::FutureExt;
use futures::future::BoxFuture;
use lettre::message::Mailbox;
use lettre::message::header::ContentType;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

/// One message to one recipient, plain text.
#[derive(Clone, Debug)]
pub struct Mail {
    pub to: String,
    pub subject: String,
    pub body: String,
}

#[derive(Debug, thiserror::Error)]
pub enum MailError {
    #[error("mail settings: {0}")]
    Settings(String),
    #[error("the message could not be built: {0}")]
    Message(String),
    #[error("the message could not be sent: {0}")]
    Send(String),
}

pub trait Sender: Send + Sync {
    fn send(&self, mail: Mail) -> BoxFuture<'_, Result<(), MailError>>;
}

/// Makes the sender `spec` names: `smtp://[user:pass@]host[:port][?tls=…]`,
/// `smtps://…`, or `file:DIR`; messages come from `from`.
pub fn sender(spec: &str, from: &str) -> Result<Box<dyn Sender>, MailError> {
    let from: Mailbox = from
        .parse()
        .map_err(|e| MailError::Settings(format!("sender address `{from}`: {e}")))?;
    if let Some(dir) = spec.strip_prefix("file:") {
        if dir.is_empty() {
            return Err(MailError::Settings("file: needs a directory".into()));
        }
        return Ok(Box::new(Outbox {
            dir: dir.into(),
            from,
        }));
    }
    if spec.starts_with("smtp://") || spec.starts_with("smtps://") {
        let transport = AsyncSmtpTransport::<Tokio1Executor>::from_url(spec)
            .map_err(|e| MailError::Settings(format!("{}: {e}", redact(spec))))?
            .build();
        return Ok(Box::new(Smtp { transport, from }));
    }
    Err(MailError::Settings(format!(
        "`{}`: a mail sender is smtp://HOST:PORT, smtps://HOST:PORT or file:DIR",
        redact(spec)
    )))
}

/// The URL without its password, for messages.
fn redact(spec: &str) -> String {
    match (spec.split_once("://"), spec.rfind('@')) {
        (Some((scheme, _)), Some(at)) => format!("{scheme}://…{}", &spec[at..]),
        _ => spec.to_owned(),
    }
}

fn message(from: &Mailbox, mail: &Mail) -> Result<Message, MailError> {
    let to: Mailbox = mail
        .to
        .parse()
        .map_err(|e| MailError::Message(format!("recipient: {e}")))?;
    Message::builder()
        .from(from.clone())
        .to(to)
        .subject(mail.subject.clone())
        .header(ContentType::TEXT_PLAIN)
        .body(mail.body.clone())
        .map_err(|e| MailError::Message(e.to_string()))
}

struct Smtp {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
}

impl Sender for Smtp {
    fn send(&self, mail: Mail) -> BoxFuture<'_, Result<(), MailError>> {
        async move {
            let message = message(&self.from, &mail)?;
            self.transport
                .send(message)
                .await
                .map(drop)
                .map_err(|e| MailError::Send(e.to_string()))
        }
        .boxed()
    }
}

/// Messages as `.eml` files (readable by their owner only), for development.
struct Outbox {
    dir: PathBuf,
    from: Mailbox,
}

impl Sender for Outbox {
    fn send(&self, mail: Mail) -> BoxFuture<'_, Result<(), MailError>> {
        async move {
            let formatted = message(&self.from, &mail)?.formatted();
            let path = self.dir.join(format!(
                "{}-{}.eml",
                super::unix_now_ms(),
                uuid::Uuid::new_v4().simple()
            ));
            let dir = self.dir.clone();
            tokio::task::spawn_blocking(move || {
                use std::io::Write;
                use std::os::unix::fs::OpenOptionsExt;
                std::fs::create_dir_all(&dir)?;
                let mut file = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&path)?;
                file.write_all(&formatted)
            })
            .await
            .map_err(|e| MailError::Send(e.to_string()))?
            .map_err(|e| MailError::Send(format!("the outbox: {e}")))
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The SMTP transport's pool lives on the Tokio runtime.
    #[tokio::test]
    async fn senders_are_named_by_url_and_passwords_stay_out_of_errors() {
        assert!(sender("file:/tmp/outbox", "Gateway <no-reply@example.org>").is_ok());
        assert!(sender("smtp://127.0.0.1:25", "no-reply@example.org").is_ok());
        assert!(sender("smtp://127.0.0.1:25", "not an address").is_err());
        let Err(error) = sender("ftp://user:secret@host", "no-reply@example.org") else {
            panic!("ftp is no mail sender");
        };
        assert!(!error.to_string().contains("secret"), "{error}");
    }
}
