//! A PostgreSQL client speaking protocol 3.0 without TLS: startup, authentication (trust,
//! cleartext, MD5, SCRAM-SHA-256 without channel binding) and the simple query protocol.
//!
//! Passwords are used as given: SCRAM's SASLprep normalisation is left out, which only matters
//! for passwords with non-ASCII characters.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use md5::Md5;
use sha2::{Digest as _, Sha256};

use super::{text, value, Conn, Error, Reader, Result};

/// Protocol version 3.0, as the startup message states it.
const PROTOCOL_3_0: u32 = 3 << 16;

/// SQLSTATE class 28, "invalid authorization specification": a wrong password, a role that may
/// not log in, no `pg_hba.conf` entry.
const AUTH_CLASS: &str = "28";

/// A connection that completed startup and is ready for queries.
#[derive(Debug)]
pub struct Client {
    conn: Conn,
}

pub use super::Row;

impl Client {
    /// Connects to `database` on `host:port` as `user`, authenticating with `password` by
    /// whichever method the server asks for.
    pub async fn connect(
        host: &str,
        port: u16,
        user: &str,
        password: &str,
        database: &str,
    ) -> Result<Client> {
        let mut client = Client {
            conn: Conn::connect(host, port).await?,
        };
        client.startup(user, database).await?;
        client.authenticate(user, password).await?;
        client.until_ready().await?;
        Ok(client)
    }

    /// Runs `sql` with the simple query protocol (several statements separated by `;` are
    /// allowed) and returns the rows of every result, as text.
    pub async fn simple_query(&mut self, sql: &str) -> Result<Vec<Row>> {
        self.send(b'Q', &cstring(sql)?).await?;
        let mut rows = Vec::new();
        let mut failed = None;
        loop {
            let (tag, body) = self.receive().await?;
            match tag {
                b'D' => rows.push(data_row(&body)?),
                b'E' => failed = Some(server_error(&body)),
                b'Z' => return failed.map_or(Ok(rows), Err),
                // Row descriptions, completions, notices, parameter changes, notifications:
                // nothing a caller of this client needs.
                b'T' | b'C' | b'I' | b'N' | b'S' | b'A' => {}
                other => return Err(unexpected(other, "a query")),
            }
        }
    }

    /// Ends the session politely (Terminate) and closes the connection.
    pub async fn close(mut self) {
        // The server drops the session on its own when the socket closes; the message only
        // spares its log a complaint, so a failed send changes nothing.
        let _ = self.send(b'X', &[]).await;
        self.conn.shutdown().await;
    }

    async fn startup(&mut self, user: &str, database: &str) -> Result<()> {
        let mut body = PROTOCOL_3_0.to_be_bytes().to_vec();
        for (key, val) in [
            ("user", user),
            ("database", database),
            ("client_encoding", "UTF8"),
        ] {
            body.extend(cstring(key)?);
            body.extend(cstring(val)?);
        }
        body.push(0);
        let mut message = length_prefix(body.len())?.to_vec();
        message.extend(body);
        self.conn.send(&message).await
    }

    async fn authenticate(&mut self, user: &str, password: &str) -> Result<()> {
        loop {
            let body = self.expect_auth().await?;
            let mut r = Reader::new(&body, "an authentication request");
            match r.be_u32()? {
                0 => return Ok(()),
                3 => self.send(b'p', &cstring(password)?).await?,
                5 => {
                    let salt: [u8; 4] = r.array()?;
                    self.send(b'p', &cstring(&md5_password(user, password, salt))?)
                        .await?
                }
                10 => return self.scram(r.rest(), password).await,
                other => {
                    return Err(Error::Unsupported(format!(
                        "postgres authentication request {other} (only trust, password, md5 and SCRAM-SHA-256 are spoken)"
                    )))
                }
            }
        }
    }

    /// SCRAM-SHA-256 (RFC 5802, RFC 7677) without channel binding.
    async fn scram(&mut self, mechanisms: &[u8], password: &str) -> Result<()> {
        let offered: Vec<String> = mechanisms
            .split(|&b| b == 0)
            .filter(|m| !m.is_empty())
            .map(text)
            .collect();
        if !offered.iter().any(|m| m == "SCRAM-SHA-256") {
            return Err(Error::Unsupported(format!(
                "postgres SASL mechanisms {offered:?} (only SCRAM-SHA-256 is spoken)"
            )));
        }
        let nonce = BASE64.encode(rand::random::<[u8; 18]>());
        // The server takes the user name from the startup message, so it stays empty here.
        let client_first_bare = format!("n=,r={nonce}");
        let client_first = format!("n,,{client_first_bare}");
        let mut initial = cstring("SCRAM-SHA-256")?;
        // This length, unlike a message's, does not count itself.
        let first_len = u32::try_from(client_first.len()).unwrap_or(u32::MAX);
        initial.extend(first_len.to_be_bytes());
        initial.extend(client_first.as_bytes());
        self.send(b'p', &initial).await?;

        let server_first = self.sasl_step(11).await?;
        let exchange = Scram::new(&client_first_bare, &server_first, &nonce, password)?;
        self.send(b'p', exchange.client_final.as_bytes()).await?;

        let server_final = self.sasl_step(12).await?;
        let signature = attribute(&server_final, 'v')
            .and_then(|v| BASE64.decode(v).ok())
            .ok_or_else(|| {
                Error::Protocol(format!("SCRAM server-final-message {server_final:?}"))
            })?;
        if signature != exchange.server_signature {
            return Err(Error::Auth {
                message: "the server's SCRAM signature is wrong: it does not know the password"
                    .into(),
            });
        }
        let body = self.expect_auth().await?;
        match Reader::new(&body, "an authentication request").be_u32()? {
            0 => Ok(()),
            other => Err(Error::Protocol(format!(
                "authentication request {other} after SCRAM completed"
            ))),
        }
    }

    /// The text of the SASL message with authentication code `code` (11: continue, 12: final).
    async fn sasl_step(&mut self, code: u32) -> Result<String> {
        let body = self.expect_auth().await?;
        let mut r = Reader::new(&body, "a SASL message");
        match r.be_u32()? {
            c if c == code => Ok(text(r.rest())),
            other => Err(Error::Protocol(format!(
                "authentication request {other} where SASL step {code} was expected"
            ))),
        }
    }

    /// The body of the next message, which must be an authentication request (or the
    /// server's refusal).
    async fn expect_auth(&mut self) -> Result<Vec<u8>> {
        let (tag, body) = self.receive().await?;
        match tag {
            b'R' => Ok(body),
            b'E' => Err(server_error(&body)),
            other => Err(unexpected(other, "authentication")),
        }
    }

    /// Reads the messages after authentication up to the first ReadyForQuery.
    async fn until_ready(&mut self) -> Result<()> {
        loop {
            let (tag, body) = self.receive().await?;
            match tag {
                b'Z' => return Ok(()),
                b'E' => return Err(server_error(&body)),
                // Parameter status, the cancellation key, notices.
                b'S' | b'K' | b'N' => {}
                other => return Err(unexpected(other, "startup")),
            }
        }
    }

    async fn send(&mut self, tag: u8, body: &[u8]) -> Result<()> {
        let mut message = vec![tag];
        message.extend(length_prefix(body.len())?);
        message.extend(body);
        self.conn.send(&message).await
    }

    /// One message: its type byte and its body.
    async fn receive(&mut self) -> Result<(u8, Vec<u8>)> {
        let [tag, l0, l1, l2, l3] = self.conn.read_array::<5>().await?;
        let length = u32::from_be_bytes([l0, l1, l2, l3]);
        let body_len = usize::try_from(length)
            .ok()
            .and_then(|l| l.checked_sub(4))
            .ok_or_else(|| Error::Protocol(format!("a message length of {length}")))?;
        let body = self.conn.read_exact(body_len, "a postgres message").await?;
        Ok((tag, body))
    }
}

/// The computed values of one SCRAM exchange.
struct Scram {
    /// `client-final-message`, proof included.
    client_final: String,
    /// What the server must answer in `server-final-message`.
    server_signature: Vec<u8>,
}

impl Scram {
    fn new(
        client_first_bare: &str,
        server_first: &str,
        nonce: &str,
        password: &str,
    ) -> Result<Scram> {
        let bad = || Error::Protocol(format!("SCRAM server-first-message {server_first:?}"));
        let server_nonce = attribute(server_first, 'r').ok_or_else(bad)?;
        let salt = attribute(server_first, 's')
            .and_then(|s| BASE64.decode(s).ok())
            .ok_or_else(bad)?;
        let iterations: u32 = attribute(server_first, 'i')
            .and_then(|i| i.parse().ok())
            .filter(|&i| i > 0)
            .ok_or_else(bad)?;
        if !server_nonce.starts_with(nonce) {
            return Err(Error::Protocol(
                "the SCRAM server nonce does not extend the client's".into(),
            ));
        }
        // "biws" is base64 of "n,,": no channel binding.
        let without_proof = format!("c=biws,r={server_nonce}");
        let auth_message = format!("{client_first_bare},{server_first},{without_proof}");
        let salted = pbkdf2_sha256(password.as_bytes(), &salt, iterations);
        let client_key = hmac_sha256(&salted, b"Client Key");
        let stored_key = Sha256::digest(client_key);
        let client_signature = hmac_sha256(&stored_key, auth_message.as_bytes());
        let proof: Vec<u8> = client_key
            .iter()
            .zip(client_signature)
            .map(|(k, s)| k ^ s)
            .collect();
        let server_key = hmac_sha256(&salted, b"Server Key");
        Ok(Scram {
            client_final: format!("{without_proof},p={}", BASE64.encode(proof)),
            server_signature: hmac_sha256(&server_key, auth_message.as_bytes()).to_vec(),
        })
    }
}

/// The value of attribute `key` in a SCRAM message (`r=…,s=…,i=…`).
fn attribute(message: &str, key: char) -> Option<&str> {
    message.split(',').find_map(|part| {
        let mut kv = part.splitn(2, '=');
        (kv.next()? == key.encode_utf8(&mut [0; 4])).then_some(())?;
        kv.next()
    })
}

fn hmac_sha256(key: &[u8], data: &[u8]) -> [u8; 32] {
    let mut mac = <Hmac<Sha256>>::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(data);
    mac.finalize().into_bytes().into()
}

/// PBKDF2 with HMAC-SHA-256, one output block (RFC 8018; SCRAM wants exactly 32 bytes).
fn pbkdf2_sha256(password: &[u8], salt: &[u8], iterations: u32) -> [u8; 32] {
    let mut block = salt.to_vec();
    block.extend(1u32.to_be_bytes());
    let mut u = hmac_sha256(password, &block);
    let mut out = u;
    for _ in 1..iterations {
        u = hmac_sha256(password, &u);
        out.iter_mut().zip(u).for_each(|(o, x)| *o ^= x);
    }
    out
}

/// The answer to an MD5 request: `"md5" + md5(md5(password + user) + salt)`, in hex.
fn md5_password(user: &str, password: &str, salt: [u8; 4]) -> String {
    let inner = hex(&Md5::digest(format!("{password}{user}")));
    let mut outer = Md5::new();
    outer.update(inner.as_bytes());
    outer.update(salt);
    format!("md5{}", hex(&outer.finalize()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `s` with a terminating NUL; an embedded NUL would end it early, so it is refused.
fn cstring(s: &str) -> Result<Vec<u8>> {
    if s.contains('\0') {
        return Err(Error::Protocol(format!("{s:?} contains a NUL byte")));
    }
    let mut out = s.as_bytes().to_vec();
    out.push(0);
    Ok(out)
}

/// The length field of a message with a body of `len` bytes (the field counts itself).
fn length_prefix(len: usize) -> Result<[u8; 4]> {
    u32::try_from(len + 4)
        .map(u32::to_be_bytes)
        .map_err(|_| Error::Protocol(format!("a message of {len} bytes is too long to send")))
}

fn data_row(body: &[u8]) -> Result<Row> {
    let mut r = Reader::new(body, "a DataRow message");
    let columns = r.be_u16()?;
    (0..columns)
        .map(|_| {
            let len = r.be_u32()?;
            if len == u32::MAX {
                return Ok(None); // -1: NULL
            }
            let len = usize::try_from(len).map_err(|_| Error::Protocol("a huge value".into()))?;
            value(r.take(len)?).map(Some)
        })
        .collect()
}

/// An ErrorResponse as an [`Error`]: class 28 is [`Error::Auth`], anything else
/// [`Error::Server`] with its SQLSTATE.
fn server_error(body: &[u8]) -> Error {
    let mut code = String::new();
    let mut message = String::new();
    let mut r = Reader::new(body, "an ErrorResponse message");
    loop {
        let field = r.cstr();
        let Some((&kind, val)) = field.split_first() else {
            break;
        };
        match kind {
            b'C' => code = text(val),
            b'M' => message = text(val),
            _ => {}
        }
    }
    if code.starts_with(AUTH_CLASS) {
        Error::Auth { message }
    } else {
        Error::Server { code, message }
    }
}

fn unexpected(tag: u8, during: &str) -> Error {
    Error::Protocol(format!(
        "unexpected message {:?} during {during}",
        char::from(tag)
    ))
}

#[cfg(test)]
mod tests {
    use std::process::Command;
    use std::time::{Duration, Instant};

    use super::*;
    use crate::model::kind::wire::testing::{dir_for, free_port, program, rows, Server};
    use std::os::unix::process::CommandExt as _;

    /// The roles the test server has, one per password method of its `pg_hba.conf`.
    const HBA: &str = "\
local all all trust
host all postgres 127.0.0.1/32 trust
host all md5_user 127.0.0.1/32 md5
host all scram_user 127.0.0.1/32 scram-sha-256
host all plain_user 127.0.0.1/32 password
";

    const ROLES: &str = "\
SET password_encryption = 'md5';
CREATE ROLE md5_user LOGIN PASSWORD 'md5-secret';
SET password_encryption = 'scram-sha-256';
CREATE ROLE scram_user LOGIN PASSWORD 'scram-secret';
CREATE ROLE plain_user LOGIN PASSWORD 'plain-secret';
";

    /// A fresh cluster on a free port, run as the `postgres` user when this is root.
    fn start() -> Server {
        let (dir, ids) = dir_for("postgres");
        let as_owner = |program: std::path::PathBuf| {
            let mut cmd = Command::new(program);
            if let Some((uid, gid)) = ids {
                cmd.uid(uid).gid(gid);
            }
            cmd
        };
        let data = dir.path().join("data");
        let made = as_owner(program("initdb", "/usr/lib/postgresql"))
            .arg("-D")
            .arg(&data)
            .args(["-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"])
            .output()
            .expect("initdb runs");
        assert!(
            made.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&made.stderr)
        );
        std::fs::write(data.join("pg_hba.conf"), HBA).expect("pg_hba.conf");
        let port = free_port();
        let mut server = as_owner(program("postgres", "/usr/lib/postgresql"));
        server
            .arg("-D")
            .arg(&data)
            .arg("-k")
            .arg(dir.path())
            .args(["-p", &port.to_string(), "-c", "listen_addresses=127.0.0.1"])
            .args(["-c", "fsync=off"]);
        Server::start(server, port, dir)
    }

    /// Connects as the trusted superuser, retrying while the server says it is starting up.
    async fn superuser(port: u16, database: &str) -> Client {
        let until = Instant::now() + Duration::from_secs(30);
        loop {
            match Client::connect("127.0.0.1", port, "postgres", "", database).await {
                Ok(c) => return c,
                Err(Error::Server { code, .. }) if code == "57P03" && Instant::now() < until => {
                    tokio::time::sleep(Duration::from_millis(20)).await
                }
                Err(e) => panic!("connecting as postgres: {e}"),
            }
        }
    }

    #[tokio::test]
    async fn a_real_server_authenticates_by_every_method_and_answers_queries() {
        let server = start();
        let port = server.port;
        let mut admin = superuser(port, "postgres").await;
        assert_eq!(
            admin.simple_query("SELECT 1").await.unwrap(),
            rows(&[&[Some("1")]])
        );
        assert_eq!(admin.simple_query(ROLES).await.unwrap(), rows(&[]));
        assert_eq!(
            admin
                .simple_query("SELECT NULL, 'a', 2 UNION ALL SELECT 'b', NULL, 3")
                .await
                .unwrap(),
            rows(&[&[None, Some("a"), Some("2")], &[Some("b"), None, Some("3")]])
        );
        assert_eq!(admin.simple_query("").await.unwrap(), rows(&[]));

        // An error ends the statement, not the session.
        match admin.simple_query("SELECT 1/0").await {
            Err(Error::Server { code, message }) => {
                assert_eq!(code, "22012");
                assert_eq!(message, "division by zero");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            admin.simple_query("SELECT 2").await.unwrap(),
            rows(&[&[Some("2")]])
        );

        assert_eq!(
            admin
                .simple_query("CREATE DATABASE \"made here\"")
                .await
                .unwrap(),
            rows(&[])
        );
        let mut made = superuser(port, "made here").await;
        assert_eq!(
            made.simple_query("SELECT current_database()")
                .await
                .unwrap(),
            rows(&[&[Some("made here")]])
        );
        made.close().await;
        admin
            .simple_query("DROP DATABASE \"made here\" WITH (FORCE)")
            .await
            .unwrap();
        match Client::connect("127.0.0.1", port, "postgres", "", "made here").await {
            Err(Error::Server { code, .. }) => assert_eq!(code, "3D000"),
            other => panic!("{other:?}"),
        }
        admin.close().await;

        for (role, password) in [
            ("md5_user", "md5-secret"),
            ("scram_user", "scram-secret"),
            ("plain_user", "plain-secret"),
        ] {
            let mut client = Client::connect("127.0.0.1", port, role, password, "postgres")
                .await
                .unwrap_or_else(|e| panic!("{role}: {e}"));
            assert_eq!(
                client.simple_query("SELECT current_user").await.unwrap(),
                rows(&[&[Some(role)]])
            );
            client.close().await;
            match Client::connect("127.0.0.1", port, role, "wrong", "postgres").await {
                Err(Error::Auth { message }) => assert_eq!(
                    message,
                    format!("password authentication failed for user \"{role}\""),
                ),
                other => panic!("{role} with a wrong password: {other:?}"),
            }
        }
        drop(server);
    }

    #[tokio::test]
    async fn nothing_listening_is_a_connect_error() {
        let err = Client::connect("127.0.0.1", free_port(), "postgres", "", "postgres")
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Connect(_)), "{err:?}");
    }

    /// RFC 7677's example exchange (user "user", password "pencil").
    #[test]
    fn scram_matches_the_rfc_example() {
        let server_first = "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
        let exchange = Scram::new(
            "n=user,r=rOprNGfwEbeRWgbNEkqO",
            server_first,
            "rOprNGfwEbeRWgbNEkqO",
            "pencil",
        )
        .unwrap();
        assert_eq!(
            exchange.client_final,
            "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
        );
        assert_eq!(
            BASE64.encode(exchange.server_signature),
            "6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="
        );
        // A server nonce that does not extend the client's is refused.
        assert!(matches!(
            Scram::new("n=,r=abc", "r=xyz,s=AAAA,i=1", "abc", "pencil"),
            Err(Error::Protocol(_))
        ));
    }
}
