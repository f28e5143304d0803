//! A Redis readiness check over RESP: `AUTH`, `SELECT`, `PING`.

use super::{text, Conn, Error, Result};

/// Connects to `host:port`, authenticates when a password is given (`AUTH [username]
/// password`), selects database `db` when it is not 0, and expects `PING` to answer `PONG`.
pub async fn ping(
    host: &str,
    port: u16,
    username: Option<&str>,
    password: Option<&str>,
    db: u32,
) -> Result<()> {
    let mut conn = Conn::connect(host, port).await?;
    if let Some(password) = password {
        let mut auth = vec!["AUTH"];
        auth.extend(username);
        auth.push(password);
        // Every error answering AUTH is about the credentials (a wrong password, an unknown
        // user, a password given to a server without one).
        command(&mut conn, &auth).await.map_err(|e| match e {
            Error::Server { message, .. } => Error::Auth { message },
            other => other,
        })?;
    }
    if db != 0 {
        command(&mut conn, &["SELECT", &db.to_string()]).await?;
    }
    match command(&mut conn, &["PING"]).await?.as_str() {
        "PONG" => {}
        other => return Err(Error::Protocol(format!("PING answered {other:?}"))),
    }
    // QUIT is deprecated; closing the socket ends the session just as well.
    conn.shutdown().await;
    Ok(())
}

/// Sends one command and returns its simple-string reply; an error reply is
/// [`Error::Server`] with the error's first word as the code, `NOAUTH` and `WRONGPASS`
/// [`Error::Auth`].
async fn command(conn: &mut Conn, args: &[&str]) -> Result<String> {
    let mut request = format!("*{}\r\n", args.len()).into_bytes();
    for arg in args {
        request.extend(format!("${}\r\n", arg.len()).as_bytes());
        request.extend(arg.as_bytes());
        request.extend(b"\r\n");
    }
    conn.send(&request).await?;
    let line = conn.read_line().await?;
    let line = line
        .strip_suffix(b"\r\n")
        .ok_or_else(|| Error::Protocol(format!("a reply not ending in CRLF: {:?}", text(&line))))?;
    match line.split_first() {
        Some((b'+', reply)) => Ok(text(reply)),
        Some((b'-', error)) => {
            let message = text(error);
            let code = message.split(' ').next().unwrap_or_default().to_string();
            Err(match code.as_str() {
                "NOAUTH" | "WRONGPASS" => Error::Auth { message },
                _ => Error::Server { code, message },
            })
        }
        _ => Err(Error::Protocol(format!(
            "{} answered {:?}",
            args.first().copied().unwrap_or_default(),
            text(line)
        ))),
    }
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    use super::*;
    use crate::model::kind::wire::testing::{free_port, Server};

    /// A redis-server on a free port, in memory only, with `extra` arguments.
    fn start(extra: &[&str]) -> Server {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let port = free_port();
        let mut cmd = Command::new("redis-server");
        cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(dir.path())
            .args(extra);
        Server::start(cmd, port, dir)
    }

    #[tokio::test]
    async fn a_real_server_with_passwords() {
        let server = start(&[
            "--requirepass",
            "secret",
            "--user",
            "alice",
            "on",
            ">alice-secret",
            "~*",
            "+@all",
        ]);
        let port = server.port;
        ping("127.0.0.1", port, None, Some("secret"), 0)
            .await
            .unwrap();
        ping("127.0.0.1", port, Some("alice"), Some("alice-secret"), 3)
            .await
            .unwrap();
        for (user, password) in [(None, "wrong"), (Some("alice"), "secret")] {
            match ping("127.0.0.1", port, user, Some(password), 0).await {
                Err(Error::Auth { message }) => assert!(
                    message.starts_with("WRONGPASS invalid username-password pair"),
                    "{message}"
                ),
                other => panic!("{user:?} {password}: {other:?}"),
            }
        }
        match ping("127.0.0.1", port, None, None, 0).await {
            Err(Error::Auth { message }) => {
                assert_eq!(message, "NOAUTH Authentication required.")
            }
            other => panic!("{other:?}"),
        }
        match ping("127.0.0.1", port, None, Some("secret"), 99).await {
            Err(Error::Server { code, message }) => {
                assert_eq!(code, "ERR");
                assert_eq!(message, "ERR DB index is out of range");
            }
            other => panic!("{other:?}"),
        }
        drop(server);
    }

    #[tokio::test]
    async fn a_real_server_without_a_password() {
        let server = start(&[]);
        ping("127.0.0.1", server.port, None, None, 0).await.unwrap();
        ping("127.0.0.1", server.port, None, None, 1).await.unwrap();
        drop(server);
    }

    #[tokio::test]
    async fn nothing_listening_is_a_connect_error() {
        let err = ping("127.0.0.1", free_port(), None, None, 0)
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Connect(_)), "{err:?}");
    }
}
