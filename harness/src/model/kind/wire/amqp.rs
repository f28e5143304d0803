//! An AMQP 0-9-1 readiness check: the connection handshake up to `Connection.Open-Ok`, then a
//! clean `Connection.Close`.

use super::{is_closed, text, Conn, Error, Reader, Result};

/// The protocol header a client opens with.
const HEADER: &[u8; 8] = b"AMQP\x00\x00\x09\x01";
/// The frame types used here.
const METHOD: u8 = 1;
const HEARTBEAT: u8 = 8;
/// The octet that ends every frame.
const FRAME_END: u8 = 0xCE;
/// Class `connection` and its methods.
const CONNECTION: u16 = 10;
const START: u16 = 10;
const START_OK: u16 = 11;
const TUNE: u16 = 30;
const TUNE_OK: u16 = 31;
const OPEN: u16 = 40;
const OPEN_OK: u16 = 41;
const CLOSE: u16 = 50;
const CLOSE_OK: u16 = 51;
/// The reply code of a refused login (`ACCESS_REFUSED`).
const ACCESS_REFUSED: u16 = 403;
/// The largest frame offered to the server.
const FRAME_MAX: u32 = 128 * 1024;

/// Opens a connection to virtual host `vhost` on `host:port` as `user` (SASL PLAIN) and closes
/// it again. A refused login is [`Error::Auth`], whether the server says so with
/// `Connection.Close` 403 or by closing the socket after `Start-Ok`.
pub async fn open(host: &str, port: u16, user: &str, password: &str, vhost: &str) -> Result<()> {
    let mut conn = Conn::connect(host, port).await?;
    conn.send(HEADER).await?;

    let start = expect(&mut conn, START).await?;
    let mut r = Reader::new(&start, "Connection.Start");
    let _version: [u8; 2] = r.array()?;
    skip_table(&mut r)?;
    let mechanisms = text(long_string(&mut r)?);
    if !mechanisms.split(' ').any(|m| m == "PLAIN") {
        return Err(Error::Unsupported(format!(
            "amqp mechanisms {mechanisms:?} (only PLAIN is spoken)"
        )));
    }

    let mut start_ok = client_properties();
    short_string(&mut start_ok, "PLAIN")?;
    let response = format!("\0{user}\0{password}");
    start_ok.extend(len32(response.len()).to_be_bytes());
    start_ok.extend(response.as_bytes());
    short_string(&mut start_ok, "en_US")?;
    send_method(&mut conn, START_OK, &start_ok).await?;

    let tune = match expect(&mut conn, TUNE).await {
        Err(e) if is_closed(&e) => {
            return Err(Error::Auth {
                message: "the server closed the connection after the login (access refused)".into(),
            })
        }
        other => other?,
    };
    let mut r = Reader::new(&tune, "Connection.Tune");
    let channel_max = r.be_u16()?;
    let frame_max = match r.be_u32()? {
        0 => FRAME_MAX,
        offered => offered.min(FRAME_MAX),
    };
    let mut tune_ok = channel_max.to_be_bytes().to_vec();
    tune_ok.extend(frame_max.to_be_bytes());
    tune_ok.extend(0u16.to_be_bytes()); // no heartbeats: the connection lives for a moment
    send_method(&mut conn, TUNE_OK, &tune_ok).await?;

    let mut open = Vec::new();
    short_string(&mut open, vhost)?;
    short_string(&mut open, "")?; // reserved
    open.push(0); // reserved bit
    send_method(&mut conn, OPEN, &open).await?;
    expect(&mut conn, OPEN_OK).await?;

    let mut close = 200u16.to_be_bytes().to_vec();
    short_string(&mut close, "probe")?;
    close.extend([0; 4]); // no failing class and method
    send_method(&mut conn, CLOSE, &close).await?;
    expect(&mut conn, CLOSE_OK).await?;
    conn.shutdown().await;
    Ok(())
}

/// `Start-Ok`'s client properties: the capability that makes the server answer a refused
/// login with `Connection.Close` 403 instead of just closing the socket.
fn client_properties() -> Vec<u8> {
    let mut capabilities = Vec::new();
    push_short(&mut capabilities, b"authentication_failure_close");
    capabilities.extend([b't', 1]);
    let mut table = Vec::new();
    push_short(&mut table, b"capabilities");
    table.push(b'F');
    table.extend(len32(capabilities.len()).to_be_bytes());
    table.extend(capabilities);
    let mut out = len32(table.len()).to_be_bytes().to_vec();
    out.extend(table);
    out
}

/// The arguments of the next method frame on channel 0, which must be `connection.method`.
/// A `Connection.Close` from the server is answered with `Close-Ok` and returned as an error.
async fn expect(conn: &mut Conn, method: u16) -> Result<Vec<u8>> {
    loop {
        let [kind, _, _, s0, s1, s2, s3] = conn.read_array::<7>().await?;
        if &[kind, s0, s1, s2] == b"AMQP" {
            return Err(Error::Unsupported(
                "the server does not speak AMQP 0-9-1 (it answered with its own protocol header)"
                    .into(),
            ));
        }
        let size = usize::try_from(u32::from_be_bytes([s0, s1, s2, s3]))
            .map_err(|_| Error::Protocol("a huge frame".into()))?;
        let payload = conn.read_exact(size, "an amqp frame").await?;
        let [end] = conn.read_array::<1>().await?;
        if end != FRAME_END {
            return Err(Error::Protocol(format!("a frame ending in {end:#04x}")));
        }
        if kind == HEARTBEAT {
            continue;
        }
        if kind != METHOD {
            return Err(Error::Protocol(format!(
                "a frame of type {kind} during the handshake"
            )));
        }
        let mut r = Reader::new(&payload, "a method frame");
        let (class, id) = (r.be_u16()?, r.be_u16()?);
        if class == CONNECTION && id == method {
            return Ok(r.rest().to_vec());
        }
        if class == CONNECTION && id == CLOSE {
            let code = r.be_u16()?;
            let message = text(short_string_in(&mut r)?);
            // Polite, and lets the server log a clean close; the error is what matters.
            let _ = send_method(conn, CLOSE_OK, &[]).await;
            return Err(if code == ACCESS_REFUSED {
                Error::Auth { message }
            } else {
                Error::Server {
                    code: code.to_string(),
                    message,
                }
            });
        }
        return Err(Error::Protocol(format!(
            "method {class}.{id} where connection method {method} was expected"
        )));
    }
}

async fn send_method(conn: &mut Conn, method: u16, args: &[u8]) -> Result<()> {
    let mut payload = CONNECTION.to_be_bytes().to_vec();
    payload.extend(method.to_be_bytes());
    payload.extend(args);
    let mut frame = vec![METHOD, 0, 0];
    frame.extend(len32(payload.len()).to_be_bytes());
    frame.extend(payload);
    frame.push(FRAME_END);
    conn.send(&frame).await
}

/// A length as the protocol's `u32`; what is sent here is a few hundred bytes at most.
fn len32(len: usize) -> u32 {
    u32::try_from(len).unwrap_or(u32::MAX)
}

fn push_short(out: &mut Vec<u8>, s: &[u8]) {
    out.push(u8::try_from(s.len()).unwrap_or(u8::MAX));
    out.extend(s);
}

/// Appends a short string (at most 255 bytes).
fn short_string(out: &mut Vec<u8>, s: &str) -> Result<()> {
    if s.len() > usize::from(u8::MAX) {
        return Err(Error::Protocol(format!("{s:?} is longer than 255 bytes")));
    }
    push_short(out, s.as_bytes());
    Ok(())
}

fn short_string_in<'a>(r: &mut Reader<'a>) -> Result<&'a [u8]> {
    let len = r.u8()?;
    r.take(usize::from(len))
}

fn long_string<'a>(r: &mut Reader<'a>) -> Result<&'a [u8]> {
    let len = r.be_u32()?;
    r.take(usize::try_from(len).map_err(|_| Error::Protocol("a huge string".into()))?)
}

/// Skips a field table (the server properties are of no use here).
fn skip_table(r: &mut Reader<'_>) -> Result<()> {
    long_string(r).map(drop)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::engine::backend::BackendKind;
    use crate::model::kind::wire::testing::free_port;
    use crate::{Manifest, Stack, StackOptions};

    /// One RabbitMQ (slow to boot, so one test) started the way every stack starts it.
    #[tokio::test]
    async fn a_real_broker_opens_refuses_and_names_a_missing_vhost() {
        let manifest = Manifest::parse(
            Path::new("wire.toml"),
            "[services.rabbitmq]\nkind = \"rabbitmq\"\n",
        )
        .unwrap();
        let options = StackOptions {
            backend: Some(BackendKind::Native),
            ..StackOptions::default()
        };
        let stack = Stack::start(manifest, options).await.unwrap();
        let ep = stack.endpoint("rabbitmq").unwrap();
        let port = ep.port(None).unwrap();
        let user = ep.user.clone().unwrap();
        let password = ep.password.clone().unwrap();

        let opened = open(&ep.host, port, &user, &password, "/").await;
        let wrong = open(&ep.host, port, &user, "wrong", "/").await;
        let missing = open(&ep.host, port, &user, &password, "no-such-vhost").await;
        stack.down().await;

        opened.unwrap();
        match wrong {
            Err(Error::Auth { message }) => {
                assert!(message.starts_with("ACCESS_REFUSED"), "{message}")
            }
            other => panic!("{other:?}"),
        }
        match missing {
            Err(Error::Server { code, message }) => {
                assert_eq!(code, "530");
                assert!(message.contains("no-such-vhost"), "{message}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn nothing_listening_is_a_connect_error() {
        let err = open("127.0.0.1", free_port(), "guest", "guest", "/")
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Connect(_)), "{err:?}");
    }

    #[tokio::test]
    async fn a_socket_closed_after_the_login_is_an_auth_error() {
        // What a broker without the authentication_failure_close capability does.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let broker = tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let (mut s, _) = listener.accept().await.unwrap();
            let mut header = [0; 8];
            s.read_exact(&mut header).await.unwrap();
            let mut args = vec![0, 9];
            args.extend(0u32.to_be_bytes()); // no server properties
            args.extend(5u32.to_be_bytes());
            args.extend(b"PLAIN");
            args.extend(5u32.to_be_bytes());
            args.extend(b"en_US");
            let mut payload = [CONNECTION.to_be_bytes(), START.to_be_bytes()].concat();
            payload.extend(args);
            let mut frame = vec![METHOD, 0, 0];
            frame.extend(len32(payload.len()).to_be_bytes());
            frame.extend(payload);
            frame.push(FRAME_END);
            s.write_all(&frame).await.unwrap();
            let mut start_ok = [0; 7];
            s.read_exact(&mut start_ok).await.unwrap();
        });
        let err = open("127.0.0.1", port, "guest", "wrong", "/")
            .await
            .unwrap_err();
        broker.await.unwrap();
        assert!(matches!(err, Error::Auth { .. }), "{err:?}");
    }
}
