//! A MySQL / MariaDB client: handshake v10 with `mysql_native_password` (also after an
//! authentication switch), `COM_QUERY` with text result sets, `COM_QUIT`.

use sha1::{Digest as _, Sha1};

use super::{text, value, Conn, Error, Reader, Result};

/// The only authentication plugin spoken.
const NATIVE_PASSWORD: &str = "mysql_native_password";

/// Capability flags (`CLIENT_*`) this client asks for, when the server has them.
const LONG_PASSWORD: u32 = 0x1;
const CONNECT_WITH_DB: u32 = 0x8;
const PROTOCOL_41: u32 = 0x200;
const TRANSACTIONS: u32 = 0x2000;
const SECURE_CONNECTION: u32 = 0x8000;
const MULTI_RESULTS: u32 = 0x2_0000;
const PLUGIN_AUTH: u32 = 0x8_0000;
/// What the client needs the server to have.
const REQUIRED: u32 = PROTOCOL_41 | SECURE_CONNECTION;

/// `utf8mb4_general_ci`.
const UTF8MB4: u8 = 45;
/// The largest packet payload; one of exactly this size continues in the next packet, which
/// nothing a probe does needs.
const MAX_PAYLOAD: usize = 0xFF_FFFF;
/// Status flag: another result set follows.
const MORE_RESULTS_EXIST: u16 = 0x8;

/// Error numbers that mean the credentials were refused: access denied for the user
/// (1045), to the database (1044), an account that cannot log in by password (1698).
const AUTH_ERRORS: [u16; 3] = [1044, 1045, 1698];

/// The first byte of an OK, ERR and EOF / AuthSwitchRequest packet.
const OK: u8 = 0x00;
const ERR: u8 = 0xFF;
const EOF: u8 = 0xFE;
/// A NULL column value in a text row.
const NULL: u8 = 0xFB;

/// `COM_QUIT` and `COM_QUERY`.
const COM_QUIT: u8 = 0x01;
const COM_QUERY: u8 = 0x03;

pub use super::Row;

/// An authenticated connection.
#[derive(Debug)]
pub struct Client {
    conn: Conn,
    /// The sequence id of the next packet sent.
    sequence: u8,
}

impl Client {
    /// Connects to `host:port` as `user` with `password`, using `database` when given.
    pub async fn connect(
        host: &str,
        port: u16,
        user: &str,
        password: &str,
        database: Option<&str>,
    ) -> Result<Client> {
        Self::connect_as(host, port, user, password, database, NATIVE_PASSWORD).await
    }

    /// [`Client::connect`], naming `plugin` in the handshake response (a server whose
    /// account uses another plugin asks to switch).
    async fn connect_as(
        host: &str,
        port: u16,
        user: &str,
        password: &str,
        database: Option<&str>,
        plugin: &str,
    ) -> Result<Client> {
        let mut client = Client {
            conn: Conn::connect(host, port).await?,
            sequence: 0,
        };
        let greeting = client.receive().await?;
        if greeting.first() == Some(&ERR) {
            // Too many connections, a host that may not connect: said before any handshake.
            return Err(error_packet(&greeting));
        }
        let handshake = Handshake::parse(&greeting)?;
        let mut capabilities =
            LONG_PASSWORD | PROTOCOL_41 | TRANSACTIONS | SECURE_CONNECTION | MULTI_RESULTS;
        capabilities |= handshake.capabilities & PLUGIN_AUTH;
        if database.is_some() {
            capabilities |= CONNECT_WITH_DB;
        }
        if handshake.capabilities & REQUIRED != REQUIRED {
            return Err(Error::Unsupported(
                "a mysql server without protocol 4.1 authentication".into(),
            ));
        }
        let scramble = if plugin == NATIVE_PASSWORD {
            native_password(password, &handshake.scramble)
        } else {
            Vec::new()
        };
        let mut response = capabilities.to_le_bytes().to_vec();
        response.extend(u32::try_from(MAX_PAYLOAD).unwrap_or(u32::MAX).to_le_bytes());
        response.push(UTF8MB4);
        response.extend([0; 23]);
        push_cstr(&mut response, user)?;
        // A SHA-1 scramble: 20 bytes, or none for an empty password.
        response.push(u8::try_from(scramble.len()).unwrap_or(u8::MAX));
        response.extend(&scramble);
        if let Some(db) = database {
            push_cstr(&mut response, db)?;
        }
        if capabilities & PLUGIN_AUTH != 0 {
            push_cstr(&mut response, plugin)?;
        }
        client.send(&response).await?;
        client.finish_auth(password).await?;
        Ok(client)
    }

    /// Reads the server's verdict on the handshake response, answering a switch to
    /// `mysql_native_password`.
    async fn finish_auth(&mut self, password: &str) -> Result<()> {
        let mut switched = false;
        loop {
            let packet = self.receive().await?;
            match packet.split_first() {
                Some((&OK, _)) => return Ok(()),
                Some((&ERR, _)) => return Err(error_packet(&packet)),
                Some((&EOF, switch)) if !switched => {
                    let mut r = Reader::new(switch, "an AuthSwitchRequest packet");
                    let plugin = text(r.cstr());
                    if plugin != NATIVE_PASSWORD {
                        return Err(Error::Unsupported(format!(
                            "mysql authentication plugin `{plugin}` (only {NATIVE_PASSWORD} is spoken)"
                        )));
                    }
                    let data = r.rest();
                    let seed = data.strip_suffix(&[0]).unwrap_or(data);
                    self.send(&native_password(password, seed)).await?;
                    switched = true;
                }
                _ => {
                    return Err(Error::Protocol(format!(
                        "an authentication reply starting {:02x?}",
                        packet.get(..packet.len().min(8)).unwrap_or_default()
                    )))
                }
            }
        }
    }

    /// Runs `sql` (`COM_QUERY`) and returns the rows of its result sets as text; a statement
    /// without a result set returns no rows.
    pub async fn query(&mut self, sql: &str) -> Result<Vec<Row>> {
        self.sequence = 0;
        let mut command = vec![COM_QUERY];
        command.extend(sql.as_bytes());
        self.send(&command).await?;
        let mut rows = Vec::new();
        loop {
            let first = self.receive().await?;
            let status = match first.first() {
                Some(&OK) => ok_status(&first)?,
                Some(&ERR) => return Err(error_packet(&first)),
                Some(&NULL) => {
                    return Err(Error::Unsupported("LOAD DATA LOCAL INFILE".into()));
                }
                _ => {
                    let columns = lenenc(&mut Reader::new(&first, "a column count"))?;
                    for _ in 0..columns {
                        self.receive().await?; // column definitions: names and types unused
                    }
                    self.expect_eof().await?;
                    self.rows(columns, &mut rows).await?
                }
            };
            if status & MORE_RESULTS_EXIST == 0 {
                return Ok(rows);
            }
        }
    }

    /// Reads text rows of `columns` values up to the closing EOF, whose status it returns.
    async fn rows(&mut self, columns: u64, rows: &mut Vec<Row>) -> Result<u16> {
        loop {
            let packet = self.receive().await?;
            match packet.first() {
                Some(&EOF) if packet.len() < 9 => return eof_status(&packet),
                Some(&ERR) => return Err(error_packet(&packet)),
                _ => rows.push(text_row(&packet, columns)?),
            }
        }
    }

    async fn expect_eof(&mut self) -> Result<()> {
        let packet = self.receive().await?;
        match packet.first() {
            Some(&EOF) => Ok(()),
            Some(&ERR) => Err(error_packet(&packet)),
            _ => Err(Error::Protocol(
                "the column definitions do not end in an EOF packet".into(),
            )),
        }
    }

    /// Ends the session (`COM_QUIT`) and closes the connection.
    pub async fn close(mut self) {
        self.sequence = 0;
        // The server ends the session when the socket closes anyway.
        let _ = self.send(&[COM_QUIT]).await;
        self.conn.shutdown().await;
    }

    async fn send(&mut self, payload: &[u8]) -> Result<()> {
        if payload.len() >= MAX_PAYLOAD {
            return Err(Error::Protocol(format!(
                "a packet of {} bytes is too long to send",
                payload.len()
            )));
        }
        let len = u32::try_from(payload.len())
            .unwrap_or(u32::MAX)
            .to_le_bytes();
        let mut packet = vec![len[0], len[1], len[2], self.sequence];
        packet.extend(payload);
        self.sequence = self.sequence.wrapping_add(1);
        self.conn.send(&packet).await
    }

    async fn receive(&mut self) -> Result<Vec<u8>> {
        let [l0, l1, l2, sequence] = self.conn.read_array::<4>().await?;
        let len = usize::from(l0) | (usize::from(l1) << 8) | (usize::from(l2) << 16);
        if len == MAX_PAYLOAD {
            return Err(Error::Protocol(
                "a packet split over several (16 MiB or more)".into(),
            ));
        }
        self.sequence = sequence.wrapping_add(1);
        self.conn.read_exact(len, "a mysql packet").await
    }
}

/// What the server's greeting says.
struct Handshake {
    capabilities: u32,
    /// The 20 bytes `mysql_native_password` hashes with.
    scramble: Vec<u8>,
}

impl Handshake {
    fn parse(packet: &[u8]) -> Result<Handshake> {
        let mut r = Reader::new(packet, "the handshake packet");
        let version = r.u8()?;
        if version != 10 {
            return Err(Error::Unsupported(format!(
                "mysql handshake version {version} (only 10 is spoken)"
            )));
        }
        r.cstr(); // server version
        r.le_u32()?; // connection id
        let mut scramble = r.take(8)?.to_vec();
        r.u8()?; // filler
        let low = r.le_u16()?;
        r.u8()?; // character set
        r.le_u16()?; // status
        let high = r.le_u16()?;
        let capabilities = u32::from(low) | (u32::from(high) << 16);
        let data_len = r.u8()?;
        r.take(10)?; // reserved
        if capabilities & SECURE_CONNECTION != 0 {
            let rest = usize::from(data_len).saturating_sub(8).max(13);
            let part = r.take(rest)?;
            // The second part ends in a NUL that is not part of the scramble.
            scramble.extend(part.strip_suffix(&[0]).unwrap_or(part));
        }
        Ok(Handshake {
            capabilities,
            scramble,
        })
    }
}

/// `SHA1(password) XOR SHA1(scramble + SHA1(SHA1(password)))`; empty for an empty password.
fn native_password(password: &str, scramble: &[u8]) -> Vec<u8> {
    if password.is_empty() {
        return Vec::new();
    }
    let stage1 = Sha1::digest(password.as_bytes());
    let stage2 = Sha1::digest(stage1);
    let mut hasher = Sha1::new();
    hasher.update(scramble);
    hasher.update(stage2);
    let mask = hasher.finalize();
    stage1.iter().zip(mask).map(|(a, b)| a ^ b).collect()
}

fn push_cstr(out: &mut Vec<u8>, s: &str) -> Result<()> {
    if s.contains('\0') {
        return Err(Error::Protocol(format!("{s:?} contains a NUL byte")));
    }
    out.extend(s.as_bytes());
    out.push(0);
    Ok(())
}

/// A length-encoded integer.
fn lenenc(r: &mut Reader<'_>) -> Result<u64> {
    Ok(match r.u8()? {
        n @ 0..=0xFA => u64::from(n),
        0xFC => u64::from(r.le_u16()?),
        0xFD => {
            let [a, b, c] = r.array()?;
            u64::from_le_bytes([a, b, c, 0, 0, 0, 0, 0])
        }
        0xFE => u64::from_le_bytes(r.array()?),
        other => {
            return Err(Error::Protocol(format!(
                "{other:#04x} where a length-encoded integer was expected"
            )))
        }
    })
}

fn text_row(packet: &[u8], columns: u64) -> Result<Row> {
    let mut r = Reader::new(packet, "a text row");
    (0..columns)
        .map(|_| {
            if r.peek() == Some(NULL) {
                r.u8()?;
                return Ok(None);
            }
            let len = usize::try_from(lenenc(&mut r)?)
                .map_err(|_| Error::Protocol("a huge value".into()))?;
            value(r.take(len)?).map(Some)
        })
        .collect()
}

/// The status flags of an OK packet.
fn ok_status(packet: &[u8]) -> Result<u16> {
    let mut r = Reader::new(packet, "an OK packet");
    r.u8()?;
    lenenc(&mut r)?; // affected rows
    lenenc(&mut r)?; // last insert id
    r.le_u16()
}

/// The status flags of an EOF packet.
fn eof_status(packet: &[u8]) -> Result<u16> {
    let mut r = Reader::new(packet, "an EOF packet");
    r.u8()?;
    r.le_u16()?; // warnings
    r.le_u16()
}

/// An ERR packet as an [`Error`]: access denied is [`Error::Auth`], anything else
/// [`Error::Server`] with the error number as the code.
fn error_packet(packet: &[u8]) -> Error {
    match error_fields(packet) {
        Ok((code, message)) if AUTH_ERRORS.contains(&code) => Error::Auth { message },
        Ok((code, message)) => Error::Server {
            code: code.to_string(),
            message,
        },
        Err(e) => e,
    }
}

/// The error number and message of an ERR packet.
fn error_fields(packet: &[u8]) -> Result<(u16, String)> {
    let mut r = Reader::new(packet, "an ERR packet");
    r.u8()?;
    let code = r.le_u16()?;
    let mut rest = r.rest();
    // `#` and a five-character SQLSTATE, under protocol 4.1.
    if rest.first() == Some(&b'#') {
        rest = rest.get(6..).unwrap_or_default();
    }
    Ok((code, text(rest)))
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    use super::*;
    use crate::model::kind::wire::testing::{free_port, rows, Server};

    /// A fresh MariaDB on a free port whose root logs in without a password.
    fn start() -> Server {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let data = dir.path().join("data");
        let made = Command::new("mariadb-install-db")
            .arg("--no-defaults")
            .arg(format!("--datadir={}", data.display()))
            .args(["--auth-root-authentication-method=normal", "--user=root"])
            .args(["--skip-test-db", "--skip-name-resolve"])
            .output()
            .expect("mariadb-install-db runs");
        assert!(
            made.status.success(),
            "mariadb-install-db: {}{}",
            String::from_utf8_lossy(&made.stdout),
            String::from_utf8_lossy(&made.stderr)
        );
        let port = free_port();
        let mut cmd = Command::new("mariadbd");
        cmd.arg("--no-defaults")
            .arg(format!("--datadir={}", data.display()))
            .arg(format!("--socket={}", dir.path().join("sock").display()))
            .arg(format!("--port={port}"))
            .args([
                "--bind-address=127.0.0.1",
                "--user=root",
                "--skip-name-resolve",
            ])
            .args(["--skip-log-bin", "--innodb-buffer-pool-size=16M"]);
        Server::start(cmd, port, dir)
    }

    const USERS: &str = "\
CREATE USER 'app'@'127.0.0.1' IDENTIFIED BY 'app-secret';
GRANT ALL ON *.* TO 'app'@'127.0.0.1';
INSTALL SONAME 'auth_ed25519';
CREATE USER 'edwards'@'127.0.0.1' IDENTIFIED VIA ed25519 USING PASSWORD('ed-secret');
";

    #[tokio::test]
    async fn a_real_server_authenticates_and_answers_queries() {
        let server = start();
        let port = server.port;
        let mut root = Client::connect("127.0.0.1", port, "root", "", None)
            .await
            .unwrap_or_else(|e| panic!("root: {e}\n{}", server.log()));
        for statement in USERS.lines() {
            assert_eq!(
                root.query(statement).await.unwrap(),
                rows(&[]),
                "{statement}"
            );
        }
        assert_eq!(root.query("CREATE DATABASE made").await.unwrap(), rows(&[]));
        root.close().await;

        let mut app = Client::connect("127.0.0.1", port, "app", "app-secret", Some("made"))
            .await
            .unwrap();
        assert_eq!(
            app.query("SELECT 1, NULL, 'x', DATABASE()").await.unwrap(),
            rows(&[&[Some("1"), None, Some("x"), Some("made")]])
        );
        assert_eq!(
            app.query("SELECT 1 UNION ALL SELECT 2").await.unwrap(),
            rows(&[&[Some("1")], &[Some("2")]])
        );
        match app.query("SELECT * FROM no_such_table").await {
            Err(Error::Server { code, message }) => {
                assert_eq!(code, "1146");
                assert_eq!(message, "Table 'made.no_such_table' doesn't exist");
            }
            other => panic!("{other:?}"),
        }
        // An error ends the statement, not the session.
        assert_eq!(app.query("SELECT 2").await.unwrap(), rows(&[&[Some("2")]]));
        app.close().await;

        match Client::connect("127.0.0.1", port, "app", "wrong", None).await {
            Err(Error::Auth { message }) => assert_eq!(
                message,
                "Access denied for user 'app'@'127.0.0.1' (using password: YES)"
            ),
            other => panic!("{other:?}"),
        }
        // Claiming another plugin makes the server switch to the account's own.
        let switched = Client::connect_as(
            "127.0.0.1",
            port,
            "app",
            "app-secret",
            None,
            "client_ed25519",
        )
        .await
        .unwrap();
        switched.close().await;
        match Client::connect("127.0.0.1", port, "edwards", "ed-secret", None).await {
            Err(Error::Unsupported(message)) => {
                assert!(message.contains("`client_ed25519`"), "{message}")
            }
            other => panic!("{other:?}"),
        }
        drop(server);
    }

    #[tokio::test]
    async fn nothing_listening_is_a_connect_error() {
        let err = Client::connect("127.0.0.1", free_port(), "root", "", None)
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Connect(_)), "{err:?}");
    }
}
