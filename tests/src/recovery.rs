//! Setting up recovery through the real CLI, as a script does: `passmesh --json recovery setup` prints the phrase
//! and the positions it asks for on one JSON line, then reads the words from stdin.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{Context, bail};
use serde_json::Value;

use crate::bins::binaries;

/// What `recovery setup` (or `rotate`) gave: the phrase, and its final JSON line.
#[derive(Debug, Clone)]
pub struct Setup {
    /// The 24 words.
    pub phrase: String,
    /// The last JSON line (`recoveryKey`, `replaced`).
    pub result: Value,
}

/// Runs `passmesh --json recovery setup` (or `rotate`) against `socket`, answering its question with the right
/// words (or, with `wrong`, with other words). `pin`: given on the first line of stdin (`--pin-stdin`).
pub async fn setup(
    socket: &Path,
    rotate: bool,
    pin: Option<&str>,
    wrong: bool,
) -> anyhow::Result<(Option<i32>, Setup, String)> {
    let bins = binaries()?;
    let mut cmd = Command::new(&bins.cli);
    cmd.arg("--socket").arg(socket).args([
        "--json",
        "recovery",
        if rotate { "rotate" } else { "setup" },
    ]);
    if pin.is_some() {
        cmd.arg("--pin-stdin");
    }
    let pin = pin.map(str::to_owned);
    tokio::task::spawn_blocking(move || {
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().context("cannot start `passmesh recovery`")?;
        let mut stdin = child.stdin.take().context("no stdin")?;
        if let Some(pin) = pin {
            writeln!(stdin, "{pin}")?;
        }
        let mut stdout = BufReader::new(child.stdout.take().context("no stdout")?);
        let mut first = String::new();
        stdout.read_line(&mut first)?;
        let v: Value = match serde_json::from_str(&first) {
            Ok(v) => v,
            Err(_) => {
                let out = child.wait_with_output()?;
                bail!(
                    "no phrase line: {first:?}; stderr: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        };
        let Some(phrase) = v["phrase"].as_str().map(str::to_owned) else {
            // Refused before any phrase was made (`{"ok": false, …}`).
            drop(stdin);
            let out = child.wait_with_output()?;
            return Ok((
                out.status.code(),
                Setup {
                    phrase: String::new(),
                    result: v,
                },
                String::from_utf8_lossy(&out.stderr).into_owned(),
            ));
        };
        let words: Vec<&str> = phrase.split(' ').collect();
        let asked: Vec<usize> = v["confirm"]
            .as_array()
            .context("no confirm")?
            .iter()
            .filter_map(|p| p.as_u64().map(|p| p as usize))
            .collect();
        let mut answer: Vec<&str> = asked.iter().map(|&p| words[p - 1]).collect();
        if wrong {
            answer.reverse();
            answer[0] = if answer[0] == "zoo" { "abandon" } else { "zoo" };
        }
        writeln!(stdin, "{}", answer.join(" "))?;
        drop(stdin);
        let mut rest = String::new();
        std::io::Read::read_to_string(&mut stdout, &mut rest)?;
        let out = child.wait_with_output()?;
        let last = rest
            .lines()
            .rev()
            .find_map(|l| serde_json::from_str::<Value>(l).ok())
            .unwrap_or(Value::Null);
        Ok((
            out.status.code(),
            Setup {
                phrase,
                result: last,
            },
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ))
    })
    .await
    .context("the CLI task panicked")?
}
