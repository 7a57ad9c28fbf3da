//! PostgreSQL backend messages as the agent's replication-lag probe reads them from a node's
//! server: a whole simple-query reply through `pg_reply`, each message through
//! `pg_header`/`pg_message`, and the value as a WAL position through `lsn`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weft_noderun::replies::{self, PgMessage};

fuzz_target!(|data: &[u8]| {
    let whole = replies::pg_reply(data);
    // Message by message, as the agent reads a stream: the same answer.
    let mut rest = data;
    let mut first: Option<Option<String>> = None;
    let stepped = loop {
        let Some(head) = rest.get(..5) else {
            break Err(());
        };
        let head: [u8; 5] = head.try_into().expect("5 bytes");
        let Ok((tag, len)) = replies::pg_header(&head) else {
            break Err(());
        };
        assert!(len <= replies::PG_MAX_MESSAGE - 4);
        let Some(body) = rest.get(5..5 + len) else {
            break Err(());
        };
        rest = &rest[5 + len..];
        match replies::pg_message(tag, body) {
            Err(_) | Ok(PgMessage::Error(_)) | Ok(PgMessage::AuthRequired(_)) => break Err(()),
            Ok(PgMessage::Row(v)) => {
                if let Some(s) = &v {
                    assert!(
                        s.len() <= body.len() * 3,
                        "a value longer than its bytes allow"
                    );
                }
                if first.is_none() {
                    first = Some(v);
                }
            }
            Ok(PgMessage::Ready) => break Ok(first.clone().flatten()),
            Ok(PgMessage::AuthOk) => assert_eq!(tag, b'R'),
            Ok(PgMessage::Other(t)) => assert_eq!(t, tag),
        }
    };
    match (&whole, &stepped) {
        (Ok(a), Ok(b)) => assert_eq!(a, b),
        (Err(_), Err(())) => {}
        _ => panic!("pg_reply {whole:?} but message by message {stepped:?}"),
    }
    if let Ok(Some(v)) = whole
        && let Ok(pos) = replies::lsn(&v)
    {
        // What parses prints back as PostgreSQL would (upper-case hex halves).
        let printed = format!("{:X}/{:X}", pos >> 32, pos & 0xffff_ffff);
        assert_eq!(replies::lsn(&printed), Ok(pos));
    }
    // Any text as an LSN: parse, print, parse again to the same position.
    let text = String::from_utf8_lossy(data);
    if let Ok(pos) = replies::lsn(&text) {
        let printed = format!("{:x}/{:x}", pos >> 32, pos & 0xffff_ffff);
        assert_eq!(replies::lsn(&printed), Ok(pos), "{text:?}");
    }
});
