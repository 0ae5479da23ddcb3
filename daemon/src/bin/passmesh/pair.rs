//! `passmesh pair` and `passmesh join`: the invitation and its QR code, and following a pairing to its end.

use std::io::{BufRead, Write};
use std::path::Path;

use passmesh_ipc::{Client, RequestBody, ResponseBody};
use zeroize::Zeroizing;

use crate::Failure;
use crate::output::{format_time, print_json};

/// `passmesh pair`: opens an invitation that waits for the person's confirmation of the SAS, shows it, and
/// follows the pairing; Ctrl-C cancels the invitation (over `socket`).
pub(crate) async fn pair(
    client: &mut Client,
    socket: &Path,
    json: bool,
    expires: u64,
    out: Option<&Path>,
    name: Option<String>,
) -> Result<(), Failure> {
    // Installed before the invitation exists, so that Ctrl-C at any moment after it is cancels it.
    let interrupt = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .map_err(|e| Failure::Local(format!("cannot watch for Ctrl-C: {e}")))?;
    let body = client
        .call(RequestBody::PairInvite {
            expires_secs: Some(expires),
            confirm: true,
            name,
        })
        .await?;
    let ResponseBody::PairInvite { uri, expires_at_ms } = body else {
        return Err(Failure::Local("unexpected answer from the daemon".into()));
    };
    let uri = Zeroizing::new(uri);
    let code = qrcode::QrCode::new(uri.as_bytes())
        .map_err(|e| Failure::Local(format!("cannot make a QR code: {e}")))?;
    if let Some(path) = out {
        write_qr(&code, path)?;
    }
    if json {
        let v = serde_json::json!({"event": "invitation", "uri": uri.as_str(), "expiresAtMs": expires_at_ms});
        println!("{v}");
    } else {
        use qrcode::render::unicode::Dense1x2;
        let art = code
            .render::<Dense1x2>()
            .dark_color(Dense1x2::Light)
            .light_color(Dense1x2::Dark)
            .quiet_zone(true)
            .build();
        println!("Scan this code on the new device, or run `passmesh join CODE` there:\n");
        println!("{art}\n");
        println!("{}\n", uri.as_str());
        if let Some(path) = out {
            println!("QR code written to {}", path.display());
        }
        println!(
            "Valid until {} (once). Waiting for a device to join...",
            format_time(expires_at_ms)
        );
    }
    std::io::stdout().flush().ok();
    follow_pairing(client, Some((socket, interrupt)), json).await
}

fn write_qr(code: &qrcode::QrCode, path: &Path) -> Result<(), Failure> {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    let fail =
        |e: &dyn std::fmt::Display| Failure::Local(format!("cannot write {}: {e}", path.display()));
    match ext.as_deref() {
        Some("png") => code
            .render::<image::Luma<u8>>()
            .quiet_zone(true)
            .min_dimensions(320, 320)
            .build()
            .save_with_format(path, image::ImageFormat::Png)
            .map_err(|e| fail(&e)),
        Some("svg") => {
            let svg = code
                .render::<qrcode::render::svg::Color<'_>>()
                .quiet_zone(true)
                .min_dimensions(320, 320)
                .build();
            std::fs::write(path, svg).map_err(|e| fail(&e))
        }
        _ => Err(Failure::Local(format!(
            "{}: --out needs a .png or .svg file name",
            path.display()
        ))),
    }
}

/// Reads a pairing code from a PNG (or other supported) image of its QR code.
pub(crate) fn decode_qr(path: &Path) -> Result<String, Failure> {
    let img = image::open(path)
        .map_err(|e| Failure::Local(format!("cannot read {}: {e}", path.display())))?
        .to_luma8();
    let (w, h) = (img.width() as usize, img.height() as usize);
    let mut prepared = rqrr::PreparedImage::prepare_from_greyscale(w, h, |x, y| {
        u32::try_from(x)
            .ok()
            .zip(u32::try_from(y).ok())
            .map_or(255, |(x, y)| img.get_pixel(x, y).0[0])
    });
    for grid in prepared.detect_grids() {
        if let Ok((_, text)) = grid.decode()
            && text.starts_with("passmesh://")
        {
            return Ok(text);
        }
    }
    Err(Failure::Local(format!(
        "no passmesh pairing code found in {}",
        path.display()
    )))
}

/// Prints pairing events until the pairing ends; asks for the SAS confirmation when the daemon waits for it.
/// With `cancel` (the inviter's socket and its SIGINT stream), Ctrl-C cancels the invitation at once.
pub(crate) async fn follow_pairing(
    client: &mut Client,
    cancel: Option<(&Path, tokio::signal::unix::Signal)>,
    json: bool,
) -> Result<(), Failure> {
    match cancel {
        None => follow(client, json).await,
        Some((socket, mut interrupt)) => {
            tokio::select! {
                done = follow(client, json) => done,
                _ = interrupt.recv() => {
                    // The interrupted call may still be answered on `client`: cancel over a connection of its own.
                    let mut other = Client::connect(socket).await.map_err(Failure::from)?;
                    other.call(RequestBody::PairCancel).await?;
                    if json {
                        println!("{}", serde_json::json!({"event": "cancelled"}));
                    } else {
                        println!("\nPairing cancelled: the code no longer works.");
                    }
                    Err(Failure::Local("pairing cancelled".into()))
                }
            }
        }
    }
}

async fn follow(client: &mut Client, json: bool) -> Result<(), Failure> {
    use passmesh_ipc::message::PairEvent;
    let mut since = 0;
    let mut outcome = Err(Failure::Local("the pairing ended without a result".into()));
    loop {
        let body = client.call(RequestBody::PairProgress { since }).await?;
        let ResponseBody::PairProgress {
            events,
            next,
            finished,
        } = body
        else {
            return Err(Failure::Local("unexpected answer from the daemon".into()));
        };
        for event in events {
            if json {
                print_json(&event)?;
            }
            match &event {
                PairEvent::Waiting => {}
                PairEvent::PeerConnected { peer } if !json => println!("Device {peer} connected."),
                PairEvent::Sas { sas } if !json => println!(
                    "Code: {sas}  (both devices must show the same code; if not, stop: someone else is pairing)"
                ),
                PairEvent::AttemptFailed {
                    reason,
                    attempts_left,
                } if !json => {
                    println!("A pairing attempt failed ({reason}); {attempts_left} left.")
                }
                PairEvent::AwaitingConfirmation => {
                    if !json {
                        print!("Does the other device show the same code? [y/N] ");
                    }
                    std::io::stdout().flush().ok();
                    // Read on a thread of its own, so that Ctrl-C is seen while the person thinks.
                    let line = tokio::task::spawn_blocking(|| {
                        let mut line = String::new();
                        let _ = std::io::stdin().lock().read_line(&mut line);
                        line
                    })
                    .await
                    .unwrap_or_default();
                    let accept = matches!(line.trim(), "y" | "Y" | "yes" | "YES" | "Yes");
                    client.call(RequestBody::PairConfirm { accept }).await?;
                }
                PairEvent::Done {
                    device_id,
                    name,
                    merged,
                } => {
                    if !json {
                        println!("Paired with \"{name}\" ({device_id}).");
                        if *merged > 0 {
                            println!(
                                "This device's {merged} passkey(s) moved into the joined vault: they sync to its \
                                 other devices."
                            );
                        }
                    }
                    outcome = Ok(());
                }
                PairEvent::Failed { reason } => {
                    outcome = Err(Failure::Local(format!("pairing failed: {reason}")));
                }
                _ => {}
            }
        }
        std::io::stdout().flush().ok();
        since = next;
        if finished {
            return outcome;
        }
    }
}
